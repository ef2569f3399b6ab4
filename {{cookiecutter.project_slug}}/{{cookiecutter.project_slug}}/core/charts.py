"""The operations page's latency charts: inline SVG drawn on the server.

No JavaScript chart library: nothing to vendor or download, the chart is there
without scripts, and it is plain markup that tests can read. Every number is
formatted by us and every text goes through ``format_html``, so a queue name is
data, never markup.
"""

import time

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

# The drawing's own units; the page scales it to the width of its column (site.css).
WIDTH, HEIGHT = 900, 170
# Room for the y labels on the left and the time labels below.
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 10, 22
# Time labels (and faint grid lines) across the window: 60, 45, 30, 15 min ago, now.
TIME_TICKS = 4


def seconds_label(seconds: float) -> str:
    """A duration for people: ``0.0042`` -> ``4 ms``, ``1.25`` -> ``1.2 s``, ``300`` -> ``300 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def age_label(seconds: float) -> str:
    minutes = round(seconds / 60)
    return "now" if minutes < 1 else f"{minutes} min ago"


def px(value: float) -> str:
    """A coordinate with one decimal. format_html turns its arguments into
    (escaped) strings, so numbers are formatted before they get there."""
    return f"{value:.1f}"


def runs(samples: list[tuple[float, float]], gap: float) -> list[list[tuple[float, float]]]:
    """The samples cut where none came for more than ``gap`` seconds: one line each."""
    cut: list[list[tuple[float, float]]] = []
    for sample in samples:
        if cut and sample[0] - cut[-1][-1][0] <= gap:
            cut[-1].append(sample)
        else:
            cut.append([sample])
    return cut


def latency_chart(
    samples: list[tuple[float, float]],
    sla: float,
    title: str,
    now: float | None = None,
    window: float = 3600,
    gap: float = 150,
) -> SafeString:
    """A line chart of canary samples ``(Unix time, seconds waited)``, oldest first, with the SLA as a dashed line.

    The time axis is always the last ``window`` seconds, ending now: just after
    start the chart is empty but for its first samples at the right, as the
    hour fills up, and samples older than the window are not drawn. The line
    breaks where no sample came for ``gap`` seconds (beat or the pool was
    down): an empty stretch, not a straight line across the outage. Samples
    above the SLA are red dots (class ``breach``). The y axis starts at zero and
    always shows the SLA line with room above it. Without samples, the chart
    says so.
    """
    now = time.time() if now is None else now
    start = now - window
    shown = [(at, seconds) for at, seconds in samples if at >= start]
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom, right = TOP + plot_height, LEFT + plot_width
    top = max([sla * 1.25] + [seconds for _, seconds in shown])

    def x(at: float) -> float:
        return LEFT + plot_width * (min(at, now) - start) / window  # a worker clock a little ahead: drawn at now

    def y(seconds: float) -> float:
        return bottom - plot_height * seconds / top

    parts = [
        format_html("<title>{}</title>", title),
        format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, TOP, LEFT, bottom),
        format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, bottom, right, bottom),
        format_html('<text x="{}" y="{}" text-anchor="end">{}</text>', LEFT - 4, TOP + 8, seconds_label(top)),
        format_html('<text x="{}" y="{}" text-anchor="end">0</text>', LEFT - 4, bottom),
    ]
    for tick in range(TIME_TICKS + 1):
        at = start + window * tick / TIME_TICKS
        tick_x, label = px(x(at)), age_label(now - at)
        if 0 < tick < TIME_TICKS:
            parts.append(format_html('<line class="grid" x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>', tick_x, TOP, bottom))
        anchor = "start" if tick == 0 else "end" if tick == TIME_TICKS else "middle"
        parts.append(
            format_html(
                '<text class="time" x="{}" y="{}" text-anchor="{}">{}</text>', tick_x, HEIGHT - 6, anchor, label
            )
        )
    parts += [
        format_html('<line class="sla" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, px(y(sla)), right, px(y(sla))),
        format_html('<text x="{}" y="{}" text-anchor="end">SLA {}</text>', right, px(y(sla) - 4), seconds_label(sla)),
    ]
    for run in runs(shown, gap):
        if len(run) > 1:  # a lone sample is its dot
            points = " ".join(f"{px(x(at))},{px(y(seconds))}" for at, seconds in run)
            parts.append(format_html('<polyline class="latency" points="{}"/>', points))
    parts.append(
        format_html_join(
            "",
            '<circle class="sample{}" cx="{}" cy="{}" r="2.5"><title>{}</title></circle>',
            (
                (" breach" if seconds > sla else "", px(x(at)), px(y(seconds)), seconds_label(seconds))
                for at, seconds in shown
            ),
        )
    )
    if not shown:
        middle = LEFT + plot_width / 2
        parts.append(
            format_html(
                '<text class="empty" x="{}" y="{}" text-anchor="middle">{}</text>',
                px(middle),
                px(TOP + plot_height / 2 - 4),
                "No data yet" if not samples else f"No data in the last {round(window / 60)} min",
            )
        )
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="middle">{}</text>',
                px(middle),
                px(TOP + plot_height / 2 + 14),
                "The canary samples each queue once a minute: beat sends it, the queue's pool records it.",
            )
        )
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}</svg>',
        WIDTH,
        HEIGHT,
        title,
        format_html_join("", "{}", ((part,) for part in parts)),  # each part is already safe
    )
