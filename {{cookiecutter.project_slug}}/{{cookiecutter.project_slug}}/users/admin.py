from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .forms import ThrottledAdminAuthenticationForm
from .models import User

admin.site.register(User, UserAdmin)
# The admin's login counts against the same limits as the site's (users/throttle.py).
admin.site.login_form = ThrottledAdminAuthenticationForm
