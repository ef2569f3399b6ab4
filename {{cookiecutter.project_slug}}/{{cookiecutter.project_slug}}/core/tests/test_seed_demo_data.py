from io import StringIO

from django.contrib.auth import authenticate
from django.core.management import call_command

from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.payments.models import Order


def seed(**options) -> str:
    out = StringIO()
    call_command("seed_demo_data", stdout=out, **options)
    return out.getvalue()


def test_seed_creates_then_tops_up(db):
    seed(transactions=250, orders=3)
    assert Transaction.objects.filter(user__username="demo").count() == 250
    assert Order.objects.filter(user__username="demo", status=Order.Status.PENDING).count() == 3

    seed(transactions=300, orders=3)
    assert Transaction.objects.filter(user__username="demo").count() == 300
    assert Order.objects.filter(user__username="demo").count() == 3


def test_without_orders_the_account_gets_a_finished_history_once(db):
    """What `make dev` and compose run: no order waits for a worker that will never come."""
    output = seed(transactions=10)

    orders = Order.objects.filter(user__username="demo")
    assert orders.count() == 10
    statuses = set(orders.values_list("status", flat=True))
    assert statuses == {Order.Status.PAID, Order.Status.FAILED}  # the orders page's end states
    assert all(order.failure_reason for order in orders.filter(status=Order.Status.FAILED))
    assert all(order.paid_at for order in orders.filter(status=Order.Status.PAID))
    assert "10 orders: 8 paid, 2 failed" in output

    seed(transactions=10)  # every start of make dev seeds again
    assert Order.objects.filter(user__username="demo").count() == 10


def test_orders_tops_up_the_unpaid_ones_next_to_the_history(db):
    seed(transactions=10)
    seed(transactions=10, orders=2)  # a script that wants orders to pay

    demo = Order.objects.filter(user__username="demo")
    assert demo.filter(status=Order.Status.PENDING).count() == 2  # the declined samples are not "unpaid"
    assert demo.count() == 12


def test_prints_a_login_that_works(db, settings):
    settings.SITE_URL = "http://localhost:8000"
    settings.DEMO_PASSWORD = "demo"

    output = seed(transactions=10, orders=0)

    assert "Log in at http://localhost:8000/accounts/login/ as demo, password: demo" in output
    assert authenticate(username="demo", password="demo")


def test_production_gets_a_random_password_shown_once(db, settings):
    settings.DEMO_PASSWORD = ""  # what production settings leave it as

    password = seed(transactions=10, orders=0).rsplit("password: ", 1)[1].strip()

    assert len(password) >= 12
    assert password != "demo"
    assert authenticate(username="demo", password=password)
    # Seeding again tops up the data and leaves the password alone.
    assert "password unchanged" in seed(transactions=20, orders=0)
    assert authenticate(username="demo", password=password)


def test_password_option_resets_it(db):
    seed(transactions=10, orders=0)

    assert "password: s3cret-demo" in seed(transactions=10, orders=0, password="s3cret-demo")
    assert authenticate(username="demo", password="s3cret-demo")
