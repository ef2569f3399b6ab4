"""Beat's scheduler: django-celery-beat's DatabaseScheduler with a heartbeat file.

Schedules declared in ``CELERY_BEAT_SCHEDULE`` are synced into the database when
beat starts and stay editable in the admin. Every tick touches the heartbeat file
that ``python -m config.healthcheck beat`` (the compose healthcheck) reads.
"""

from django_celery_beat.schedulers import DatabaseScheduler

from config.healthcheck import touch


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    def tick(self, *args, **kwargs):
        touch("beat")
        return super().tick(*args, **kwargs)
