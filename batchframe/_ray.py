"""Ray Data as an engine: a ``ray.data.Dataset``'s blocks built on Ray's workers.

Each block is one partition: ``map_batches`` with ``batch_size=None`` hands it whole to
a batchframe function as Arrow (read by Polars without a copy), and the small result
travels back pickled in a one-row table. Ids are counted with Ray's ``groupby``. See
``_cluster`` for what the tasks do.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

__all__ = ["RayEngine"]

_LABEL = "a block of the ray.data.Dataset"
#: Ray Data re-raises a task's error as text only: a batchframe error travels inside
#: that text, pickled, between two of these marks, and is raised again on the driver.
_MARK = "<<batchframe-error:"


class _Carried(RuntimeError):
    """A batchframe error raised in a Ray Data task, pickled into the message."""


def _carry(fn: Callable[..., Any], *args: Any) -> Any:
    from batchframe.exceptions import BatchframeError

    try:
        return fn(*args)
    except BatchframeError as exc:
        blob = base64.b64encode(pickle.dumps(exc)).decode()
        msg = f"{_MARK}{blob}>>"
        raise _Carried(msg) from None


def _raise_carried(exc: BaseException) -> None:
    """Raise the batchframe error carried in a Ray error's text, if there is one."""
    text = str(exc)
    start = text.find(_MARK)
    if start < 0:
        return
    start += len(_MARK)
    err = pickle.loads(base64.b64decode(text[start : text.index(">>", start)]))
    raise err from None


def _frame(table: Any) -> pl.DataFrame:
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out


class RayEngine:
    """A ``ray.data.Dataset`` seen through the ``_cluster.Engine`` protocol."""

    kind = "ray.data.Dataset"

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def columns(self) -> list[str]:
        """Column names of the dataset."""
        return list(self.ds.schema().names)

    def arrow_schema(self) -> Any:
        """The dataset's schema as Arrow (as its blocks are read through Polars)."""
        import pyarrow as pa

        schema = self.ds.schema()
        empty = pa.schema(list(zip(schema.names, schema.types, strict=True))).empty_table()
        return _frame(empty).to_arrow().schema

    def batches(self, columns: list[str] | None) -> Iterator[Any]:
        """Blocks as Arrow tables, read on the driver."""
        ds = self.ds if columns is None else self.ds.select_columns(columns)
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield _frame(table).to_arrow()

    def map_partitions(
        self, fn: Callable[[pl.DataFrame, str], Any], columns: list[str]
    ) -> list[Any]:
        """``fn(block, label)`` for every block, in Ray's workers; the results."""
        import pyarrow as pa

        def udf(table: Any) -> Any:
            result = _carry(fn, _frame(table), _LABEL)
            return pa.table({"result": pa.array([pickle.dumps(result)], pa.binary())})

        out = self.ds.select_columns(columns).map_batches(
            udf, batch_size=None, batch_format="pyarrow", zero_copy_batch=True
        )
        try:
            rows = out.take_all()
        except Exception as exc:
            _raise_carried(exc)
            raise
        return [pickle.loads(row["result"]) for row in rows]

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn(item)`` as Ray tasks; results in order."""
        import ray

        remote = ray.remote(fn)
        return list(ray.get([remote.remote(x) for x in items]))

    def repeated(
        self, ids: Callable[[pl.DataFrame, str], pl.Series], columns: list[str], shown: int
    ) -> tuple[int, list[str]]:
        """Ids that occur more than once, counted by Ray's ``groupby`` (a shuffle)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        def as_ids(table: Any) -> Any:
            s = _carry(ids, _frame(table), _LABEL)
            return pa.table({"custom_id": s.to_arrow().cast(pa.large_string())})

        def repeated_only(table: Any) -> Any:
            return table.filter(pc.greater(table["count()"], 1))

        try:
            dup = (
                self.ds.select_columns(columns)
                .map_batches(as_ids, batch_size=None, batch_format="pyarrow")
                .groupby("custom_id")
                .count()
                .map_batches(repeated_only, batch_format="pyarrow")
                .materialize()
            )
        except Exception as exc:
            _raise_carried(exc)
            raise
        return int(dup.count()), [str(r["custom_id"]) for r in dup.take(shown)]
