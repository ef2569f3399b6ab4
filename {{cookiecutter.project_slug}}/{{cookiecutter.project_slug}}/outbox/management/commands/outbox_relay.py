"""The ``outbox-relay`` process: publish outbox rows the request could not.

    python manage.py outbox_relay            # run until SIGTERM / SIGINT
    python manage.py outbox_relay --once     # one pass, e.g. from cron or by hand

Every ``OUTBOX_RELAY_INTERVAL`` seconds it publishes the unsent rows. It needs no
broker to start and no beat to run it: while the broker is down it keeps trying,
and the moment the broker answers again the backlog goes out, each row once.
Run one or several (rows are taken with SKIP LOCKED); one is plenty.
"""

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from config.healthcheck import touch

from ...models import OutboxMessage
from ...relay import relay_pending

logger = logging.getLogger("outbox.relay")


class Command(BaseCommand):
    help = "Publish unsent outbox messages to the broker (the outbox-relay process)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument("--interval", type=float, default=None, help="seconds between passes")

    def handle(self, *args, once, interval, **options):
        if once:
            published, broker_down = relay_pending()
            self.stdout.write(f"published {published}" + (", then the broker failed" if broker_down else ""))
            return
        interval = interval or settings.OUTBOX_RELAY_INTERVAL
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        logger.info("outbox relay started: a pass every %ss", interval)
        was_down = False
        while not stopping.is_set():
            touch("outbox-relay")  # the heartbeat its compose healthcheck reads: the loop runs
            # A long-running process: let Django drop connections that are too old
            # or broken (CONN_MAX_AGE, CONN_HEALTH_CHECKS), as it does between requests.
            close_old_connections()
            try:
                published, broker_down = relay_pending()
                if published:
                    logger.info("outbox relay: published %s messages", published)
                # Log an outage once when it starts and once when it ends, not every pass.
                if broker_down and not was_down:
                    waiting = OutboxMessage.objects.filter(sent_at__isnull=True).count()
                    logger.warning("outbox relay: the broker is down, %s messages wait for it", waiting)
                elif was_down and not broker_down:
                    logger.info("outbox relay: the broker is back, backlog published")
                was_down = broker_down
            except DatabaseError:
                # The rows are safe in the database; nothing to do until it answers.
                logger.exception("outbox relay: database unavailable, trying again")
            stopping.wait(interval)
        logger.info("outbox relay stopped")
