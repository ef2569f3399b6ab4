import logging
import re
import uuid
from decimal import Decimal

import stripe
from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import IntegrityError, transaction
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import outbox
from .models import Order
from .providers import Charge, SandboxProvider, StripeProvider, provider_name
from .tasks import mismatch, process_payment, refuse_payment, sync_payment

logger = logging.getLogger(__name__)

# The sandbox provider's test cards (Stripe's test PaymentMethod ids, same behaviour).
SANDBOX_CARDS = [
    ("pm_card_visa", "Visa: succeeds"),
    ("pm_card_threeDSecure2Required", "Visa: asks for 3-D Secure"),
    ("pm_card_chargeDeclined", "Visa: declined"),
    ("pm_card_chargeDeclinedInsufficientFunds", "Visa: declined, insufficient funds"),
]
# A PaymentMethod id as Stripe.js creates it: "pm_" and letters and digits. \A and \Z,
# not ^ and $: "$" matches before a final newline too, and "pm_1Abc\n" would pass.
STRIPE_PAYMENT_METHOD = re.compile(r"\Apm_[A-Za-z0-9]+\Z")
# What the checkout shows when the site has no payment provider (provider_name()).
PAYMENTS_UNAVAILABLE = "Payments are not available on this site yet: no order can be placed. Please come back later."


class CheckoutForm(forms.Form):
    # People type 25.00 in the currency beside it; the order keeps (and the provider
    # gets) whole cents: ``amount_cents`` in cleaned_data. 0.50 is Stripe's minimum.
    amount = forms.DecimalField(
        min_value=Decimal("0.50"), max_value=Decimal("10000.00"), decimal_places=2, initial=Decimal("25.00")
    )
    currency = forms.ChoiceField(
        choices=[("EUR", "EUR"), ("USD", "USD"), ("GBP", "GBP")], widget=forms.Select(attrs={"aria-label": "Currency"})
    )
    # With Stripe: the PaymentMethod id ("pm_...") that Stripe.js created in the
    # browser (the card never touches this server). With the sandbox: one of its test
    # cards (the field is replaced below). Anything else is refused here, with a
    # message: a made-up id that reached the provider would fail the order later.
    payment_method = forms.RegexField(
        regex=STRIPE_PAYMENT_METHOD,
        max_length=64,
        widget=forms.HiddenInput,  # filled in by the Payment Element's script
        error_messages={"invalid": "The card form did not complete: enter your card details again."},
    )
    # One per rendered form (see checkout below).
    submission_key = forms.UUIDField(widget=forms.HiddenInput)

    def __init__(self, *args, stripe_checkout: bool, **kwargs):
        kwargs.setdefault("label_suffix", "")  # "Payment method", as "Amount" beside it: no colons
        super().__init__(*args, **kwargs)
        if not stripe_checkout:
            self.fields["payment_method"] = forms.ChoiceField(
                choices=SANDBOX_CARDS,
                label="Payment method",
                error_messages={"invalid_choice": "Pick one of the sandbox's test cards."},
            )

    def clean(self):
        cleaned = super().clean()
        if "amount" in cleaned:  # valid: at most two decimals
            cleaned["amount_cents"] = int(cleaned.pop("amount") * 100)
        return cleaned


# --8<-- [start:checkout]
@login_required
def checkout(request):
    """One order per submitted form, however often the form arrives.

    Each render carries a fresh submission key (a hidden field). A double click,
    a retried request or the back button and "resubmit" send the same key again;
    the unique constraint on (user, submission_key) lets exactly one INSERT win,
    also when the POSTs run at the same moment on different threads or servers,
    and every other POST is sent to the order that the first one created.

    A site without a payment provider (``provider_name``) says so and creates nothing.
    """
    provider = provider_name()
    if not provider:
        if request.method == "POST":
            logger.warning("checkout: refused an order of user %s: payments are not configured", request.user.pk)
        return render(request, "payments/checkout.html", {"unavailable": PAYMENTS_UNAVAILABLE}, status=503)
    stripe_checkout = provider == "stripe"
    initial = {"submission_key": uuid.uuid4()}  # server-side, per render
    form = CheckoutForm(request.POST or None, initial=initial, stripe_checkout=stripe_checkout)
    if request.method == "POST" and form.is_valid():
        order = place_order(request.user, form.cleaned_data)
        return redirect("payments:order", pk=order.pk)
    if form.errors:
        form.data = form.data.copy()
        if "submission_key" in form.errors:  # a form from before this field existed: give it a key
            form.data["submission_key"] = str(uuid.uuid4())
        if "payment_method" in form.errors:  # not sent back: the Payment Element's script would resubmit it
            form.data["payment_method"] = ""
    context = {"form": form, "stripe_publishable_key": settings.STRIPE_PUBLISHABLE_KEY if stripe_checkout else ""}
    return render(request, "payments/checkout.html", context)


def place_order(user, data) -> Order:
    """Get or create the order of one submission; only the creator dispatches its payment."""
    try:
        # A savepoint of its own: the losing INSERT rolls back alone, and the
        # lookup below runs in a healthy transaction (also under ATOMIC_REQUESTS).
        with transaction.atomic():
            order = Order.objects.create(user=user, **data)
            dispatch_payment(order)
    except IntegrityError:
        # Another POST of this submission won the race (and committed: the
        # unique index made this INSERT wait for it). Show its order.
        return Order.objects.get(user=user, submission_key=data["submission_key"])
    return order


