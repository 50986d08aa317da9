"""Token estimates calibrated by exact counts of samples of the input (``tokenizer="auto"``).

Counting every text exactly costs 10-20x the rest of a build, and a fixed formula is off
by -30 % to +100 % depending on the kind of text. So ``"auto"`` counts *samples* exactly
and scales a cheap estimate by what they show, per template leaf:

* samples are blocks of ``CALIBRATION_ROWS`` consecutive rows starting at row 0 and at
  ``CALIBRATION_ROWS * 2**j`` (2,048, 4,096, 8,192, ...): about ``log2(rows / 2048)``
  blocks, so a 10M-row input has 13 and exact counting stays ~0.1 % of the text;
* row ``r`` is scaled by the block at or before it (block 0 for the first 2,048 rows,
  then the block starting at the largest such boundary <= ``r``), so an input whose kind
  of text changes (English first, code later) is re-calibrated as it goes;
* the blocks are defined by row positions, never by how the input happens to be chunked,
  so streamed and in-memory builds give every row the same count.

Measured on 1M benchmark rows: +0.11 % of the exact total; on a shuffled mix of eight
corpora (English, code, numbers, JSON, CJK, emoji): -0.3 %.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from batchframe._tokens import Counter

__all__ = ["CALIBRATION_ROWS", "Ratios", "block_range", "blocks_before", "leaf_ratios", "scale"]

#: Rows counted exactly per sample block.
CALIBRATION_ROWS = 2_048

#: Per sample block: exact / estimated tokens of each template leaf (None: not scaled).
Ratios = dict[int, tuple[float | None, ...]]


def _block(row: int, size: int) -> int:
    return 0 if row < size else (row // size).bit_length()


def block_range(block: int, size: int = CALIBRATION_ROWS) -> tuple[int, int]:
    """Rows ``[start, stop)`` sampled by ``block`` (the input may end before ``stop``)."""
    start = 0 if block == 0 else size << (block - 1)
    return start, start + size


def blocks_before(end: int, size: int = CALIBRATION_ROWS) -> range:
    """The blocks that rows ``[0, end)`` are scaled by."""
    return range(_block(end - 1, size) + 1) if end > 0 else range(0)


def leaf_ratios(
    texts: Sequence[pl.Series | None], estimate: Counter, exact: Counter
) -> tuple[float | None, ...]:
    """Exact / estimated tokens of each leaf's sample texts (None: no text)."""
    out: list[float | None] = []
    for text in texts:
        estimated = int(estimate(text).sum()) if text is not None else 0
        out.append(int(exact(text).sum()) / estimated if text is not None and estimated else None)
    return tuple(out)


def scale(
    counted: pl.Series, leaf: int, offset: int, ratios: Ratios, size: int = CALIBRATION_ROWS
) -> pl.Series:
    """Scale one leaf's estimates of rows ``offset ...`` by their blocks' ratios."""
    n = len(counted)
    if not n or not ratios:
        return counted
    first, last = _block(offset, size), _block(offset + n - 1, size)
    # Blocks scale contiguous runs of rows: one run of the block's factor per block.
    runs = []
    for b in range(first, last + 1):
        lo = max(block_range(b, size)[0], offset)
        hi = min(block_range(b + 1, size)[0], offset + n)
        runs.append(
            pl.Series([ratios[b][leaf] or 1.0], dtype=pl.Float64).new_from_index(0, hi - lo)
        )
    factor = runs[0] if len(runs) == 1 else pl.concat(runs)
    return (counted * factor).round().cast(pl.Int64).alias(counted.name)
