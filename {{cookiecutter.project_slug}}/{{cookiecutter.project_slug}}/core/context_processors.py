"""Template context every page needs."""

from django.conf import settings


def site(request):
    """The site's name, for the layout's title and navigation.

    ``show_demo_login``: in development (DEBUG) the login and home pages say how
    to log in as the ``demo`` user that ``manage.py seed_demo_data`` creates.
    Never in production, where that account should not exist.
    """
    return {"site_name": settings.SITE_NAME, "show_demo_login": settings.DEBUG}
