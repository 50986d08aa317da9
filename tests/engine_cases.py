"""Checks shared by the Ray and Dask engine tests: the same invariants as one machine.

``to_engine(df, n)`` turns a Polars frame into the engine's input with ``n`` partitions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

import batchframe as bf

ToEngine = Callable[[pl.DataFrame, int], Any]
ReadWithEngine = Callable[[bf.ResultsDataset], pl.DataFrame]

BODY = bf.chat_body(pl.col("model"), user=pl.col("text"))
LIMITS = bf.BatchLimits(max_requests=100)


def table(n: int = 1000) -> pl.DataFrame:
    """Two models interleaved, so every partition leaves one partial shard per model."""
    return pl.DataFrame(
        {
            "id": [f"r{i:05d}" for i in range(n)],
            "text": [f"review number {i} " + "x" * (i % 37) for i in range(n)],
            "model": ["gpt-4o-mini" if i % 2 else "gpt-4.1-nano" for i in range(n)],
        }
    )


def build(frame: Any) -> bf.Requests:
    return bf.build_requests(frame, endpoint="/v1/chat/completions", body=BODY, custom_id="id")


def shard_lines(root: Path, manifest: dict[str, Any]) -> list[list[dict[str, Any]]]:
    return [
        [orjson.loads(x) for x in (root / r["path"]).read_bytes().splitlines()]
        for r in manifest["records"]
        if r["attempt"] == 0
    ]


def check_job(to_engine: ToEngine, read: ReadWithEngine, tmp_path: Path) -> None:
    """Workers write the shards; the job settles every row once; resume needs no new batch.

    The published results read back with the engine (``bf.results_dataset``) are the
    rows ``scan_results`` gives.
    """
    df = table()
    requests = build(to_engine(df, 4))
    assert requests.streamed
    root = tmp_path / "job"
    single = build(df).plan(LIMITS)
    with bf.LocalBatchServer(failure_rate=0.05, seed=3) as server:
        job = bf.BatchJob.create(requests, root, limits=LIMITS, client=server.client())
        pids = set(requests._stream.worker_pids)  # type: ignore[union-attr]
        assert pids and os.getpid() not in pids, "shards must be written by the workers"
        manifest = orjson.loads((root / "manifest.json").read_bytes())
        shards = shard_lines(root, manifest)
        # Full shards from each partition, the leftovers packed: here as many as one machine.
        assert len(shards) == single.height
        ids = [line["custom_id"] for lines in shards for line in lines]
        assert sorted(ids) == df["id"].to_list()
        for lines, rec in zip(shards, manifest["records"], strict=True):
            assert len(lines) == rec["n_requests"] <= LIMITS.max_requests
            assert {line["body"]["model"] for line in lines} == {rec["model"]}
            assert (root / rec["path"]).stat().st_size == rec["n_bytes"]
        assert manifest["n_requests"] == df.height
        assert manifest["fingerprint"] == requests.fingerprint
        with job:
            job.submit()
            job.wait(poll_interval=0.02)
            results = job.collect()
        ok, failed = results.ok, results.failed
        assert ok.height + failed.height == df.height
        assert set(ok["custom_id"]).isdisjoint(set(failed["custom_id"]))
        assert set(ok["custom_id"]) | set(failed["custom_id"]) == set(df["id"])
        for part, expected in (("ok", ok), ("failed", failed)):
            ds = bf.results_dataset(root, part=part)  # type: ignore[arg-type]
            assert bf.scan_results(root, part=part).collect().equals(expected)
            if not ds.paths:
                assert expected.is_empty()
                continue
            got = read(ds).select(expected.columns)
            assert got.sort("custom_id").equals(expected.sort("custom_id"), null_equal=True)
        n_batches = len(server.batches())
        # The same rows, partitioned otherwise or in memory: the same job, nothing new.
        for frame in (to_engine(df, 3), df):
            again = bf.run(
                frame,
                root,
                endpoint="/v1/chat/completions",
                body=BODY,
                custom_id="id",
                client=server.client(),
                poll_interval=0.02,
            )
            assert again.ok.height == ok.height
        assert len(server.batches()) == n_batches
        # Other rows are refused.
        with pytest.raises(bf.JobExistsError, match="other requests"):
            bf.run(
                df.head(999),
                root,
                endpoint="/v1/chat/completions",
                body=BODY,
                custom_id="id",
                client=server.client(),
            )


def check_refusals(to_engine: ToEngine, tmp_path: Path) -> None:
    """Repeated ids across partitions and bad rows are refused; nothing is left written."""
    df = table(200)
    dup = df.with_columns(
        pl.when(pl.col("id") == "r00150").then(pl.lit("r00003")).otherwise("id").alias("id")
    )
    with pytest.raises(bf.DuplicateCustomIdError, match=r"1 id\(s\).*r00003.*across partitions"):
        bf.BatchJob.create(build(to_engine(dup, 2)), tmp_path / "dup", limits=LIMITS)
    assert not list((tmp_path / "dup").rglob("*.jsonl"))
    null = df.with_columns(
        pl.when(pl.col("id") == "r00150").then(None).otherwise("text").alias("text")
    )
    with pytest.raises(bf.NullValueError, match=r"in (partition|a block).*rows counted"):
        bf.BatchJob.create(build(to_engine(null, 2)), tmp_path / "null", limits=LIMITS)
    assert not list((tmp_path / "null").rglob("*.jsonl"))
    with pytest.raises(bf.InputError, match="need `custom_id`"):
        bf.build_requests(to_engine(df, 2), endpoint="/v1/chat/completions", body=BODY)


def check_requests_api(to_engine: ToEngine) -> None:
    """len, plan and frame of engine requests agree with one machine's."""
    df = table(300)
    requests = build(to_engine(df, 3))
    single = build(df)
    assert len(requests) == 300
    assert requests.plan()["n_requests"].sum() == 300  # the planning pass len() ran
    assert requests.frame.sort("custom_id").equals(single.frame.sort("custom_id"))
    assert single.matches(requests.fingerprint)
    assert requests.matches(single.fingerprint)
