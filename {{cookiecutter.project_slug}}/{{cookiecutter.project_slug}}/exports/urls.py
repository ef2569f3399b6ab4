from django.urls import path

from . import views

app_name = "exports"
urlpatterns = [
    path("", views.export_list, name="list"),
    path("start/", views.start_export, name="start"),
    path("<int:pk>/", views.export_detail, name="detail"),
    path("<int:pk>/cancel/", views.cancel_export, name="cancel"),
    path("<int:pk>/progress/", views.export_progress, name="progress"),
    path("<int:pk>/download/", views.download_export, name="download"),
]
