from django.contrib.auth import views as auth_views
from django.urls import include, path

from .forms import QueuedPasswordResetForm
from .views import LoginView

urlpatterns = [
    # Ours before Django's: the same names, which django.contrib.auth.urls then leaves alone.
    path("login/", LoginView.as_view(), name="login"),
    path(
        "password_reset/",
        auth_views.PasswordResetView.as_view(form_class=QueuedPasswordResetForm),
        name="password_reset",
    ),
    path("", include("django.contrib.auth.urls")),
]
