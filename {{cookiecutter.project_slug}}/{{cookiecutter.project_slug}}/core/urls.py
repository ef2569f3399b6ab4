from django.urls import path

from . import views
from .metrics import metrics_view

urlpatterns = [
    path("", views.home, name="home"),
    path("operations/", views.operations, name="operations"),
    path("metrics", metrics_view, name="metrics"),
    # The site's error pages, in development (DEBUG) only: Django's own stand in for them there.
    path("404/", views.error_page, {"status": 404}),
    path("403/", views.error_page, {"status": 403}),
]
