"""Template context every page needs."""

from django.conf import settings


def site(request):
    """The site's name (SITE_NAME), for the layout's title and navigation: ``brand``.

    Not ``site_name``: Django's login and logout views put the request's host in
    ``site_name`` (the sites framework's RequestSite), and a view's context wins
    over a context processor's, so the login page would be "Log in · localhost:8000".

    ``show_demo_login``: in development (DEBUG) the login and home pages say how
    to log in as the ``demo`` user that ``manage.py seed_demo_data`` creates.
    Never in production, where that account should not exist.
    """
    return {"brand": settings.SITE_NAME, "show_demo_login": settings.DEBUG}
