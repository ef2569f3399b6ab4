"""What the broker reports, read back through the project's own /metrics, on either broker."""

import base64
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.project_slug }}.core.tasks import probe_queue_latency

from .conftest import wait_for

pytestmark = pytest.mark.integration
AUTH = "Basic " + base64.b64encode(b"prometheus:secret").decode()


def depth(client, queue: str) -> float | None:
    """The celery_queue_length sample of ``queue`` in a /metrics scrape."""
    body = client.get("/metrics", HTTP_AUTHORIZATION=AUTH).content.decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "celery_queue_length" and sample.labels["queue_name"] == queue:
                return sample.value
    return None


def test_metrics_report_the_messages_waiting_in_each_queue(live_celery, client, settings):
    settings.METRICS_BASIC_AUTH = "prometheus:secret"
    control, worker_default = probe_queue_latency.app.control, live_celery.hostname("worker-default")
    # Stop worker-default taking from "low", so that messages wait there.
    control.cancel_consumer("low", destination=[worker_default], reply=True)
    try:
        for _ in range(3):
            probe_queue_latency.apply_async(("low", time.time()), queue="low", expires=60)
        wait_for(lambda: depth(client, "low") == 3, 30, "three messages waiting in low")
        assert depth(client, "high") == 0
    finally:
        control.add_consumer("low", destination=[worker_default], reply=True)
    wait_for(lambda: depth(client, "low") == 0, 30, "worker-default to drain low")
