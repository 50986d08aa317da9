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


@pytest.fixture(params=[_as_frame, _as_lazy, _as_arrow], ids=["DataFrame", "LazyFrame", "Table"])
def constructor(request: pytest.FixtureRequest) -> Callable[[pl.DataFrame], Any]:
    """Run a test body once per accepted input type (narwhals style)."""
    fn: Callable[[pl.DataFrame], Any] = request.param
    return fn
