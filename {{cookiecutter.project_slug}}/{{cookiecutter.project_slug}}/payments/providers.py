"""Payment providers behind one small interface.

``SandboxProvider`` behaves like a real provider with idempotency keys: it keeps
its own ledger (``SandboxCharge``) and a repeated key returns the earlier charge.
"""

import uuid
from dataclasses import dataclass

from .models import SandboxCharge


@dataclass(frozen=True)
class Charge:
    id: str
    amount_cents: int
    currency: str


class SandboxProvider:
    def charge(self, *, amount_cents: int, currency: str, idempotency_key: str) -> Charge:
        record, _ = SandboxCharge.objects.get_or_create(
            idempotency_key=idempotency_key,
            defaults={"charge_id": f"ch_{uuid.uuid4().hex[:24]}", "amount_cents": amount_cents, "currency": currency},
        )
        return Charge(id=record.charge_id, amount_cents=record.amount_cents, currency=record.currency)


def get_provider() -> SandboxProvider:
    return SandboxProvider()
