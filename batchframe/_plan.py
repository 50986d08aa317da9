"""Shard planning: pure, no I/O.

Rows are grouped by model (one model per shard, as the API requires; rows in input order
within a model) and each model's rows are cut greedily: a shard grows while the next
row still fits every limit. For cutting an ordered sequence under additive limits,
greedy cutting gives the fewest shards possible. Shards are numbered in the order of
their first row.

:class:`ShardPlanner` does this chunk by chunk, keeping one open shard per model, so a
streamed input is planned as it is read; a whole frame is one chunk. Any chunking of
the same rows gives the same shards, with the same numbers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import polars as pl

from batchframe._config import BatchLimits
from batchframe.exceptions import InputError, RequestTooLargeError

SHOWN_ROWS = 5

PLAN_SCHEMA = {
    "shard": pl.Int64,
    "model": pl.String,
    "n_requests": pl.Int64,
    "n_bytes": pl.Int64,
    "n_inputs": pl.Int64,
    "est_tokens": pl.Int64,
}


@dataclass(frozen=True)
class Shard:
    """One planned shard: its number, model and totals."""

    index: int
    model: str
    n_requests: int
    n_bytes: int
    n_inputs: int
    est_tokens: int


@dataclass(frozen=True)
class Segment:
    """Rows of one chunk that go to one shard (``rows``: positions in the chunk)."""

    shard: int
    rows: pl.Series


@dataclass
class _Open:
    index: int
    model: str
    n_requests: int = 0
    n_bytes: int = 0
    n_inputs: int = 0
    est_tokens: int = 0

    def shard(self) -> Shard:
        return Shard(
            self.index, self.model, self.n_requests, self.n_bytes, self.n_inputs, self.est_tokens
        )


class _Cum:
    """Running totals of a non-negative column: ``at(k)`` is the sum of its first ``k`` values.

    Held as a memoryview of the Arrow buffer, searched with :mod:`bisect` (a Polars
    ``search_sorted`` call costs ~0.25 ms of query overhead, and a shard needs several).
    """

    def __init__(self, cum: pl.Series) -> None:
        arr = cum.rechunk().to_arrow()
        self._v = memoryview(arr.buffers()[1]).cast("q")[arr.offset : arr.offset + len(arr)]

    def at(self, k: int) -> int:
        return 0 if k == 0 else int(self._v[k - 1])

    def last_fitting(self, start: int, cap: int) -> int:
        """Largest ``end`` with ``at(end) - at(start) <= cap``."""
        limit = self.at(start) + cap
        return (1 if limit >= 0 else 0) + bisect.bisect_right(self._v, limit) - 1


def _models(models: pl.Series) -> list[str]:
    """The distinct models, in order of first row (one compare when all are the same)."""
    if len(models) and not models.null_count() and bool((models == models[0]).all()):
        return [models[0]]
    return models.unique(maintain_order=True).to_list()


def check_rows(
    frame: pl.DataFrame, limits: BatchLimits, *, embeddings: bool, offset: int = 0
) -> None:
    """Refuse rows that fit no shard alone (``offset``: row number of the frame's first row)."""
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
            at = [int(i) for i in over.arg_true().head(SHOWN_ROWS)]
            rows = [i + offset for i in at]
            worst = int(frame.filter(over)[column].max())  # type: ignore[arg-type]
            ids = frame["custom_id"].gather(at).to_list()
            cls = RequestTooLargeError if column == "n_bytes" else InputError
            msg = (
                f"{int(over.sum())} request(s) in this part of the input cannot fit any shard: "
                f"row(s) {rows} (custom_id {ids}) have up to {worst:,} {what} ({limit:,}); "
                "shorten or split those requests, or raise the limit in `BatchLimits`"
            )
            raise cls(msg, rows=rows, column=column)


@dataclass
class ShardPlanner:
    """Cut rows into shards chunk by chunk, one open shard per model.

    Parameters
    ----------
    limits
        The limits each shard must respect.
    embeddings
        Whether ``max_embedding_inputs`` applies (``/v1/embeddings``).
    """

    limits: BatchLimits
    embeddings: bool
    shards: list[Shard] = field(default_factory=list)
    _open: dict[str, _Open] = field(default_factory=dict)
    _n_rows: int = 0

    def feed(self, meta: pl.DataFrame) -> tuple[list[Segment], list[Shard]]:
        """Plan the next chunk of rows.

        Parameters
        ----------
        meta
            Columns ``custom_id``, ``model``, ``n_bytes``, ``n_inputs``, ``est_tokens``
            of the chunk's rows, in input order.

        Returns
        -------
        tuple[list[Segment], list[Shard]]
            Where the chunk's rows go (segments in shard-number order), and the shards
            this chunk closed (full: no later row can join them).
        """
        check_rows(meta, self.limits, embeddings=self.embeddings, offset=self._n_rows)
        self._n_rows += meta.height
        indexed = meta.select("model", "n_bytes", "n_inputs", "est_tokens").with_row_index("row")
        # (first row in the chunk, shard state, rows) of every shard this chunk touches.
        parts: list[tuple[int, _Open, pl.Series]] = []
        closed: list[_Open] = []
        models = _models(indexed["model"])
        for model in models:
            group = indexed if len(models) == 1 else indexed.filter(pl.col("model") == model)
            parts_m, closed_m = self._cut(model, group)
            parts.extend(parts_m)
            closed.extend(closed_m)
        # Shards opened in this chunk are numbered by their first row.
        fresh = sorted((p for p in parts if p[1].index < 0), key=lambda p: p[0])
        for _, state, _ in fresh:
            state.index = len(self.shards)
            self.shards.append(state.shard())
        for _, state, _ in parts:  # totals as of this chunk
            self.shards[state.index] = state.shard()
        segments = sorted((Segment(s.index, rows) for _, s, rows in parts), key=lambda g: g.shard)
        return segments, [self.shards[s.index] for s in closed]

    def _cut(
        self, model: str, group: pl.DataFrame
    ) -> tuple[list[tuple[int, _Open, pl.Series]], list[_Open]]:
        limits = self.limits
        rows = group["row"]
        cols = ("n_bytes", "n_inputs", "est_tokens")
        sums = group.select(pl.col(c).cast(pl.Int64).cum_sum() for c in cols)
        cum = {c: _Cum(sums[c]) for c in cols}
        caps = {"n_bytes": limits.max_bytes}
        if self.embeddings:
            caps["n_inputs"] = limits.max_embedding_inputs
        if limits.max_tokens is not None:
            caps["est_tokens"] = limits.max_tokens
        parts: list[tuple[int, _Open, pl.Series]] = []
        closed: list[_Open] = []
        state = self._open.get(model)
        n = len(rows)
        start = 0
        while start < n:
            if state is None:
                state = _Open(index=-1, model=model)
            end = min(n, start + limits.max_requests - state.n_requests)
            for c, cap in caps.items():
                end = min(end, cum[c].last_fitting(start, cap - getattr(state, c)))
            if end <= start:
                # The next row does not fit the open shard: close it (check_rows
                # guarantees that one row always fits an empty shard).
                closed.append(state)
                state = None
                continue
            state.n_requests += end - start
            for c in cols:
                setattr(state, c, getattr(state, c) + cum[c].at(end) - cum[c].at(start))
            parts.append((int(rows[start]), state, rows.slice(start, end - start)))
            start = end
        if state is not None:
            self._open[model] = state
        return parts, closed

    def finish(self) -> list[Shard]:
        """Close every open shard; return all shards, by number."""
        self._open.clear()
        return list(self.shards)


def plan_whole(
    frame: pl.DataFrame, limits: BatchLimits, *, embeddings: bool
) -> tuple[list[Segment], list[Shard]]:
    """Cut a whole requests frame into shards: the rows of each, and the shards by number.

    Parameters
    ----------
    frame
        Columns ``custom_id``, ``model``, ``n_bytes``, ``n_inputs``, ``est_tokens``.
    limits
        The limits each shard must respect.
    embeddings
        Whether ``max_embedding_inputs`` applies (``/v1/embeddings``).
    """
    planner = ShardPlanner(limits, embeddings)
    segments, _ = planner.feed(frame)
    return segments, planner.finish()


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
        schema=PLAN_SCHEMA,
    )


__all__ = [
    "PLAN_SCHEMA",
    "Segment",
    "Shard",
    "ShardPlanner",
    "check_rows",
    "plan_frame",
    "plan_whole",
]
