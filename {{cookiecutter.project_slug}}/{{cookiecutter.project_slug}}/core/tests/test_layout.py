"""Every page wears the site's layout: its CSS (served from here), its navigation, who is signed in.

tests/test_site_browser.py looks at the same pages in a real browser.
"""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils.html import escape

PAGES = [
    "home",
    "login",
    "password_reset",
    "password_reset_done",
    "password_reset_complete",
    "exports:list",
    "payments:orders",
    "payments:checkout",
]


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "pw")


@pytest.mark.parametrize("name", PAGES)
def test_every_page_has_the_layout_and_not_the_admins(client, user, name):
    client.force_login(user)
    response = client.get(reverse(name))

    assert response.status_code == 200
    page = response.content.decode()
    assert "vendor/pico/pico.min.css" in page
    assert 'id="signed-in"' in page
    assert "Django administration" not in page


def test_the_login_page_is_titled_with_the_sites_name_not_the_host(client, db, settings):
    """Django's LoginView puts the host in ``site_name``; the layout uses SITE_NAME."""
    page = client.get(reverse("login")).content.decode()

    assert f"<title>Log in · {escape(settings.SITE_NAME)}</title>" in page
    assert f"<strong>{escape(settings.SITE_NAME)}</strong>" in page  # the navigation's brand
    assert "testserver" not in page  # the test client's host


def test_forgot_your_password_is_offered_to_visitors_only(client, user):
    reset = f'href="{reverse("password_reset")}"'
    assert reset in client.get(reverse("home")).content.decode()
    assert reset in client.get(reverse("login")).content.decode()

    client.force_login(user)
    assert reset not in client.get(reverse("home")).content.decode()


def test_an_unknown_url_gets_the_sites_404_page(client, db, settings):
    settings.DEBUG = False  # as in production (and this suite): DEBUG shows Django's technical page instead
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    page = response.content.decode()
    assert "<h1>Not found</h1>" in page
    assert "vendor/pico/pico.min.css" in page


@pytest.mark.parametrize(("path", "status", "heading"), [("/404/", 404, "Not found"), ("/403/", 403, "Not allowed")])
def test_development_shows_the_sites_error_pages_at_their_own_urls(client, db, settings, path, status, heading):
    settings.DEBUG = True
    response = client.get(path)
    assert response.status_code == status
    assert f"<h1>{heading}</h1>" in response.content.decode()  # the site's template, not Django's technical page

    settings.DEBUG = False
    assert client.get(path).status_code == 404  # in production, not there


def test_a_reset_link_that_does_not_work_says_so_in_the_sites_look(client, db):
    page = client.get(reverse("password_reset_confirm", args=["MQ", "bad-token"])).content.decode()
    assert "This link has expired" in page
    assert "Django administration" not in page


def test_the_navigation_says_who_is_signed_in_and_logs_out_by_post(client, user):
    assert 'id="login"' in client.get(reverse("home")).content.decode()

    client.force_login(user)
    page = client.get(reverse("home")).content.decode()
    assert "Signed in as <strong>ada</strong>" in page
    assert f'<form method="post" action="{reverse("logout")}">' in page
    assert reverse("operations") not in page  # staff only
    for name in ("exports:list", "payments:orders", "payments:checkout"):
        assert f'href="{reverse(name)}"' in page

    response = client.post(reverse("logout"))
    assert response.url == "/"
    assert 'id="login"' in client.get(reverse("home")).content.decode()


def test_staff_get_operations_and_admin_in_the_navigation(client, db):
    client.force_login(get_user_model().objects.create_user("ops", "ops@example.com", "pw", is_staff=True))
    page = client.get(reverse("home")).content.decode()
    assert f'href="{reverse("operations")}"' in page
    assert f'href="{reverse("admin:index")}"' in page


def test_the_demo_login_is_shown_in_development_only(client, db, settings):
    assert "demo-login" not in client.get(reverse("login")).content.decode()
    settings.DEBUG = True
    assert 'id="demo-login"' in client.get(reverse("login")).content.decode()


def test_the_css_is_vendored_not_fetched():
    assert finders.find("vendor/pico/pico.min.css")
    assert finders.find("vendor/pico/LICENSE.md")
    assert finders.find("css/site.css")
