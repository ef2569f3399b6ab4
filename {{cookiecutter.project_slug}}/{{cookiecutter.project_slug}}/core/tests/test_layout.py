"""Every page wears the site's layout: its CSS (served from here), its navigation, who is signed in.

tests/test_site_browser.py looks at the same pages in a real browser.
"""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.urls import reverse

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
