"""Views of a job's manifest: the status frame, the batches frame and the HTML summary.

Both frames have declared schemas (never inferred), so a job where nothing ran yet
still gives typed, empty columns, and DuckDB tables made from them are typed too.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from batchframe._manifest import Manifest, ShardAttempt

__all__ = [
    "BATCHES_SCHEMA",
    "STATUS_COLUMNS",
    "STATUS_SCHEMA",
    "JobFacts",
    "batches_frame",
    "format_cost",
    "format_seconds",
    "job_facts",
    "job_html",
    "status_frame",
]

#: The columns people read (the CLI's ``status`` table and the notebook view);
#: ``BatchJob.status()`` has them all.
STATUS_COLUMNS = (
    "shard",
    "attempt",
    "model",
    "status",
    "batch_id",
    "n_requests",
    "completed",
    "failed",
    "submitted_at",
    "settled_at",
    "last_error",
)

_TS = pl.Datetime("us", "UTC")
_STATUS: dict[str, pl.DataType] = {
    "shard": pl.Int64(),
    "attempt": pl.Int64(),
    "submission": pl.Int64(),
    "model": pl.String(),
    "batch_id": pl.String(),
    "status": pl.String(),
    "settled": pl.Boolean(),
    "n_requests": pl.Int64(),
    "total": pl.Int64(),
    "completed": pl.Int64(),
    "failed": pl.Int64(),
    "est_tokens": pl.Int64(),
    "input_file_id": pl.String(),
    "output_file_id": pl.String(),
    "error_file_id": pl.String(),
    "created_at": _TS,
    "submitted_at": _TS,
    "terminal_at": _TS,
    "settled_at": _TS,
    "last_error": pl.String(),
    "not_before": _TS,
    "duplicate_batch_ids": pl.String(),
}
STATUS_SCHEMA = pl.Schema(_STATUS)
#: ``BatchResults.batches``: one row per batch that ran.
BATCHES_SCHEMA = pl.Schema(
    {
        "batch_id": pl.String(),
        "shard": pl.Int32(),
        "attempt": pl.Int32(),
        "submission": pl.Int32(),
        "status": pl.String(),
        "endpoint": pl.String(),
        "model": pl.String(),
        "input_file_id": pl.String(),
        "output_file_id": pl.String(),
        "error_file_id": pl.String(),
        "created_at": _TS,
        "completed_at": _TS,
        "n_requests": pl.Int64(),
        "est_tokens": pl.Int64(),
        "total": pl.Int64(),
        "completed": pl.Int64(),
        "failed": pl.Int64(),
        "input_tokens": pl.Int64(),
        "cached_tokens": pl.Int64(),
        "output_tokens": pl.Int64(),
        "reasoning_tokens": pl.Int64(),
        "total_tokens": pl.Int64(),
    }
)


def _us(x: float | None) -> int | None:
    return None if x is None else int(x * 1_000_000)


def _ordered(records: Sequence[ShardAttempt]) -> list[ShardAttempt]:
    return sorted(records, key=lambda r: (r.shard, r.attempt))


def status_frame(records: Sequence[ShardAttempt]) -> pl.DataFrame:
    """One row per shard attempt (see ``BatchJob.status``)."""
    rows = [
        (
            r.shard,
            r.attempt,
            r.submission,
            r.model,
            r.batch_id,
            r.status,
            r.is_settled,
            r.n_requests,
            r.total,
            r.completed,
            r.failed,
            r.est_tokens,
            r.input_file_id,
            r.output_file_id,
            r.error_file_id,
            _us(r.created_at),
            _us(r.submitted_at),
            _us(r.terminal_at),
            _us(r.settled_at),
            r.last_error,
            _us(r.not_before),
            ",".join(d["batch_id"] for d in r.duplicates) or None,
        )
        for r in _ordered(records)
    ]
    raw = {name: (pl.Int64() if dtype == _TS else dtype) for name, dtype in STATUS_SCHEMA.items()}
    df = pl.DataFrame(rows, schema=raw, orient="row")
    return df.cast(STATUS_SCHEMA)


def _usage(usage: dict[str, Any] | None, *path: str) -> int | None:
    value: Any = usage
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def batches_frame(manifest: Manifest) -> pl.DataFrame:
    """One row per batch that ran (``BATCHES_SCHEMA`` columns, then job extras)."""
    rows = []
    for r in _ordered(manifest.records):
        if r.batch_id is None:
            continue
        u = r.usage
        rows.append(
            {
                "batch_id": r.batch_id,
                "shard": r.shard,
                "attempt": r.attempt,
                "status": r.status,
                "endpoint": manifest.endpoint,
                "model": r.model,
                "input_file_id": r.input_file_id,
                "output_file_id": r.output_file_id,
                "error_file_id": r.error_file_id,
                "created_at": None
                if r.batch_created_at is None
                else r.batch_created_at * 1_000_000,
                "completed_at": (
                    _us(r.terminal_at) if r.batch_ended_at is None else r.batch_ended_at * 1_000_000
                ),
                "total": r.total,
                "completed": r.completed,
                "failed": r.failed,
                "input_tokens": _usage(u, "input_tokens"),
                "cached_tokens": _usage(u, "input_tokens_details", "cached_tokens"),
                "output_tokens": _usage(u, "output_tokens"),
                "reasoning_tokens": _usage(u, "output_tokens_details", "reasoning_tokens"),
                "total_tokens": _usage(u, "total_tokens"),
                "submission": r.submission,
                "n_requests": r.n_requests,
                "est_tokens": r.est_tokens,
            }
        )
    schema = {k: (pl.Int64() if v == _TS else v) for k, v in BATCHES_SCHEMA.items()}
    df = pl.DataFrame(rows, schema=schema)
    return df.with_columns(pl.col(k).cast(v) for k, v in BATCHES_SCHEMA.items() if v == _TS)


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What a person reads about a job: state, rows, progress, cost so far, ETA."""

    state: str
    n_requests: int
    ok: int
    failed: int
    retried: int
    batches: str
    cost_usd: float | None
    priced_batches: int
    eta_seconds: float | None

    @property
    def pending(self) -> int:
        """Rows not settled yet."""
        return max(0, self.n_requests - self.ok - self.failed)

    @property
    def progress(self) -> float:
        """Share of rows settled (0 to 1)."""
        return (self.ok + self.failed) / self.n_requests if self.n_requests else 1.0

    def lines(self) -> list[str]:
        """The facts as text lines (the CLI's ``status`` summary)."""
        out = [
            f"{self.state}: {self.ok:,} ok, {self.failed:,} failed, {self.pending:,} pending"
            + (f"; {self.retried:,} row(s) retried" if self.retried else "")
        ]
        extra = [f"progress {self.progress:.0%}"]
        if self.cost_usd is not None:
            extra.append(
                f"cost so far {format_cost(self.cost_usd)} ({self.priced_batches} batch(es))"
            )
        if self.eta_seconds is not None:
            extra.append(f"ETA {format_seconds(self.eta_seconds)}")
        out.append(", ".join(extra))
        return out


