"""Login limits (users/throttle.py): per account and per client address, for the site and the admin.

The counts live in the test run's own Redis database, as in production.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from django.urls import reverse

from ...core import redis_client
from .. import throttle
from ..checks import check_trusted_proxies

LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"
ATTACKER, OWNER = "203.0.113.66", "198.51.100.7"


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("ada", "ada@example.com", "right-password")


def log_in(client, password, username="ada", path=LOGIN, address=ATTACKER):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


# --8<-- [start:login-throttle-test]
def test_guessing_locks_the_account_and_the_right_password_waits_too(user, client, settings):
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        assert log_in(client, "guess").status_code == 200  # "Please enter a correct username and password"

    # The owner, from another address, with the right password: refused, and told why.
    response = log_in(client, "right-password", address=OWNER)

    assert response.status_code == 429
    assert "Too many failed attempts to log in. Try again in 15 minutes." in response.content.decode()
    assert not logged_in(client)
    # --8<-- [end:login-throttle-test]


def test_the_admin_login_counts_against_the_same_limits(user, client, settings):
    user.is_staff = True
    user.save()
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        log_in(client, "guess", path=ADMIN_LOGIN)

    response = log_in(client, "right-password", path=ADMIN_LOGIN, address=OWNER)

    assert "Too many failed attempts to log in." in response.content.decode()
    assert not logged_in(client)
    # The site's login is closed to the account as well.
    assert log_in(client, "right-password", address=OWNER).status_code == 429


def test_one_address_guessing_many_accounts_is_stopped(user, client, settings):
    settings.LOGIN_FAILURES_PER_CLIENT = 3
    for name in ("bob", "carol", "dave"):  # one guess each: no account reaches its own limit
        log_in(client, "guess", username=name)

    assert log_in(client, "right-password").status_code == 429  # ada's first attempt from there
    assert not logged_in(client)
    assert log_in(client, "right-password", address=OWNER).status_code == 302  # from elsewhere she gets in
    assert logged_in(client)


def test_a_success_clears_the_accounts_count(user, client, settings):
    for _ in range(2):  # forgets her password every morning, gets it on the last try
        for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT - 1):
            log_in(client, "typo", address=OWNER)
        assert log_in(client, "right-password", address=OWNER).status_code == 302
        client.logout()


def test_the_lockout_lifts_after_the_window_however_often_it_is_retried(user, client, settings):
    settings.LOGIN_THROTTLE_SECONDS = 2  # the window opens with the first failure
    opened = time.monotonic()
    for _ in range(settings.LOGIN_FAILURES_PER_ACCOUNT):
        log_in(client, "guess")
    assert "Try again in 1 minute." in log_in(client, "right-password", address=OWNER).content.decode()

    while time.monotonic() - opened < 1.5:  # hammering does not push the end of the window back
        assert log_in(client, "guess").status_code == 429
    time.sleep(2.2 - (time.monotonic() - opened))

    assert log_in(client, "right-password", address=OWNER).status_code == 302
    assert logged_in(client)


def test_parallel_attempts_get_no_more_than_the_limit(settings):
    """Each attempt is counted before its password is checked: a burst cannot slip past the count."""
    request = RequestFactory().post(LOGIN, REMOTE_ADDR=ATTACKER)
    limits = throttle.login_limits(request, "ada")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: throttle.hit(*limits), range(50)))

    assert answers.count(0) == settings.LOGIN_FAILURES_PER_ACCOUNT


def test_redis_down_logins_still_work(user, client, settings, monkeypatch, caplog):
    """The limits fail open: an outage of their counters must not lock everyone out."""
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens on the discard port
    monkeypatch.setattr(redis_client, "_clients", {})

    assert log_in(client, "right-password", address=OWNER).status_code == 302
    assert "not enforced" in caplog.text


# ------------------------------------------------------------------------------
# The client's address, behind the reverse proxy
# ------------------------------------------------------------------------------
def address_of(forwarded_for: str | None, remote: str = "10.0.0.2") -> str:
    headers = {"REMOTE_ADDR": remote}
    if forwarded_for is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return throttle.client_address(RequestFactory().get(reverse("login"), **headers))


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(settings):
    settings.TRUSTED_PROXY_COUNT = 0
    assert address_of("198.51.100.7") == "10.0.0.2"


def test_behind_one_proxy_the_address_it_appended_counts_not_what_the_client_wrote(settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # The client sent "X-Forwarded-For: 1.2.3.4"; our proxy appended the address it saw.
    assert address_of("1.2.3.4, 198.51.100.7") == "198.51.100.7"
    assert address_of("198.51.100.7") == "198.51.100.7"
    assert address_of(None) == "10.0.0.2"  # not through the proxy: the peer itself
    settings.TRUSTED_PROXY_COUNT = 2  # a load balancer, then the proxy
    assert address_of("1.2.3.4, 198.51.100.7, 10.0.0.9") == "198.51.100.7"


def test_an_ipv6_client_is_counted_by_its_network(settings):
    settings.TRUSTED_PROXY_COUNT = 0
    assert address_of(None, remote="2001:db8:1:2::1") == address_of(None, remote="2001:db8:1:2:ffff::9")
    assert address_of(None, remote="2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_of(None, remote="::ffff:192.0.2.1") == "192.0.2.1"


def test_deploy_check_warns_when_the_proxy_is_everyones_address(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.TRUSTED_PROXY_COUNT = 0
    assert [message.id for message in check_trusted_proxies(None)] == ["users.W001"]
    settings.TRUSTED_PROXY_COUNT = 1
    assert check_trusted_proxies(None) == []
