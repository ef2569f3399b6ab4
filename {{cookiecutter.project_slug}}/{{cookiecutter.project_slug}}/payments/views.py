from django import forms
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render

from .. import outbox
from .models import Order
from .tasks import process_payment


class CheckoutForm(forms.Form):
    amount_cents = forms.IntegerField(min_value=50, max_value=1_000_000, initial=2500)
    currency = forms.ChoiceField(choices=[("EUR", "EUR"), ("USD", "USD"), ("GBP", "GBP")])


# --8<-- [start:checkout]
@login_required
def checkout(request):
    form = CheckoutForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            order = Order.objects.create(user=request.user, **form.cleaned_data)
            # NOT process_payment.delay(order.pk): a fast worker could read the
            # database before this transaction commits and find no order, and a
            # broker outage would lose the payment. The outbox row commits with the
            # order (or not at all) and is published after COMMIT: at once if the
            # broker answers, by the outbox relay when it is back (docs/outbox.md).
            outbox.send(process_payment, order.pk)
        return redirect("payments:order", pk=order.pk)
    return render(request, "payments/checkout.html", {"form": form})
    # --8<-- [end:checkout]


@login_required
def order_detail(request, pk):
    order = get_object_or_404(Order, pk=pk, user=request.user)
    return render(request, "payments/order.html", {"order": order})
