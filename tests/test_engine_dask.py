"""Dask as an engine, on a ``dask.distributed.LocalCluster`` of two worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import engine_cases  # noqa: E402

import batchframe as bf  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def to_dask(df: pl.DataFrame, n: int) -> Any:
    import dask.dataframe as dd

    return dd.from_pandas(df.to_pandas(), npartitions=n, sort=False)


def read_dask(ds: bf.ResultsDataset) -> pl.DataFrame:
    import dask.dataframe as dd

    return pl.from_pandas(dd.read_parquet(ds.paths, filesystem=ds.filesystem).compute())


def test_job(client: Any, tmp_path: Path) -> None:
    engine_cases.check_job(to_dask, read_dask, tmp_path)


def test_refusals(client: Any, tmp_path: Path) -> None:
    engine_cases.check_refusals(to_dask, tmp_path)


def test_requests_api(client: Any) -> None:
    engine_cases.check_requests_api(to_dask)
