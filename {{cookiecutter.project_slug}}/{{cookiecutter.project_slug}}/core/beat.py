"""Beat's scheduler: django-celery-beat's DatabaseScheduler with a heartbeat file.

Schedules declared in ``CELERY_BEAT_SCHEDULE`` are synced into the database when
beat starts and stay editable in the admin. Every tick touches the heartbeat file
that ``python -m config.healthcheck beat`` (the compose healthcheck) reads, and at
most every BEAT_TICK_STAMP_INTERVAL seconds stamps the tick into Redis for
``/metrics`` (``celery_beat_tick_timestamp_seconds``, off beat's loop, never raising).
"""

import logging

from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, InterfaceError
from django_celery_beat.schedulers import DatabaseScheduler

from config.healthcheck import touch

from .metrics import BEAT_TICK, Heartbeat

logger = logging.getLogger(__name__)

BEAT_TICK_STAMP_INTERVAL = 5  # seconds; beat ticks far more often when entries are due


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    def __init__(self, *args, **kwargs):
        self.stamp_tick = Heartbeat(BEAT_TICK, min_interval=BEAT_TICK_STAMP_INTERVAL)
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs):
        touch("beat")
        self.stamp_tick()
        return super().tick(*args, **kwargs)

    def reserve(self, entry):
        """Record the run in the database *before* its message is sent.

        DatabaseScheduler keeps ``last_run_at`` in memory and writes it every
        three minutes (and on a clean shutdown). A beat that is killed (SIGKILL,
        OOM, a node lost) after sending a run and before that write restarts
        with the old ``last_run_at``, finds the entry overdue and sends the same
        tick again (the failure drill ``test_schedule_beat_restart.py`` of the
        template shows it). Saved here, a restart sees the run. The price: a
        beat killed between this save and the send skips that one tick, which
        is the right trade for periodic work (the next tick comes anyway).
        """
        new_entry = super().reserve(entry)
        try:
            new_entry.save()
        except (DatabaseError, InterfaceError, ObjectDoesNotExist):
            # Database down (or the entry deleted meanwhile): it stays dirty and
            # the next sync() deals with it, as DatabaseScheduler always did.
            logger.warning("beat: could not record the run of %s now; it will be synced later", entry.name)
        else:
            self._dirty.discard(new_entry.name)
        return new_entry