def dispatch_payment(order: Order) -> None:
    """Send the order to the payment task. THE one place that does (inside the order's transaction)."""
    # NOT process_payment.delay(order.pk): a fast worker could read the database
    # before this transaction commits and find no order, and a broker outage
    # would lose the payment. The outbox row commits with the order (or not at
    # all, as for a losing duplicate POST) and is published after COMMIT: at once
    # if the broker answers, by the outbox relay when it is back (docs/outbox.md).
    outbox.send(process_payment, order.pk)
    # --8<-- [end:checkout]


@login_required
def order_list(request):
    """The signed-in customer's latest orders and how each payment stands."""
    orders = Order.objects.filter(user=request.user).order_by("-created_at")[:50]
    return render(request, "payments/orders.html", {"orders": orders})


@login_required
def order_detail(request, pk):
    order = get_object_or_404(Order, pk=pk, user=request.user)
    return render(request, "payments/order.html", {"order": order})


# --8<-- [start:webhook]
@csrf_exempt  # Stripe cannot send a CSRF token; the signature below authenticates it
@require_POST
def stripe_webhook(request):
    """Stripe's events about PaymentIntents: verify the signature, then look again.

    ``Webhook.construct_event`` checks the ``Stripe-Signature`` header against the
    endpoint's signing secret and refuses events older than five minutes (a
    captured event replayed later). A verified event still only triggers
    ``sync_payment``, which asks the API where the payment stands: events come
    late, twice and out of order, and the same answer recorded twice is a no-op.
    Answers 2xx quickly (Stripe retries anything else for days), 400 when the
    signature is wrong. Events about payments that are not ours (another site on
    the same Stripe account) are ignored with a 2xx too: see ``order_named_by``.
    """
    if not settings.STRIPE_WEBHOOK_SECRET:
        logger.error("stripe webhook: STRIPE_WEBHOOK_SECRET is not set, event refused")
        return HttpResponseBadRequest("webhook not configured")
    try:
        event = stripe.Webhook.construct_event(
            request.body, request.headers.get("Stripe-Signature", ""), settings.STRIPE_WEBHOOK_SECRET
        )
    except (ValueError, stripe.SignatureVerificationError) as error:
        logger.warning("stripe webhook: refused an event: %s", error)
        return HttpResponseBadRequest("invalid payload or signature")

    if not event.type.startswith("payment_intent."):
        return HttpResponse(status=204)  # not ours to handle; 2xx, or Stripe retries it
    charge = StripeProvider.from_intent(event.data.object)
    order = Order.objects.filter(charge_id=charge.id).first() or order_named_by(charge)
    if order is None:
        logger.warning("stripe webhook: %s for %s matches no order of this site", event.type, charge.id)
        return HttpResponse(status=204)
    with transaction.atomic():  # quick 2xx even with the broker down: the outbox relay sends it later
        outbox.send(sync_payment, order.pk)
    return HttpResponse(status=204)
    # --8<-- [end:webhook]


def order_named_by(charge: Charge) -> Order | None:
    """The order in the metadata we sent, if it has no PaymentIntent yet; it gets this one.

    The event beat process_payment's answer, or its worker died after Stripe answered.
    Stripe sends the endpoint every event of the account, and the account may serve
    other sites too, with order ids of their own: a PaymentIntent whose metadata
    names another site (or none) is theirs, and ignored. One that names this site
    but not the order's amount and currency (``mismatch``) is refused loudly: a dead
    letter, and the order keeps waiting for its own payment.
    """
    if charge.metadata.get("site") != settings.PAYMENTS_SITE_ID:
        return None
    order_id = charge.metadata.get("order_id", "")
    order = Order.objects.filter(pk=int(order_id), charge_id="").first() if order_id.isdigit() else None
    if order is None:
        return None
    if problem := mismatch(order, charge):
        refuse_payment(order.pk, charge.id, problem)
        return None
    if not Order.objects.filter(pk=order.pk, charge_id="").update(charge_id=charge.id):
        return None  # another event (or process_payment's answer) got there first
    order.charge_id = charge.id
    return order


@login_required
def sandbox_authenticate(request, charge_id):
    """The sandbox's stand-in for a bank's 3-D Secure page (development only).

    Only a payment waiting for authentication has this page. Once it is settled, a
    second POST of the page (a double click, the back button, a tab left open for a
    day) gets the order page, which says how it ended: the sandbox is not asked again.
    """
    if provider_name() != "sandbox":
        raise Http404("the sandbox provider is not in use")
    order = get_object_or_404(Order, charge_id=charge_id, user=request.user)
    if order.status != Order.Status.REQUIRES_ACTION:
        return redirect("payments:order", pk=order.pk)
    if request.method == "POST":
        SandboxProvider().authenticate(charge_id, succeed=request.POST.get("result") == "succeed")
        with transaction.atomic():
            outbox.send(sync_payment, order.pk)  # what Stripe's webhook would trigger
        return redirect("payments:order", pk=order.pk)
    return render(request, "payments/sandbox_authenticate.html", {"order": order})
