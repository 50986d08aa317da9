"""Shard planning: pure, no I/O.

Rows are grouped by model (one model per shard, as the API requires; models in order of
first appearance, rows in input order within a model) and each group is cut greedily:
a shard grows while the next row still fits every limit. For cutting an ordered
sequence under additive limits, greedy cutting gives the fewest shards possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from batchframe._config import BatchLimits
from batchframe.exceptions import InputError, RequestTooLargeError

SHOWN_ROWS = 5


@dataclass(frozen=True)
class Shard:
    """One planned shard: a model and the input rows it holds, in input order."""

    index: int
    model: str
    rows: pl.Series  # UInt32 positions into the requests frame
    n_bytes: int
    n_inputs: int
    est_tokens: int

    @property
    def n_requests(self) -> int:
        """Number of requests (lines) in the shard."""
        return len(self.rows)


def _cumsum(values: pl.Series) -> pl.Series:
    return pl.concat([pl.Series([0], dtype=pl.Int64), values.cast(pl.Int64).cum_sum()])


def _last_fitting(cum: pl.Series, start: int, cap: int) -> int:
    """Largest ``end`` with ``cum[end] - cum[start] <= cap`` (``cum`` is non-decreasing)."""
    limit = int(cum[start]) + cap
    return int(cum.search_sorted(limit, side="right")) - 1


def check_rows(frame: pl.DataFrame, limits: BatchLimits, *, embeddings: bool) -> None:
    checks: list[tuple[str, int | None, str]] = [
        ("n_bytes", limits.max_bytes, "bytes, over the per-file limit `max_bytes`"),
        ("est_tokens", limits.max_tokens, "estimated tokens, over `max_tokens`"),
    ]
    if embeddings:
        checks.append(
            ("n_inputs", limits.max_embedding_inputs, "inputs, over `max_embedding_inputs`")
        )
    for column, limit, what in checks:
        if limit is None:
            continue
        over = frame[column] > limit
        if over.any():
            rows = [int(i) for i in over.arg_true().head(SHOWN_ROWS)]
            worst = int(frame[column].max())  # type: ignore[arg-type]
            ids = frame["custom_id"].gather(rows).to_list()
            cls = RequestTooLargeError if column == "n_bytes" else InputError
            msg = (
                f"{int(over.sum())} request(s) cannot fit any shard: row(s) {rows} "
                f"(custom_id {ids}) have up to {worst:,} {what} ({limit:,}); "
                "shorten or split those requests, or raise the limit in `BatchLimits`"
            )
            raise cls(msg, rows=rows, column=column)


def plan_shards(frame: pl.DataFrame, limits: BatchLimits, *, embeddings: bool) -> list[Shard]:
    """Cut a requests frame into shards that respect every limit.

    Parameters
    ----------
    frame
        Columns ``custom_id``, ``model``, ``n_bytes``, ``n_inputs``, ``est_tokens``.
    limits
        The limits each shard must respect.
    embeddings
        Whether ``max_embedding_inputs`` applies (``/v1/embeddings``).
    """
    check_rows(frame, limits, embeddings=embeddings)
    indexed = frame.select("model", "n_bytes", "n_inputs", "est_tokens").with_row_index("row")
    models = indexed["model"].unique(maintain_order=True).to_list()
    shards: list[Shard] = []
    for model in models:
        group = indexed.filter(pl.col("model") == model)
        rows = group["row"]
        cb = _cumsum(group["n_bytes"])
        ci = _cumsum(group["n_inputs"])
        ct = _cumsum(group["est_tokens"])
        caps: list[tuple[pl.Series, int]] = [(cb, limits.max_bytes)]
        if embeddings:
            caps.append((ci, limits.max_embedding_inputs))
        if limits.max_tokens is not None:
            caps.append((ct, limits.max_tokens))
        n = len(rows)
        start = 0
        while start < n:
            end = min(start + limits.max_requests, n)
            for cum, cap in caps:
                end = min(end, _last_fitting(cum, start, cap))
            # check_rows guarantees one row always fits, so end > start.
            shards.append(
                Shard(
                    index=len(shards),
                    model=model,
                    rows=rows.slice(start, end - start),
                    n_bytes=int(cb[end]) - int(cb[start]),
                    n_inputs=int(ci[end]) - int(ci[start]),
                    est_tokens=int(ct[end]) - int(ct[start]),
                )
            )
            start = end
    return shards


def plan_frame(shards: list[Shard]) -> pl.DataFrame:
    """One row per shard: shard, model, n_requests, n_bytes, n_inputs, est_tokens."""
    return pl.DataFrame(
        {
            "shard": [s.index for s in shards],
            "model": [s.model for s in shards],
            "n_requests": [s.n_requests for s in shards],
            "n_bytes": [s.n_bytes for s in shards],
            "n_inputs": [s.n_inputs for s in shards],
            "est_tokens": [s.est_tokens for s in shards],
        },
        schema={
            "shard": pl.Int64,
            "model": pl.String,
            "n_requests": pl.Int64,
            "n_bytes": pl.Int64,
            "n_inputs": pl.Int64,
            "est_tokens": pl.Int64,
        },
    )
