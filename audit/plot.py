"""`--plot FILE.png`: a timeline of the day, one row per instance and one for the union, holes in red."""

from __future__ import annotations

from pathlib import Path

from audit.check import Audit
from audit.days import HOUR_MS
from audit.ranges import Span
from audit.report import ordered_instances


def _bars(spans: list[Span], start_ms: int, end_ms: int) -> list[tuple[float, float]]:
    clipped = ((max(s.first_time, start_ms), min(s.last_time, end_ms)) for s in spans)
    # A run shorter than the line width would vanish; give it a visible sliver.
    return [((a - start_ms) / HOUR_MS, max(b - a, 20_000) / HOUR_MS) for a, b in clipped]


def save(audit: Audit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cov = audit.coverage
    start, end = cov.start_ms, cov.end_ms
    rows = [*ordered_instances(audit), "union"]
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.5 * len(rows)), layout="constrained")
    for y, name in enumerate(rows):
        spans = cov.union if name == "union" else cov.instances[name].spans
        ax.broken_barh(_bars(spans, start, end), (y - 0.35, 0.7), color="tab:green" if name == "union" else "tab:blue")
    for hole in cov.holes:
        a = start if hole.after_time is None else max(hole.after_time, start)
        b = end if hole.before_time is None else min(hole.before_time, end)
        # Holes of a few ids are seconds wide; three minutes keeps each one visible on a day's axis.
        ax.axvspan((a - start) / HOUR_MS, (a - start + max(b - a, 180_000)) / HOUR_MS, color="tab:red", alpha=0.35,
                   lw=0)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.invert_yaxis()
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 2))
    ax.set_xlabel("hour of the day (UTC, trade time)")
    state = "complete" if audit.complete else f"{len(cov.holes)} hole(s) in red"
    ax.set_title(f"{audit.symbol} {audit.day}: trade-id coverage per instance ({state})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
