from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("{{ cookiecutter.project_slug }}.users.urls")),
    path("payments/", include("{{ cookiecutter.project_slug }}.payments.urls")),
    path("imports/", include("{{ cookiecutter.project_slug }}.imports.urls")),
    path("exports/", include("{{ cookiecutter.project_slug }}.exports.urls")),
    path("", include("{{ cookiecutter.project_slug }}.core.urls")),
]
