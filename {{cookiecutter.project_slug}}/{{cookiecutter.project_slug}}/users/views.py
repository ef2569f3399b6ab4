from django.contrib.auth import views as auth_views

from .forms import ThrottledAuthenticationForm


class LoginView(auth_views.LoginView):
    """Django's login view with the attempt limits of users/throttle.py."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.has_error("__all__", code="throttled"):
            # The page says why and for how long; the status says it to scripts.
            response.status_code = 429
        return response
