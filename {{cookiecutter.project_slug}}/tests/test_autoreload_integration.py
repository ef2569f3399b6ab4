"""Autoreload in development keeps the soft shutdown: on stop and on every reload.

``CELERY_WORKER_AUTORELOAD=1`` (the compose development stack, ``make dev``) runs
each pool under config/autoreload.py. A stop or a code change must hand a running
export back at once, exactly as SIGTERM does without autoreload, instead of killing
it mid-batch and leaving its message to the broker's visibility timeout.
"""

import signal
import uuid

import pytest

from {{ cookiecutter.project_slug }}.exports.models import ExportJob
from {{ cookiecutter.project_slug }}.exports.tasks import generate_csv_export

from .conftest import ROOT, wait_for
from .test_exports_integration import clean_export, finished, progress, runners

pytestmark = pytest.mark.integration


@pytest.fixture
def autoreloading_export_pool(live_celery):
    """worker-export restarted with autoreload on; put back as it was afterwards."""
    live_celery.kill("worker-export", signal.SIGTERM)
    live_celery.restart("worker-export", CELERY_WORKER_AUTORELOAD="1")
    yield live_celery
    live_celery.kill("worker-export", signal.SIGTERM)
    live_celery.restart("worker-export")


def test_stop_hands_the_job_back_at_once(autoreloading_export_pool, demo):
    pools = autoreloading_export_pool
    job = ExportJob.objects.create(user=demo)
    generate_csv_export.delay(job.pk)
    wait_for(lambda: progress(job) >= 0.4, message="40% of the export")

    pools.kill("worker-export", signal.SIGTERM)  # docker compose stop: SIGTERM to the reloader
    job.refresh_from_db()
    assert job.status == ExportJob.Status.RUNNING
    assert job.lease_owner == ""  # the worker's soft shutdown released it
    assert pools.processes["worker-export"].returncode == 0

    pools.restart("worker-export", CELERY_WORKER_AUTORELOAD="1")
    job = wait_for(lambda: finished(job), message="the resumed export")
    with job.file.open("rb") as handle:
        assert handle.read() == clean_export(demo)
    assert len(runners(job)) == 2


def test_code_change_restarts_the_worker_with_a_soft_shutdown(autoreloading_export_pool, demo):
    pools = autoreloading_export_pool
    job = ExportJob.objects.create(user=demo)
    generate_csv_export.delay(job.pk)
    wait_for(lambda: progress(job) >= 0.4, message="40% of the export")

    probe = ROOT / f"autoreload_probe_{uuid.uuid4().hex}.py"
    probe.write_text("# a code change\n")
    try:
        # Killed instead of handed back, the job would wait for the broker's
        # visibility timeout (an hour): it finishes here only if it was handed back.
        job = wait_for(lambda: finished(job), timeout=90, message="the export resumed after the reload")
    finally:
        probe.unlink()
    with job.file.open("rb") as handle:
        assert handle.read() == clean_export(demo)
    assert len(runners(job)) == 2  # the restarted worker resumed from the checkpoint
    assert "restarting the worker (soft shutdown)" in pools.log("worker-export")
    assert pools.processes["worker-export"].poll() is None  # the reloader itself kept running
