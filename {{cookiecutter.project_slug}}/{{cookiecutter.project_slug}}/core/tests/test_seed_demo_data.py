from django.core.management import call_command

from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.payments.models import Order


def test_seed_creates_then_tops_up(db):
    call_command("seed_demo_data", transactions=250, orders=3)
    assert Transaction.objects.filter(user__username="demo").count() == 250
    assert Order.objects.filter(user__username="demo", status=Order.Status.PENDING).count() == 3

    call_command("seed_demo_data", transactions=300, orders=3)
    assert Transaction.objects.filter(user__username="demo").count() == 300
    assert Order.objects.filter(user__username="demo").count() == 3
