"""Batches over time, by status: a small SVG chart with no plotting dependency."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchframe._manifest import ShardAttempt

COLOURS = {
    "waiting": "#d9d9d9",
    "validating": "#9ecae1",
    "in_progress": "#4292c6",
    "finalizing": "#2171b5",
    "cancelling": "#fdae6b",
    "completed": "#41ab5d",
    "failed": "#cb181d",
    "expired": "#fd8d3c",
    "cancelled": "#969696",
}
_ROW = 16
_LEFT = 70
_WIDTH = 640
_TOP = 24


#: Batch timestamps (``Batch.<phase>_at``) that start each phase, in lifecycle order.
_PHASE_STARTS = (
    ("in_progress", "in_progress_at"),
    ("finalizing", "finalizing_at"),
    ("cancelling", "cancelling_at"),
)
_ENDS = ("completed_at", "failed_at", "expired_at", "cancelled_at")

Span = tuple[str, float, float, str]  # (label, begin, end, phase), seconds since the start


def record_phases(r: ShardAttempt, now: float) -> list[tuple[str, float, float]]:
    """``(phase, start, end)`` of one shard attempt, in UNIX seconds.

    Queued locally (``waiting``) until submitted, then the batch's own phases as its
    timestamps report them (``validating`` until ``in_progress_at``, ``in_progress``
    until ``finalizing_at``, ``finalizing`` until it ended), then its final status
    until the attempt was settled (downloaded and parsed).
    """
    ts = {k: float(v) for k, v in (r.batch_timestamps or {}).items() if v}
    marks: list[tuple[str, float]] = [("waiting", r.created_at)]
    if r.submitted_at is not None:
        marks.append(("validating", r.submitted_at))
        for phase, key in _PHASE_STARTS:
            if key in ts:
                marks.append((phase, ts[key]))
        ended = next((ts[k] for k in _ENDS if k in ts), None)
        if r.is_terminal:
            end = ended if ended is not None else (r.terminal_at or now)
            marks.append((r.status, end))
    stop = r.settled_at if r.settled_at is not None else now
    out: list[tuple[str, float, float]] = []
    begin = marks[0][1]
    for i, (phase, at) in enumerate(marks):
        # Batch timestamps are whole seconds: never let a phase start before the last one.
        at = max(at, begin)
        nxt = max(marks[i + 1][1], at) if i + 1 < len(marks) else max(stop, at)
        out.append((phase, at, nxt))
        begin = at
    return out


class Timeline:
    """One bar per shard attempt: queued, then its batch's phases, as a chart.

    ``waiting`` (queued locally), ``validating``, ``in_progress``, ``finalizing`` (as the
    batch object reports them), then the final status until the attempt was settled.
    Shown as a chart in notebooks (``_repr_svg_``); :meth:`to_svg` gives the SVG text.
    Made by :meth:`BatchJob.timeline`.
    """

    def __init__(self, spans: list[Span], *, n_attempts: int | None = None) -> None:
        self.spans = spans
        self.n_attempts = n_attempts if n_attempts is not None else len({s[0] for s in spans})

    @classmethod
    def of(cls, records: Sequence[ShardAttempt], *, now: float | None = None) -> Timeline:
        """The timeline of a job's shard attempts."""
        now = time.time() if now is None else now
        ordered = sorted(records, key=lambda r: (r.created_at, r.shard, r.attempt))
        if not ordered:
            return cls([], n_attempts=0)
        t0 = min(r.created_at for r in ordered)
        spans = [
            (f"{r.shard}.a{r.attempt}", a - t0, b - t0, phase)
            for r in ordered
            for phase, a, b in record_phases(r, now)
        ]
        return cls(spans, n_attempts=len(ordered))

    def to_svg(self) -> str:
        """The chart as an SVG document."""
        rows: dict[str, int] = {}
        for label, *_ in self.spans:
            rows.setdefault(label, len(rows))
        height = _TOP + _ROW * max(len(rows), 1) + 40
        total = max((end for _, _, end, _ in self.spans), default=1.0) or 1.0
        scale = (_WIDTH - _LEFT - 30) / total
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            'font-family="sans-serif" font-size="10">',
            f'<text x="{_LEFT}" y="14">batches over time (s), by phase</text>',
        ]
        for label, i in rows.items():
            y = _TOP + i * _ROW
            parts.append(f'<text x="4" y="{y + 11}">{html.escape(label)}</text>')
        for label, a, b, name in self.spans:
            y = _TOP + rows[label] * _ROW
            colour = COLOURS.get(name, "#6a51a3")
            parts.append(
                f'<rect x="{_LEFT + a * scale:.1f}" y="{y + 2}" '
                f'width="{max((b - a) * scale, 1):.1f}" height="{_ROW - 4}" fill="{colour}">'
                f"<title>{html.escape(label)}: {html.escape(name)} "
                f"{a:.1f}-{b:.1f}s</title></rect>"
            )
        axis_y = _TOP + _ROW * max(len(rows), 1) + 12
        for k in range(6):
            t = total * k / 5
            parts.append(
                f'<text x="{_LEFT + t * scale:.1f}" y="{axis_y}" text-anchor="middle">'
                f"{t:.1f}</text>"
            )
        legend_y = axis_y + 16
        x = _LEFT
        seen = {name for *_, name in self.spans} | {"waiting"}
        for name in [n for n in COLOURS if n in seen] + sorted(seen - set(COLOURS)):
            colour = COLOURS.get(name, "#6a51a3")
            parts.append(
                f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>'
            )
            parts.append(f'<text x="{x + 13}" y="{legend_y}">{html.escape(name)}</text>')
            x += 14 + 7 * len(name) + 10
        parts.append("</svg>")
        return "".join(parts)

    def _repr_svg_(self) -> str:
        return self.to_svg()

    def __repr__(self) -> str:
        return f"<Timeline of {self.n_attempts} shard attempt(s)>"
