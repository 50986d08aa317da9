"""A job whose root is an s3:// URL, served by moto's standalone server over loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest

import batchframe as bf
from batchframe._manifest import LOCK_FILE, acquire_lock
from batchframe._storage import Storage

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="y",
            region_name="us-east-1",
        ).create_bucket(Bucket="jobs")
        yield {"client_kwargs": {"endpoint_url": endpoint}, "key": "x", "secret": "y"}
    finally:
        server.stop()


def test_job_on_s3(s3: dict[str, Any]) -> None:
    import s3fs

    df = pl.DataFrame({"id": [f"r{i}" for i in range(30)], "text": [f"t {i}" for i in range(30)]})
    root = "s3://jobs/reviews"
    with bf.LocalBatchServer(failure_rate=0.1, seed=14) as server:
        results = bf.run(
            df,
            root,
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
            custom_id="id",
            client=server.client(),
            storage_options=s3,
            limits=bf.BatchLimits(max_requests=10),
            poll_interval=0.02,
        )
        n_batches = len(server.batches())
        with bf.BatchJob.open(root, client=server.client(), storage_options=s3) as job:
            job.wait(poll_interval=0.02)  # already settled: nothing new
            assert job.is_settled
            again = job.collect()
        assert len(server.batches()) == n_batches
    assert results.ok.height + results.failed.height == 30
    assert again.ok.height == results.ok.height
    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in fs.find("jobs/reviews")}
    assert {"manifest.json", "00000.jsonl", "00000.a0.jsonl"} <= names
    assert LOCK_FILE not in names


def test_lock_on_s3(s3: dict[str, Any]) -> None:
    storage = Storage("s3://jobs/locktest", s3)
    storage.write_bytes(LOCK_FILE, b'{"host": "elsewhere", "pid": 1, "started": 0, "token": "t"}')
    with pytest.raises(bf.JobLockedError, match="elsewhere"):
        acquire_lock(storage)
    storage.delete(LOCK_FILE)
    assert storage.create_exclusive("x.json", b"1")
    assert not storage.create_exclusive("x.json", b"2")
    assert storage.read_bytes("x.json") == b"1"
