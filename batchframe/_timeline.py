"""Batches over time, by status: a small SVG chart with no plotting dependency."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import polars as pl

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


class Timeline:
    """One bar per shard attempt: queued (grey) until submitted, then its batch's status.

    Shown as a chart in notebooks (``_repr_svg_``); :meth:`to_svg` gives the SVG text.
    Made by :meth:`BatchJob.timeline`.
    """

    def __init__(self, status: pl.DataFrame, *, now: datetime | None = None) -> None:
        self.status = status
        self.now = now or datetime.now(UTC)

    def _spans(self) -> list[tuple[str, float, float, float, str]]:
        rows = self.status.sort("created_at", "shard", "attempt").to_dicts()
        starts = [r["created_at"] for r in rows if r["created_at"] is not None]
        if not starts:
            return []
        t0 = min(starts)

        def sec(t: datetime | None) -> float:
            return float(((t or self.now) - t0).total_seconds())

        out = []
        for r in rows:
            label = f"{r['shard']}.a{r['attempt']}"
            status = str(r["status"])
            begin = sec(r["created_at"])
            submitted = sec(r["submitted_at"]) if r["submitted_at"] else sec(None)
            end = sec(r["terminal_at"]) if r["terminal_at"] else sec(None)
            out.append((label, begin, min(submitted, end), end, status))
        return out

    def to_svg(self) -> str:
        """The chart as an SVG document."""
        spans = self._spans()
        height = _TOP + _ROW * max(len(spans), 1) + 40
        total = max((end for *_, end, _ in spans), default=1.0) or 1.0
        scale = (_WIDTH - _LEFT - 30) / total
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
            'font-family="sans-serif" font-size="10">',
            f'<text x="{_LEFT}" y="14">batches over time (s), by status</text>',
        ]
        for i, (label, begin, submitted, end, status) in enumerate(spans):
            y = _TOP + i * _ROW
            parts.append(f'<text x="4" y="{y + 11}">{html.escape(label)}</text>')
            bars = [("waiting", begin, submitted), (status, submitted, end)]
            for name, a, b in bars:
                if b <= a:
                    continue
                colour = COLOURS.get(name, "#6a51a3")
                parts.append(
                    f'<rect x="{_LEFT + a * scale:.1f}" y="{y + 2}" '
                    f'width="{max((b - a) * scale, 1):.1f}" height="{_ROW - 4}" fill="{colour}">'
                    f"<title>{html.escape(label)}: {html.escape(name)} "
                    f"{a:.1f}-{b:.1f}s</title></rect>"
                )
        axis_y = _TOP + _ROW * max(len(spans), 1) + 12
        for k in range(6):
            t = total * k / 5
            parts.append(
                f'<text x="{_LEFT + t * scale:.1f}" y="{axis_y}" text-anchor="middle">'
                f"{t:.1f}</text>"
            )
        legend_y = axis_y + 16
        x = _LEFT
        for name in sorted({s for *_, s in spans} | {"waiting"}):
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
        return f"<Timeline of {self.status.height} shard attempt(s)>"