def format_seconds(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.5 h"``, ``"2 days"``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _batch_cost(r: ShardAttempt, prices: Mapping[str, Any] | None = None) -> float | None:
    from batchframe._schemas import DEFAULT_PRICES, price_for

    u = r.usage
    inp, out = _usage(u, "input_tokens"), _usage(u, "output_tokens")
    price = price_for(r.model, {**DEFAULT_PRICES, **(prices or {})})  # the job's provider's
    if inp is None or out is None or price is None or (not inp + out and not r.is_terminal):
        return None  # no usage reported (yet)
    cached = _usage(u, "input_tokens_details", "cached_tokens") or 0
    p_in = price.get("input", 0.0)
    p_cached = price.get("cached_input", p_in)
    return ((inp - cached) * p_in + cached * p_cached + out * price.get("output", 0.0)) / 1e6


def format_cost(usd: float) -> str:
    """``"$1.2345"``, or ``"< $0.0001"`` for a cost too small to show in cents."""
    return f"${usd:,.4f}" if usd >= 0.0001 or usd == 0 else "< $0.0001"


def job_facts(manifest: Manifest, records: Sequence[ShardAttempt], now: float) -> JobFacts:
    """The :class:`JobFacts` of a job, from its manifest alone (no network, no reading)."""
    from batchframe._manifest import STATUSES, row_counts

    ok, failed, retried = row_counts(records)
    settled = all(r.is_settled for r in records)
    state = "settled" if settled else "running"
    if manifest.cancel_requested:
        state = f"cancelled ({state})"
    order = {s: i for i, s in enumerate(STATUSES)}
    counts = Counter(r.status for r in records)
    batches = " ".join(
        f"{s}={n}" for s, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 99))
    )
    prices = manifest.options.get("prices")
    costs = [c for c in (_batch_cost(r, prices) for r in records) if c is not None]
    done = ok + failed
    starts = [r.submitted_at for r in records if r.submitted_at is not None]
    eta: float | None = None
    if not settled and starts and 0 < done < manifest.n_requests:
        elapsed = now - min(starts)
        eta = elapsed * (manifest.n_requests - done) / done
    return JobFacts(
        state=state,
        n_requests=manifest.n_requests,
        ok=ok,
        failed=failed,
        retried=retried,
        batches=batches,
        cost_usd=sum(costs) if costs else None,
        priced_batches=len(costs),
        eta_seconds=eta,
    )


def job_html(manifest: Manifest, root: str, *, now: float | None = None) -> str:
    """The notebook view of a job: what a person reads, then the shard table.

    State, rows ok / failed / pending with a progress bar, cost so far and ETA, then
    one row per shard attempt with the CLI's ``status`` columns.
    """
    now = time.time() if now is None else now
    facts = job_facts(manifest, manifest.records, now)
    pct = f"{facts.progress:.0%}"
    cost = "-" if facts.cost_usd is None else escape(format_cost(facts.cost_usd))
    eta = "-" if facts.eta_seconds is None else format_seconds(facts.eta_seconds)
    cells = [
        ("status", escape(facts.state)),
        (
            "rows",
            f"{facts.ok:,} ok, {facts.failed:,} failed, {facts.pending:,} pending "
            f"of {facts.n_requests:,}" + (f" ({facts.retried:,} retried)" if facts.retried else ""),
        ),
        (
            "progress",
            f'<progress value="{facts.ok + facts.failed}" max="{max(facts.n_requests, 1)}">'
            f"</progress> {pct}",
        ),
        ("batches", escape(facts.batches)),
        ("cost so far", cost),
        ("ETA", eta),
    ]
    head = (
        f"<p><b>BatchJob</b> <code>{escape(manifest.job_id)}</code> at "
        f"<code>{escape(root)}</code> &mdash; {escape(manifest.endpoint)}</p>"
    )
    facts_table = (
        '<table style="text-align:left">'
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in cells)
        + "</table>"
    )
    shards = status_frame(manifest.records).select(STATUS_COLUMNS)
    return head + facts_table + shards._repr_html_()
