"""Views of a job's manifest: the status frame, the batches frame and the HTML summary.

Both frames have declared schemas (never inferred), so a job where nothing ran yet
still gives typed, empty columns, and DuckDB tables made from them are typed too.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from batchframe._manifest import Manifest, ShardAttempt

__all__ = [
    "BATCHES_SCHEMA",
    "STATUS_SCHEMA",
    "batches_frame",
    "job_html",
    "status_frame",
]

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
        "request_total": pl.Int64(),
        "request_completed": pl.Int64(),
        "request_failed": pl.Int64(),
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
                "request_total": r.total,
                "request_completed": r.completed,
                "request_failed": r.failed,
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


def job_html(
    job_id: str,
    root: str,
    endpoint: str,
    n_requests: int,
    ok: int,
    failed: int,
    status: pl.DataFrame,
) -> str:
    """HTML summary and status table for notebooks."""
    counts = status.group_by("status").len().sort("status")
    summary = ", ".join(f"{s}: {n}" for s, n in counts.iter_rows())
    head = (
        f"<p><b>BatchJob</b> <code>{escape(job_id)}</code> at <code>{escape(root)}</code> "
        f"&mdash; {escape(endpoint)}, {n_requests:,} rows ({ok:,} ok, {failed:,} failed); "
        f"batches: {escape(summary)}</p>"
    )
    return head + status._repr_html_()
