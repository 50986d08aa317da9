from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import polars as pl
import pyarrow as pa
import pytest


@pytest.fixture(autouse=True)
def _clean_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see a real key or endpoint from the developer's environment."""
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def memfs() -> Iterator[Any]:
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()


def _as_lazy(df: pl.DataFrame) -> pl.LazyFrame:
    return df.lazy()


def _as_arrow(df: pl.DataFrame) -> pa.Table:
    return df.to_arrow()


def _as_frame(df: pl.DataFrame) -> pl.DataFrame:
    return df


def _as_dataset(df: pl.DataFrame) -> Any:
    import pyarrow.dataset as ds

    # Small batches, so that a streamed build sees several chunks.
    table = df.to_arrow()
    return ds.dataset(pa.Table.from_batches(table.to_batches(max_chunksize=2), schema=table.schema))


class ArrowStream:
    """Any object with ``__arrow_c_stream__`` (as pandas, narwhals or DuckDB give)."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._table.__arrow_c_stream__(requested_schema)


def _as_stream(df: pl.DataFrame) -> ArrowStream:
    return ArrowStream(df.to_arrow())


@pytest.fixture(
    params=[_as_frame, _as_lazy, _as_arrow, _as_dataset, _as_stream],
    ids=["DataFrame", "LazyFrame", "Table", "dataset", "arrow_c_stream"],
)
def constructor(request: pytest.FixtureRequest) -> Callable[[pl.DataFrame], Any]:
    """Run a test body once per accepted input type (narwhals style)."""
    fn: Callable[[pl.DataFrame], Any] = request.param
    return fn
