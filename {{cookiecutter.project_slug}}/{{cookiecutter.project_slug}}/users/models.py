from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """The project's user. A custom model from day one keeps later changes cheap."""
