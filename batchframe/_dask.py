"""Dask as an engine: a ``dask.dataframe.DataFrame``'s partitions built on its workers.

Work is handed to Dask as ``dask.delayed`` tasks over the frame's partitions, so it runs
on the active ``dask.distributed`` client when there is one (else on Dask's local
scheduler). Each partition reaches batchframe as a Polars frame (``pl.from_pandas``).
See ``_cluster`` for what the tasks do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

__all__ = ["DaskEngine"]


def _label(i: int) -> str:
    return f"partition {i} of the dask.DataFrame"


def _call(fn: Callable[[pl.DataFrame, str], Any], pdf: Any, label: str) -> Any:
    return fn(pl.from_pandas(pdf), label)


class DaskEngine:
    """A ``dask.dataframe.DataFrame`` seen through the ``_cluster.Engine`` protocol."""

    kind = "dask.DataFrame"

    def __init__(self, ddf: Any) -> None:
        self.ddf = ddf

    def columns(self) -> list[str]:
        """Column names of the frame."""
        return [str(c) for c in self.ddf.columns]

    def arrow_schema(self) -> Any:
        """The frame's schema as Arrow (through Polars, as its partitions are read)."""
        return pl.from_pandas(self.ddf._meta).to_arrow().schema

    def batches(self, columns: list[str] | None) -> Iterator[Any]:
        """Partitions one at a time, computed and read on the driver."""
        ddf = self.ddf if columns is None else self.ddf[columns]
        for i in range(ddf.npartitions):
            yield pl.from_pandas(ddf.partitions[i].compute()).to_arrow()

    def map_partitions(
        self, fn: Callable[[pl.DataFrame, str], Any], columns: list[str]
    ) -> list[Any]:
        """``fn(partition, label)`` as one Dask task per partition; results in order."""
        import dask

        parts = self.ddf[columns].to_delayed()
        tasks = [dask.delayed(_call)(fn, p, _label(i)) for i, p in enumerate(parts)]
        return list(dask.compute(*tasks))

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn(item)`` as Dask tasks; results in order."""
        import dask

        return list(dask.compute(*[dask.delayed(fn)(x) for x in items]))

    def repeated(
        self, ids: Callable[[pl.DataFrame, str], pl.Series], columns: list[str], shown: int
    ) -> tuple[int, list[str]]:
        """Ids that occur more than once, counted by Dask's ``value_counts`` (a shuffle)."""
        import dask

        def part(pdf: Any, partition_info: dict[str, Any] | None = None) -> Any:
            i = partition_info["number"] if partition_info else 0
            return ids(pl.from_pandas(pdf), _label(i)).to_pandas()

        frame = self.ddf[columns]
        meta = ids(pl.from_pandas(frame._meta), "the schema").to_pandas()
        counts = frame.map_partitions(part, meta=meta).value_counts(
            split_out=max(1, frame.npartitions // 8)
        )
        dup = counts[counts > 1]
        n, head = dask.compute(dup.size, dup.head(shown, npartitions=-1, compute=False))
        return int(n), [str(v) for v in head.index]
