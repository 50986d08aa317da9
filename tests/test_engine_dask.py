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
from test_job_s3 import moto, s3  # noqa: E402, F401  (the moto server fixtures)

import batchframe as bf  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
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


def test_job_on_s3(client: Any, moto: Any, s3: dict[str, Any]) -> None:  # noqa: F811
    """The workers write shards straight into an s3:// root (moto server); results read back."""
    import os

    df = engine_cases.table(750)
    requests = engine_cases.build(to_dask(df, 3))
    root = "s3://jobs/dask-engine"
    with (
        bf.LocalBatchServer() as server,
        bf.BatchJob.create(
            requests, root, limits=engine_cases.LIMITS, client=server.client(), storage_options=s3
        ) as job,
    ):
        pids = set(requests._stream.worker_pids)  # type: ignore[union-attr]
        assert pids and os.getpid() not in pids
        # 3 partitions of 125 rows per model: 6 full shards, and 6 leftovers of 25
        # packed (concatenated on S3 by two tasks) into 2: as many as one machine.
        assert len(job.status()) == engine_cases.build(df).plan(engine_cases.LIMITS).height
        job.submit()
        job.wait(poll_interval=0.02)
        results = job.collect()
    assert results.ok.height == df.height
    ds = bf.results_dataset(root, storage_options=s3)
    assert (
        read_dask(ds)
        .sort("custom_id")["custom_id"]
        .equals(results.ok.sort("custom_id")["custom_id"])
    )


def test_dask_executor_runs_uploads_and_downloads(client: Any, tmp_path: Path) -> None:
    """``executor=client.get_executor()``: the per-shard API calls run on the workers."""
    df = engine_cases.table(300)
    # The workers' own environment holds the key: it never travels with a task.
    client.run(exec, "import os; os.environ['OPENAI_API_KEY'] = 'sk-worker'")
    with bf.LocalBatchServer() as server, distributed.get_task_stream(client) as tasks:
        results = bf.run(
            df,
            tmp_path / "job",
            endpoint="/v1/chat/completions",
            body=engine_cases.BODY,
            custom_id="id",
            client=server.client(),
            executor=client.get_executor(pure=False),
            limits=engine_cases.LIMITS,
            poll_interval=0.02,
        )
    assert results.ok.height == df.height
    names = {str(t["key"]).split("-")[0] for t in tasks.data}
    assert {"upload", "download", "write_shard"} <= names, names
