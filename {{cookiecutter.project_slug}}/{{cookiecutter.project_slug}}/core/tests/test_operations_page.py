"""The operations page: pools, queue depths, the canary's latency history and its chart."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from config import topology

from .. import metrics
from ..charts import latency_chart, seconds_label


@pytest.fixture
def clean_metrics():
    keys = [metrics.LATENCY] + [metrics.HISTORY + queue for queue in topology.QUEUES]
    metrics.store().delete(*keys)
    yield
    metrics.store().delete(*keys)


# ------------------------------------------------------------------------------
# The history behind the chart
# ------------------------------------------------------------------------------
def test_latency_history_is_oldest_first_and_capped(clean_metrics):
    for i in range(metrics.HISTORY_LENGTH + 5):
        metrics.record_latency("high", i / 100, at=1_000_000 + 60 * i)

    history = metrics.latency_history("high")

    assert len(history) == metrics.HISTORY_LENGTH  # the list never grows past the cap
    assert history[0] == (1_000_000 + 60 * 5, 0.05)  # the five oldest were dropped
    assert history[-1] == (1_000_000 + 60 * (metrics.HISTORY_LENGTH + 4), (metrics.HISTORY_LENGTH + 4) / 100)
    assert [at for at, _ in history] == sorted(at for at, _ in history)
    assert metrics.latency_history("low") == []


def test_the_gauge_still_holds_the_last_sample(clean_metrics):
    metrics.record_latency("high", 0.5)
    metrics.record_latency("high", 0.25)
    assert metrics.latencies() == {"high": 0.25}


# ------------------------------------------------------------------------------
# The SVG chart
# ------------------------------------------------------------------------------
def points_of(svg: str) -> list[tuple[float, float]]:
    points = re.search(r'<polyline class="latency" points="([^"]+)"', svg).group(1)
    return [tuple(map(float, point.split(","))) for point in points.split()]


def sla_y(svg: str) -> float:
    return float(re.search(r'<line class="sla" x1="[\d.]+" y1="([\d.]+)"', svg).group(1))


def axis_x(svg: str) -> tuple[float, float]:
    """Where the time axis starts and ends (the x axis line)."""
    x1, x2 = re.search(r'<line class="axis" x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="\2"', svg).group(1, 3)
    return float(x1), float(x2)


def dots_of(svg: str) -> list[float]:
    """Where each sample's dot is on the time axis."""
    return [float(x) for x in re.findall(r'<circle class="sample[^"]*" cx="([\d.]+)"', svg)]


def test_chart_draws_every_sample_and_the_sla_line():
    samples = [(1000.0, 0.2), (1060.0, 0.5), (1120.0, 1.5), (1180.0, 0.1)]

    svg = latency_chart(samples, sla=1.0, title="Queue high", now=1200.0)

    points = points_of(svg)
    assert len(points) == 4
    assert [x for x, _ in points] == sorted(x for x, _ in points)  # time runs left to right
    ys = [y for _, y in points]
    assert ys[2] < sla_y(svg) < ys[1]  # 1.5 s above the SLA line, 0.5 s below it (SVG y grows downwards)
    assert svg.count('class="sample breach"') == 1  # the one sample over the SLA
    assert svg.count("<circle") == 4
    assert "SLA 1.0 s" in svg
    assert svg.startswith('<svg class="chart"')


def test_the_time_axis_is_always_the_last_hour():
    """Just after start: one sample, at the right, and the hour it begins, not a "now ... now" axis."""
    svg = latency_chart([(1000.0, 0.3)], sla=1.0, title="Queue high", now=1000.0)

    left, right = axis_x(svg)
    assert dots_of(svg) == [pytest.approx(right)]
    assert "<polyline" not in svg  # one sample: a dot, no line
    labels = re.findall(r'<text class="time"[^>]*>([^<]+)</text>', svg)
    assert labels == ["60 min ago", "45 min ago", "30 min ago", "15 min ago", "now"]

    half_an_hour_ago = latency_chart([(1000.0, 0.3)], sla=1.0, title="Queue high", now=2800.0)
    assert dots_of(half_an_hour_ago) == [pytest.approx((left + right) / 2)]


def test_chart_leaves_out_samples_older_than_the_window_and_breaks_the_line_at_a_gap():
    before = [(1000.0, 0.2)]  # older than the hour: not drawn
    first = [(4000.0 + 60 * n, 0.2) for n in range(5)]
    after_an_outage = [(5500.0 + 60 * n, 0.2) for n in range(5)]  # 20 min without a sample (beat was down)

    svg = latency_chart(before + first + after_an_outage, sla=1.0, title="Queue high", now=5800.0)

    assert len(dots_of(svg)) == 10
    assert svg.count("<polyline") == 2


def test_chart_without_samples_says_so_and_still_shows_the_sla():
    svg = latency_chart([], sla=60.0, title="Queue export", now=1200.0)

    assert "No data yet" in svg
    assert "once a minute" in svg
    assert "<polyline" not in svg
    assert "SLA 60.0 s" in svg
    assert "60 min ago" in svg  # the hour the data will fill

    stopped = latency_chart([(1000.0, 0.3)], sla=60.0, title="Queue export", now=1000.0 + 7200)
    assert "No data in the last 60 min" in stopped


def test_chart_text_is_escaped():
    svg = latency_chart([], sla=1.0, title='<script>alert("x")</script>')
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


@pytest.mark.parametrize(("seconds", "label"), [(0.0042, "4 ms"), (0.25, "250 ms"), (1.25, "1.2 s"), (300, "300 s")])
def test_seconds_label(seconds, label):
    assert seconds_label(seconds) == label


# ------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------
@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("ops", "ops@example.com", "pw", is_staff=True)


def test_staff_see_every_pool_queue_depth_and_chart(client, staff, clean_metrics, monkeypatch):
    monkeypatch.setattr(metrics, "queue_depths", lambda: dict.fromkeys(topology.QUEUES, 0) | {"export": 7})
    metrics.record_latency("high", 0.2)
    metrics.record_latency("default", 25.0)  # the SLA is 10 s
    client.force_login(staff)

    page = client.get(reverse("operations")).content.decode()

    for pool in topology.POOLS:
        assert f'id="{pool.name}"' in page
    for queue in topology.QUEUES:
        assert f'id="queue-{queue}"' in page
    assert page.count('<svg class="chart"') == len(topology.QUEUES)
    assert "7 waiting" in page
    assert "200 ms" in page
    assert "within SLA" in page
    assert "SLA breached" in page


def test_the_page_says_when_the_broker_does_not_answer(client, staff, clean_metrics, monkeypatch):
    monkeypatch.setattr(metrics, "queue_depths", dict)
    client.force_login(staff)
    page = client.get(reverse("operations")).content.decode()
    assert 'id="broker-down"' in page
    assert "depth unknown" in page


def test_operations_are_refused_to_customers_and_strangers(client, db):
    url = reverse("operations")
    assert client.get(url).url.startswith(reverse("login"))  # anonymous: log in first

    client.force_login(get_user_model().objects.create_user("ada", "ada@example.com", "pw"))
    response = client.get(url)
    assert response.status_code == 403
    assert "The operations page is for staff." in response.content.decode()
