import random
import secrets
from collections import Counter
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from {{ cookiecutter.project_slug }}.exports.models import Transaction
from {{ cookiecutter.project_slug }}.payments.models import Order

MERCHANTS = ["Coffee Corner", "City Rail", "Grocer & Sons", "Bookshop", "Cloud Hosting", "Pharmacy", "Cinema"]
CURRENCIES = ["EUR", "USD", "GBP"]

# The demo account's order history, made once (when it has no orders yet): payments
# that have ended, as the sandbox ends them, so that the orders page shows each
# outcome and nothing waits for a worker. Each is (days ago, amount in cents,
# currency, the test card it was paid with, status, the provider's reason).
PAID, FAILED = Order.Status.PAID, Order.Status.FAILED
SAMPLE_ORDERS = [
    (34, 1_250, "EUR", "pm_card_visa", PAID, ""),
    (29, 4_990, "EUR", "pm_card_visa", PAID, ""),
    (23, 899, "GBP", "pm_card_visa", PAID, ""),
    (20, 12_000, "USD", "pm_card_chargeDeclined", FAILED, "Your card was declined."),
    (16, 3_450, "EUR", "pm_card_threeDSecure2Required", PAID, ""),
    (12, 27_500, "EUR", "pm_card_chargeDeclinedInsufficientFunds", FAILED, "Your card has insufficient funds."),
    (9, 1_999, "USD", "pm_card_visa", PAID, ""),
    (6, 7_800, "EUR", "pm_card_visa", PAID, ""),
    (3, 650, "GBP", "pm_card_visa", PAID, ""),
    (1, 2_500, "EUR", "pm_card_visa", PAID, ""),
]
# Orders still to be paid: not yet in an end state.
UNPAID = [Order.Status.PENDING, Order.Status.PROCESSING, Order.Status.REQUIRES_ACTION]


class Command(BaseCommand):
    help = (
        "Create (or top up) the user 'demo' with N transactions, and a history of finished orders "
        "(or, with --orders M, M unpaid orders); print how to log in."
    )

    def add_arguments(self, parser):
        parser.add_argument("--transactions", type=int, default=10_000, metavar="N")
        parser.add_argument(
            "--orders",
            type=int,
            metavar="M",
            help="top up to M unpaid orders, for a script or test to pay "
            "(default: a sample history of paid and declined orders, made once)",
        )
        parser.add_argument("--seed", type=int, default=42, help="random seed, for repeatable data")
        parser.add_argument("--password", help="set the demo user's password (default: DEMO_PASSWORD, or random)")

    def handle(self, *args, transactions, orders, seed, password, **options):
        rng = random.Random(seed)  # noqa: S311 (demo data, not secrets)
        user, created = get_user_model().objects.get_or_create(username="demo", defaults={"email": "demo@example.com"})
        if created or password:
            # DEMO_PASSWORD is "demo" in development; production settings leave it empty, so
            # an account seeded on a public site gets a random password, shown only here.
            password = password or settings.DEMO_PASSWORD or secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])
        elif settings.DEMO_PASSWORD and user.check_password(settings.DEMO_PASSWORD):
            password = settings.DEMO_PASSWORD

        missing = max(transactions - Transaction.objects.filter(user=user).count(), 0)
        rows = self._transaction_rows(user.pk, missing, rng)
        with transaction.atomic():
            if connection.vendor == "postgresql":
                self._copy_rows(rows)
            else:
                self._bulk_create(rows)
        if orders is None:
            self._sample_orders(user)
        else:
            unpaid = Order.objects.filter(user=user, status__in=UNPAID).count()
            Order.objects.bulk_create(
                Order(user=user, amount_cents=rng.randint(500, 50_000)) for _ in range(max(orders - unpaid, 0))
            )
        self.stdout.write(
            f"demo owns {Transaction.objects.filter(user=user).count()} transactions and {self._orders_of(user)}"
        )
        login = f"{settings.SITE_URL.rstrip('/')}{reverse('login')}"
        if password:
            self.stdout.write(self.style.SUCCESS(f"Log in at {login} as demo, password: {password}"))
        else:
            self.stdout.write(f"Log in at {login} as demo (password unchanged; --password sets a new one)")

    @staticmethod
    def _sample_orders(user):
        """The sample history, unless the account has orders already (seeding again adds none)."""
        if Order.objects.filter(user=user).exists():
            return
        now = timezone.now()
        with transaction.atomic():
            for days_ago, amount_cents, currency, card, status, reason in SAMPLE_ORDERS:
                placed = now - timedelta(days=days_ago)
                order = Order.objects.create(
                    user=user,
                    amount_cents=amount_cents,
                    currency=currency,
                    payment_method=card,
                    status=status,
                    failure_reason=reason,
                    payment_attempts=1,
                )
                # created_at and updated_at are set on save (auto_now_add, auto_now);
                # an update() dates the order back to when it was "placed".
                paid_at = placed if status == Order.Status.PAID else None
                Order.objects.filter(pk=order.pk).update(created_at=placed, updated_at=placed, paid_at=paid_at)

    @staticmethod
    def _orders_of(user) -> str:
        """``3 orders: 2 paid, 1 failed``: how many the account has, by status."""
        statuses = Counter(Order.objects.filter(user=user).values_list("status", flat=True))
        if not statuses:
            return "no orders"
        by_status = ", ".join(
            f"{count} {Order.Status(status).label.lower()}" for status, count in statuses.most_common()
        )
        total = statuses.total()
        return f"{total} order{'s' if total > 1 else ''}: {by_status}"

    @staticmethod
    def _transaction_rows(user_id, count, rng):
        start = timezone.now() - timedelta(days=365)
        for i in range(count):
            yield (
                user_id,
                start + timedelta(seconds=i * 7 + rng.randint(0, 6)),
                Decimal(rng.randint(-50_000, 50_000)) / 100,
                rng.choice(CURRENCIES),
                f"{rng.choice(MERCHANTS)} #{rng.randint(1000, 9999)}",
            )

    @staticmethod
    def _copy_rows(rows):
        # COPY streams rows into Postgres in one statement: about a million rows in
        # seconds, where saving model instances one by one would take many minutes.
        columns = "user_id, created_at, amount, currency, description"
        sql = f"COPY {Transaction._meta.db_table} ({columns}) FROM STDIN"
        with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)

    @staticmethod
    def _bulk_create(rows, batch_size=5000):
        batch = []
        for user_id, created_at, amount, currency, description in rows:
            batch.append(
                Transaction(
                    user_id=user_id, created_at=created_at, amount=amount, currency=currency, description=description
                )
            )
            if len(batch) == batch_size:
                Transaction.objects.bulk_create(batch)
                batch.clear()
        Transaction.objects.bulk_create(batch)
