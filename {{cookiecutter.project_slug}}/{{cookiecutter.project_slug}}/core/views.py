from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render
from django.utils.safestring import SafeString
from django.views import defaults

from config import topology

from . import metrics
from .charts import latency_chart, seconds_label


def home(request):
    return render(request, "core/home.html", {"pools": topology.POOLS, "routes": topology.ROUTES})


def error_page(request, status: int):
    """Development only: the site's own 404 or 403 page, at /404/ and /403/.

    With DEBUG on, Django answers an unknown URL or a refusal with its technical
    page (the yellow one, with the URL patterns tried); production shows
    templates/404.html and 403.html. These render them through Django's own
    handlers, as production does. Without DEBUG these URLs are not found like
    any other.
    """
    if not settings.DEBUG:
        raise Http404
    if status == 403:
        return defaults.permission_denied(request, PermissionDenied("This is how a refused page looks."))
    return defaults.page_not_found(request, Http404())


@dataclass
class QueueStatus:
    """One queue on the operations page."""

    name: str
    depth: int | None  # None: the broker did not answer
    latency: float | None  # the canary's last sample; None: no sample yet
    sla: float
    chart: SafeString

    @property
    def within_sla(self) -> bool | None:
        return None if self.latency is None else self.latency <= self.sla

    @property
    def latency_label(self) -> str:
        return "no sample" if self.latency is None else seconds_label(self.latency)

    @property
    def sla_label(self) -> str:
        return seconds_label(self.sla)


@login_required
def operations(request):
    """Staff only: each worker pool, its queues' depth, and the canary's latency against the queue's SLA.

    The same numbers as /metrics (core/metrics.py), for a person: the charts show
    the last hour of canary samples kept in Redis. Prometheus keeps the long history.
    """
    if not request.user.is_staff:
        raise PermissionDenied("The operations page is for staff.")
    depths, latest = metrics.queue_depths(), metrics.latencies()
    pools = [
        (
            pool,
            [
                QueueStatus(
                    name=queue,
                    depth=depths.get(queue),
                    latency=latest.get(queue),
                    sla=topology.SLA_SECONDS[queue],
                    chart=latency_chart(
                        metrics.latency_history(queue),
                        topology.SLA_SECONDS[queue],
                        title=f"Queue {queue}: canary latency of the last hour",
                        window=metrics.HISTORY_WINDOW,
                    ),
                )
                for queue in pool.queues
            ],
        )
        for pool in topology.POOLS
    ]
    return render(request, "core/operations.html", {"pools": pools, "broker_answered": bool(depths)})
