"""Ray Data as an engine, on a local Ray instance with two CPUs (worker processes)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

ray = pytest.importorskip("ray")
ray_data = pytest.importorskip("ray.data")

import engine_cases  # noqa: E402

import batchframe as bf  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # Ray warns about its own deprecated settings, as it reads them.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray").setLevel(logging.WARNING)  # its DEBUG records cost time here
    ctx = ray_data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def to_ray(df: pl.DataFrame, n: int) -> Any:
    return ray_data.from_arrow(df.to_arrow()).repartition(n)


def read_ray(ds: bf.ResultsDataset) -> pl.DataFrame:
    table = ray_data.read_parquet(ds.paths, filesystem=ds.filesystem).to_arrow_refs()
    return pl.concat([pl.from_arrow(t) for t in ray.get(table)])  # type: ignore[misc]


def test_job(local_ray: None, tmp_path: Path) -> None:
    engine_cases.check_job(to_ray, read_ray, tmp_path)


def test_refusals(local_ray: None, tmp_path: Path) -> None:
    engine_cases.check_refusals(to_ray, tmp_path)


def test_requests_api(local_ray: None) -> None:
    engine_cases.check_requests_api(to_ray)
