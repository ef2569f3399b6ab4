"""The transactional outbox: send a task in the same database transaction as the rows it is about.

    with transaction.atomic():
        order = Order.objects.create(...)
        outbox.send(process_payment, order.pk)

``send`` writes an ``OutboxMessage`` row next to the order. Both commit, or
neither does. After the commit the row is published to the broker at once if the
broker answers quickly (``relay.publish_after_commit``); if it does not, the
request is not held up and the ``outbox-relay`` process publishes the row once
the broker is back (``relay.relay_pending``). See docs/outbox.md.
"""


def send(task, *args, **kwargs):
    """Record ``task(*args, **kwargs)`` in the current transaction; publish it after COMMIT.

    Returns the ``OutboxMessage``; its ``task_id`` is the Celery task id the
    message will carry, however many times it is published.
    """
    from .relay import enqueue  # imported here: models cannot load before the app registry

    return enqueue(task, args, kwargs)
