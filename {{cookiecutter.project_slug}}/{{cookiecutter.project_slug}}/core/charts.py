"""The operations page's latency charts: inline SVG drawn on the server.

No JavaScript chart library: nothing to vendor or download, the chart is there
without scripts, and it is plain markup that tests can read. Every number is
formatted by us and every text goes through ``format_html``, so a queue name is
data, never markup.
"""

import time

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 560, 150
# Room for the y labels on the left and the time labels below.
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 10, 22


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


def latency_chart(samples: list[tuple[float, float]], sla: float, title: str, now: float | None = None) -> SafeString:
    """A line chart of canary samples ``(Unix time, seconds waited)``, oldest first, with the SLA as a dashed line.

    Samples above the SLA are drawn as red dots (class ``breach``). The y axis
    starts at zero and always shows the SLA line with room above it.
    """
    now = time.time() if now is None else now
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom, right = TOP + plot_height, LEFT + plot_width
    top = max([sla * 1.25] + [seconds for _, seconds in samples])
    first, last = (samples[0][0], samples[-1][0]) if samples else (now, now)
    span = last - first

    def x(at: float) -> float:  # one sample: at the right edge
        return LEFT + (plot_width * (at - first) / span if span else plot_width)

    def y(seconds: float) -> float:
        return bottom - plot_height * seconds / top

    parts = [
        format_html("<title>{}</title>", title),
        format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, TOP, LEFT, bottom),
        format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, bottom, right, bottom),
        format_html('<text x="{}" y="{}" text-anchor="end">{}</text>', LEFT - 4, TOP + 8, seconds_label(top)),
        format_html('<text x="{}" y="{}" text-anchor="end">0</text>', LEFT - 4, bottom),
        format_html('<line class="sla" x1="{}" y1="{}" x2="{}" y2="{}"/>', LEFT, px(y(sla)), right, px(y(sla))),
        format_html('<text x="{}" y="{}" text-anchor="end">SLA {}</text>', right, px(y(sla) - 4), seconds_label(sla)),
    ]
    if samples:
        points = " ".join(f"{px(x(at))},{px(y(seconds))}" for at, seconds in samples)
        parts.append(format_html('<polyline class="latency" points="{}"/>', points))
        parts.append(
            format_html_join(
                "",
                '<circle class="sample{}" cx="{}" cy="{}" r="2.5"><title>{}</title></circle>',
                (
                    (" breach" if seconds > sla else "", px(x(at)), px(y(seconds)), seconds_label(seconds))
                    for at, seconds in samples
                ),
            )
        )
        parts.append(format_html('<text x="{}" y="{}">{}</text>', LEFT, HEIGHT - 6, age_label(now - first)))
        parts.append(
            format_html('<text x="{}" y="{}" text-anchor="end">{}</text>', right, HEIGHT - 6, age_label(now - last))
        )
    else:
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="middle">no canary sample yet: is beat running?</text>',
                px(LEFT + plot_width / 2),
                px(TOP + plot_height / 2),
            )
        )
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}</svg>',
        WIDTH,
        HEIGHT,
        title,
        format_html_join("", "{}", ((part,) for part in parts)),  # each part is already safe
    )
