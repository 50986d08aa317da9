"""bf.read_results / bf.scan_results: a job's results from its root alone, eager and lazy."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import BaseModel

import batchframe as bf
from batchframe import _read
from batchframe._manifest import Manifest
from batchframe._storage import Storage

POLL = 0.02


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"text number {i}" for i in range(n)]}
    )


def _chat(n: int, **body: Any) -> bf.Requests:
    return bf.build_requests(
        _frame(n),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), **body),
        custom_id="id",
    )


def _embeddings(n: int, **body: Any) -> bf.Requests:
    return bf.build_requests(
        _frame(n),
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("text-embedding-3-small", input=pl.col("text"), **body),
        custom_id="id",
    )


def _settle(
    server: bf.LocalBatchServer, req: bf.Requests, root: str, **options: Any
) -> bf.BatchResults:
    options.setdefault("limits", bf.BatchLimits(max_requests=10))
    with bf.BatchJob.create(req, root, client=server.client(), **options) as job:
        job.wait(poll_interval=POLL)
        return job.collect()


def _assert_same(a: bf.BatchResults, b: bf.BatchResults) -> None:
    assert_frame_equal(a.ok, b.ok)
    assert_frame_equal(a.failed, b.failed)
    assert a.batches is not None and b.batches is not None
    assert_frame_equal(a.batches, b.batches)
    assert a.endpoint == b.endpoint


def _forbid_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, building an API client fails the test."""
    from batchframe import _api

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a client was built")

    monkeypatch.setattr(_api, "make_client", refuse)


