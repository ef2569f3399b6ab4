from django.urls import path

from . import views
from .metrics import metrics_view

urlpatterns = [
    path("", views.home, name="home"),
    path("operations/", views.operations, name="operations"),
    path("metrics", metrics_view, name="metrics"),
]