@pytest.fixture
def no_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading results must never build an API client."""
    _forbid_clients(monkeypatch)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = tmp_path / "mirror"
    monkeypatch.setattr(_read, "_mirror_dir", lambda job_id: base / job_id)
    yield base


@pytest.fixture(scope="module")
def settled_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bf.BatchResults]:
    """A chat job with final failures and retried rows, settled once for the module."""
    root = str(tmp_path_factory.mktemp("read") / "job")
    with bf.LocalBatchServer(failure_rate=0.25, seed=21) as server:
        results = _settle(server, _chat(60), root, max_attempts=2)
    assert results.failed.height > 0
    return root, results


def test_read_results_equals_collect(
    settled_job: tuple[str, bf.BatchResults], no_client: None
) -> None:
    root, collected = settled_job
    results = bf.read_results(root)
    _assert_same(results, collected)
    ok, failed = set(results.ok["custom_id"]), set(results.failed["custom_id"])
    assert ok.isdisjoint(failed) and len(ok) + len(failed) == 60
    assert (results.failed["attempts"] == 2).any()  # some rows were retried, then kept
    status = Manifest.load(Storage(root)).records
    assert any(r.attempt == 1 for r in status)


def test_scan_results_is_lazy_and_matches(
    settled_job: tuple[str, bf.BatchResults], no_client: None
) -> None:
    root, collected = settled_job
    lf = bf.scan_results(root)
    assert isinstance(lf, pl.LazyFrame)
    assert "parquet" in lf.explain().lower()
    assert_frame_equal(lf.collect(), collected.ok)
    assert_frame_equal(bf.scan_results(root, part="failed").collect(), collected.failed)
    assert collected.batches is not None
    assert_frame_equal(bf.scan_results(root, part="batches").collect(), collected.batches)
    # Filters and projections run in the scan.
    some = lf.filter(pl.col("custom_id").is_in(["r1", "r2", "r3"])).select("custom_id", "content")
    expected = collected.ok.filter(pl.col("custom_id").is_in(["r1", "r2", "r3"]))
    assert_frame_equal(some.collect(), expected.select("custom_id", "content"))
    # The rows are published beside the job, one file per settled attempt and part.
    keys = {r.key for r in Manifest.load(Storage(root)).records}
    for part in ("ok", "failed"):
        names = sorted(p.name for p in (Path(root) / "results" / part).iterdir())
        assert names and {n.removesuffix(".parquet") for n in names} <= keys
    with pytest.raises(ValueError, match="`part` must be one of"):
        bf.scan_results(root, part="everything")  # type: ignore[arg-type]


def test_missing_caches_are_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.1, seed=22) as server:
        collected = _settle(server, _chat(30), str(root))
    _forbid_clients(monkeypatch)
    shutil.rmtree(root / "results")
    _assert_same(bf.read_results(str(root)), collected)
    assert list((root / "results").iterdir())
    shutil.rmtree(root / "results")
    assert_frame_equal(bf.scan_results(str(root)).collect(), collected.ok)


def _sources(root: Path) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    return {
        str(p.relative_to(root)): (pq.read_metadata(p).metadata or {})[b"batchframe.source"]
        for p in sorted((root / "results").glob("*/*.parquet"))
    }


def test_files_of_other_schemas_are_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchframe import _publish

    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.2, seed=30) as server:
        collected = _settle(server, _chat(20), str(root), max_attempts=1)
    before = _sources(root)
    # Another batchframe would parse into other columns: its files must be rebuilt.
    monkeypatch.setattr(_publish, "_CACHE_VERSION", _publish._CACHE_VERSION + 1)
    _assert_same(bf.read_results(str(root)), collected)
    after = _sources(root)
    assert set(before) == set(after) and all(before[k] != after[k] for k in before)
    assert_frame_equal(bf.scan_results(str(root), part="failed").collect(), collected.failed)
    assert _sources(root) == after  # fresh files are not rewritten


def test_not_settled_and_partial(tmp_path: Path) -> None:
    root = str(tmp_path / "job")
    with (
        bf.LocalBatchServer(validation_seconds=30) as slow,
        bf.BatchJob.create(_chat(5), root, client=slow.client()) as job,
    ):
        job.submit()
        with pytest.raises(bf.JobNotSettledError, match="partial=True"):
            bf.read_results(root)
        with pytest.raises(bf.JobNotSettledError):
            bf.scan_results(root)
        partial = bf.read_results(root, partial=True)
        assert partial.ok.height == 0 and partial.failed.height == 0
        assert partial.ok.schema == job.collect(partial=True).ok.schema
        lf = bf.scan_results(root, partial=True)
        assert lf.collect().height == 0
        assert lf.collect_schema() == partial.ok.schema
    with pytest.raises(bf.JobNotFoundError):
        bf.read_results(str(tmp_path / "nothing"))


def test_remote_root_is_scanned_from_a_local_copy(memfs: Any, mirror: Path) -> None:
    root = "memory://jobs/remote"
    with bf.LocalBatchServer(seed=23) as server:
        collected = _settle(server, _chat(25), root)
    assert memfs.ls("/jobs/remote/results")
    _assert_same(bf.read_results(root), collected)
    assert_frame_equal(bf.scan_results(root).collect(), collected.ok)
    copies = list(mirror.rglob("*.parquet"))
    assert len(copies) == 3  # the ok parts of three shards; no failures to copy
    assert_frame_equal(bf.scan_results(root).collect(), collected.ok)  # copied once
    assert len(list(mirror.rglob("*"))) == len(copies) + 1


def test_root_that_cannot_be_written(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.2, seed=24) as server:
        collected = _settle(server, _chat(20), str(root), max_attempts=1)
    shutil.rmtree(root / "results")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError("read-only")

    from batchframe import _publish

    monkeypatch.setattr(_publish, "publish_outcome", refuse)
    _assert_same(bf.read_results(str(root)), collected)
    assert_frame_equal(bf.scan_results(str(root)).collect(), collected.ok)
    assert_frame_equal(bf.scan_results(str(root), part="failed").collect(), collected.failed)
    assert not (root / "results").exists()
    assert list(mirror.rglob("*.parquet"))


def test_embedding_width_from_the_bodies(tmp_path: Path) -> None:
    root = str(tmp_path / "job")
    with bf.LocalBatchServer(failure_rate=1.0, seed=25) as server:
        results = _settle(server, _embeddings(6, dimensions=8), root, max_attempts=1)
    assert Manifest.load(Storage(root)).embedding_dims == {"text-embedding-3-small": 8}
    # Not a single vector came back, yet the column has the job's width.
    assert results.ok.height == 0 and results.failed.height == 6
    assert results.ok.schema["embedding"] == pl.Array(pl.Float32, 8)
    assert bf.read_results(root).ok.schema["embedding"] == pl.Array(pl.Float32, 8)
    assert bf.scan_results(root).collect_schema()["embedding"] == pl.Array(pl.Float32, 8)


def test_embedding_width_from_the_first_vector(tmp_path: Path) -> None:
    root = str(tmp_path / "job")
    with bf.LocalBatchServer(seed=26) as server:
        results = _settle(server, _embeddings(12), root, limits=bf.BatchLimits(max_requests=5))
    dims = Manifest.load(Storage(root)).embedding_dims
    assert list(dims) == ["text-embedding-3-small"]
    width = dims["text-embedding-3-small"]
    assert results.ok.schema["embedding"] == pl.Array(pl.Float32, width)
    assert_frame_equal(bf.scan_results(root).collect(), results.ok)


class Label(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float


def test_structured_outputs_survive_the_cache(tmp_path: Path) -> None:
    root = str(tmp_path / "job")
    with bf.LocalBatchServer(seed=27) as server:
        results = _settle(server, _chat(8, response_format=Label), root)
    parsed = results.ok.schema["parsed"]
    assert isinstance(parsed, pl.Struct)
    assert_frame_equal(bf.read_results(root).ok, results.ok)
    assert bf.scan_results(root).collect_schema()["parsed"] == parsed
    labels = bf.scan_results(root).select(pl.col("parsed").struct.field("label")).collect()
    assert labels.height == 8


def _track(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[int]:
    """Wrap ``module.record_outcome`` to record how many calls run at once."""
    inner = module.record_outcome
    lock = threading.Lock()
    running = [0]
    peaks: list[int] = []

    def tracked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            peaks.append(running[0])
        try:
            time.sleep(0.02)
            return inner(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(module, "record_outcome", tracked)
    return peaks


def test_shards_are_parsed_one_or_two_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from batchframe import _engine

    root = tmp_path / "job"
    settling = _track(monkeypatch, _engine)
    with (
        ThreadPoolExecutor(max_workers=8) as pool,
        bf.LocalBatchServer(seed=28) as server,
        bf.BatchJob.create(
            _chat(40),
            str(root),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=4),
            executor=pool,
        ) as job,
    ):
        job.submit()
        server.wait_idle(timeout=10)  # all ten batches finish before the first poll
        job.wait(poll_interval=POLL)
        shutil.rmtree(root / "results")
        from batchframe import _publish

        reading = _track(monkeypatch, _publish)
        results = job.collect()
    assert results.ok.height == 40
    assert len(settling) == 10 and max(settling) <= _read.READ_WINDOW
    assert len(reading) == 10 and max(reading) <= _read.READ_WINDOW


def test_to_duckdb_writes_the_batches_table(tmp_path: Path) -> None:
    root = str(tmp_path / "job")
    with bf.LocalBatchServer(failure_rate=0.1, seed=29) as server:
        with bf.BatchJob.create(
            _chat(30), root, client=server.client(), limits=bf.BatchLimits(max_requests=10)
        ) as job:
            job.wait(poll_interval=POLL)
            status = job.status()
        remote = {b["id"]: b for b in server.batches_created()}
    results = bf.read_results(root)
    con = duckdb.connect(str(tmp_path / "r.duckdb"))
    results.to_duckdb(con, table="reviews")
    results.to_duckdb(con, table="reviews")  # idempotent
    types = dict(
        con.execute("SELECT column_name, column_type FROM (DESCRIBE reviews_batches)").fetchall()
    )
    assert types["batch_id"] == "VARCHAR" and types["total"] == "BIGINT"
    assert types["input_tokens"] == "BIGINT" and types["created_at"].startswith("TIMESTAMP")
    assert "NULL" not in types.values()
    rows = con.execute(
        "SELECT batch_id, input_file_id, output_file_id, error_file_id, status, total, "
        "completed, failed, input_tokens, output_tokens, total_tokens, "
        "created_at, completed_at FROM reviews_batches ORDER BY shard, attempt"
    ).fetchall()
    assert [r[0] for r in rows] == status["batch_id"].drop_nulls().to_list()
    assert len(rows) == len(remote)
    for (
        batch_id,
        in_id,
        out_id,
        err_id,
        st,
        total,
        done,
        failed,
        inp,
        out,
        tot,
        made,
        ended,
    ) in rows:
        b = remote[batch_id]
        assert (in_id, out_id, err_id, st) == (
            b["input_file_id"],
            b["output_file_id"],
            b["error_file_id"],
            b["status"],
        )
        counts = b["request_counts"]
        assert (total, done, failed) == (counts["total"], counts["completed"], counts["failed"])
        assert (inp, out, tot) == (
            b["usage"]["input_tokens"],
            b["usage"]["output_tokens"],
            b["usage"]["total_tokens"],
        )
        assert inp > 0
        assert int(made.timestamp()) == b["created_at"]
        assert int(ended.timestamp()) == b["completed_at"]
    n_ok, n_failed = con.execute(
        "SELECT (SELECT count(*) FROM reviews), (SELECT count(*) FROM reviews_failed)"
    ).fetchone() or (0, 0)
    assert n_ok + n_failed == 30
    con.close()
