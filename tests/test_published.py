"""The published dataset (results/ok, results/failed) and the bounded-memory sinks.

Real jobs on the local server over HTTP: the files under ``<root>/results/`` are the
contract for other engines, ``collect()`` equals them, and ``results_to_duckdb`` /
``job.to_duckdb`` write what ``BatchResults.to_duckdb`` writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

import batchframe as bf
from batchframe._manifest import Manifest
from batchframe._publish import cache_tag, legacy_names, part_path
from batchframe._storage import Storage, writer_tag

POLL = 0.02


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"r{i:05d}" for i in range(n)], "text": [f"text number {i}" for i in range(n)]}
    )


def _chat(n: int) -> bf.Requests:
    return bf.build_requests(
        _frame(n),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=5),
        custom_id="id",
    )


def _embeddings(n: int) -> bf.Requests:
    frame = _frame(n).with_columns(inputs=pl.concat_list(pl.col("text"), pl.lit("and another one")))
    return bf.build_requests(
        frame,
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("text-embedding-3-small", input=pl.col("inputs")),
        custom_id="id",
    )


def _run(server: bf.LocalBatchServer, req: bf.Requests, root: Path, **options: Any) -> None:
    options.setdefault("limits", bf.BatchLimits(max_requests=10))
    with bf.BatchJob.create(req, str(root), client=server.client(), **options) as job:
        job.wait(poll_interval=POLL)


def _files(root: Path, part: str) -> list[Path]:
    return sorted((root / "results" / part).iterdir())


def _check_dataset(root: Path, n_requests: int, key: list[str]) -> bf.BatchResults:
    """The published folders against collect() and the contract; return the results."""
    results = bf.read_results(str(root))
    manifest = Manifest.load(Storage(str(root)))
    keys = {r.key for r in manifest.records}
    for part, frame in (("ok", results.ok), ("failed", results.failed)):
        files = _files(root, part)
        # Only data files, one per attempt, named after it, all with one schema.
        assert all(p.suffix == ".parquet" and p.stem in keys for p in files)
        assert len({str(pq.read_schema(p).remove_metadata()) for p in files}) <= 1
        glob = str(root / "results" / part / "*.parquet")
        if files:
            assert_frame_equal(pl.read_parquet(glob), frame)
            # Each attempt's rows are its own: no key in two files (no dedup anywhere).
            seen: set[tuple[Any, ...]] = set()
            for p in files:
                rows = set(
                    pl.read_parquet(p, columns=key if part == "ok" else ["custom_id"]).rows()
                )
                assert not rows & seen
                seen |= rows
    ok_ids = set(results.ok["custom_id"])
    failed_ids = set(results.failed["custom_id"])
    assert ok_ids.isdisjoint(failed_ids) and len(ok_ids) + len(failed_ids) == n_requests
    assert results.ok.select(pl.struct(key).is_unique().all()).item()
    assert results.failed["custom_id"].is_unique().all()
    # SQL engines read the folder as is.
    glob = str(root / "results" / "ok" / "*.parquet")
    with duckdb.connect() as con:  # not the module's default connection: others use it
        (n, distinct) = con.execute(
            f"SELECT count(*), count(DISTINCT custom_id) FROM read_parquet('{glob}')"
        ).fetchall()[0]
    assert n == results.ok.height and distinct == len(ok_ids)
    return results


@pytest.fixture(scope="module")
def retried(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chat job whose rows were retried up to twice: some succeed late, some never."""
    root = tmp_path_factory.mktemp("published") / "job"
    with bf.LocalBatchServer(failure_rate=0.35, seed=41) as server:
        _run(server, _chat(80), root, max_attempts=3)
    return root


def test_published_dataset_equals_collect_with_retries(retried: Path) -> None:
    results = _check_dataset(retried, 80, ["custom_id"])
    with bf.BatchJob.open(str(retried)) as job:
        collected = job.collect()
    assert_frame_equal(collected.ok, results.ok)
    assert_frame_equal(collected.failed, results.failed)
    # Retries resolved: rows that succeeded in attempt 1 or 2 are only there, and the
    # failures kept are those of the last attempt.
    manifest = Manifest.load(Storage(str(retried)))
    assert any(r.attempt == 2 for r in manifest.records)
    late = {p.stem for p in _files(retried, "ok") if not p.stem.endswith(".a0")}
    assert late
    assert set(results.failed["attempts"]) == {3}
    # Lazy scans are plain scans of those files.
    assert_frame_equal(bf.scan_results(str(retried)).collect(), results.ok)


def test_results_to_duckdb_equals_batchresults_to_duckdb(retried: Path, tmp_path: Path) -> None:
    results = bf.read_results(str(retried))
    eager = duckdb.connect(str(tmp_path / "eager.duckdb"))
    results.to_duckdb(eager, table="t")
    streamed = str(tmp_path / "streamed.duckdb")
    bf.results_to_duckdb(str(retried), streamed, table="t")
    bf.results_to_duckdb(str(retried), streamed, table="t")  # idempotent
    with bf.BatchJob.open(str(retried)) as job:
        job.to_duckdb(str(tmp_path / "job.duckdb"), table="t")
    for path in (streamed, str(tmp_path / "job.duckdb")):
        con = duckdb.connect(path, read_only=True)
        for name, key in (("t", "custom_id"), ("t_failed", "custom_id"), ("t_batches", "batch_id")):
            describe = f"SELECT column_name, column_type FROM (DESCRIBE {name})"
            assert con.execute(describe).fetchall() == eager.execute(describe).fetchall()
            rows = f"SELECT * FROM {name} ORDER BY {key}"
            assert con.execute(rows).fetchall() == eager.execute(rows).fetchall()
        pk = (
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'PRIMARY KEY' ORDER BY 1"
        )
        assert con.execute(pk).fetchall() == eager.execute(pk).fetchall()
        con.close()


def test_results_to_duckdb_upserts_like_to_duckdb(tmp_path: Path) -> None:
    """A second job into the same tables: upserted, not replaced; user indexes survive."""
    with bf.LocalBatchServer(failure_rate=0.3, seed=42) as server:
        _run(server, _chat(30), tmp_path / "a", max_attempts=1)
        _run(server, _chat(40), tmp_path / "b", max_attempts=1)
    db = str(tmp_path / "r.duckdb")
    eager = duckdb.connect()
    for name in ("a", "b"):
        bf.read_results(str(tmp_path / name)).to_duckdb(eager, table="t")
        bf.results_to_duckdb(str(tmp_path / name), db, table="t")
        if name == "a":
            with duckdb.connect(db) as con:
                con.execute("CREATE INDEX t_finish ON t (finish_reason)")
                con.execute("CREATE VIEW answers AS SELECT custom_id, content FROM t")
    with duckdb.connect(db) as con:
        for name in ("t", "t_failed"):
            rows = f"SELECT * FROM {name} ORDER BY custom_id"
            assert con.execute(rows).fetchall() == eager.execute(rows).fetchall()
        assert con.execute("SELECT count(*) FROM answers").fetchone() == (
            con.execute("SELECT count(*) FROM t").fetchone()
        )
        names = con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()
        assert ("t_finish",) in names


def test_results_to_duckdb_from_a_remote_root(memfs: Any, tmp_path: Path) -> None:
    root = "memory://jobs/published"
    with (
        bf.LocalBatchServer(failure_rate=0.2, seed=43) as server,
        bf.BatchJob.create(
            _chat(30), root, client=server.client(), limits=bf.BatchLimits(max_requests=10)
        ) as job,
    ):
        job.wait(poll_interval=POLL)
    assert memfs.ls("/jobs/published/results/ok")
    con = duckdb.connect()
    bf.results_to_duckdb(root, con, table="t")
    results = bf.read_results(root)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (results.ok.height,)
    assert con.execute("SELECT count(*) FROM t_failed").fetchone() == (results.failed.height,)
    assert "memory" not in con.list_filesystems()  # registered only while writing


def test_cancelled_job_publishes_its_finished_rows(tmp_path: Path) -> None:
    root = tmp_path / "job"
    req = _chat(60)
    with (
        bf.LocalBatchServer(requests_per_second=30, seed=44) as server,
        bf.BatchJob.create(
            req,
            str(root),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=20),
            max_in_flight=2,
        ) as job,
    ):
        job.submit()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and job.status()["completed"].sum() < 5:
            job.refresh()
            time.sleep(POLL)
        job.cancel(poll_interval=POLL)
    results = _check_dataset(root, 60, ["custom_id"])
    assert results.ok.height >= 5
    assert set(results.failed["stage"]) == {"cancelled"}


def test_embeddings_one_row_per_vector_and_one_width(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.3, seed=45) as server:
        _run(server, _embeddings(24), root, max_attempts=2, limits=bf.BatchLimits(max_requests=6))
    results = _check_dataset(root, 24, ["custom_id", "index"])
    width = Manifest.load(Storage(str(root))).embedding_dims["text-embedding-3-small"]
    assert results.ok.schema["embedding"] == pl.Array(pl.Float32, width)
    assert results.ok.height == 2 * results.ok["custom_id"].n_unique()
    for p in _files(root, "ok"):
        assert pl.read_parquet_schema(p)["embedding"] == pl.Array(pl.Float32, width)
    glob = str(root / "results" / "ok" / "*.parquet")
    with duckdb.connect() as con:
        (dtype,) = con.execute(
            f"SELECT typeof(embedding) FROM read_parquet('{glob}') LIMIT 1"
        ).fetchall()[0]
    assert dtype == "FLOAT[]"  # Parquet has no fixed-size list; Arrow readers get the width
    db = str(tmp_path / "e.duckdb")
    bf.results_to_duckdb(str(root), db, table="docs")
    with duckdb.connect(db) as con:
        assert con.execute("SELECT count(*) FROM docs").fetchone() == (results.ok.height,)
        (typed,) = con.execute("SELECT typeof(embedding) FROM docs LIMIT 1").fetchone() or ("",)
        assert typed == f"FLOAT[{width}]"


def test_old_layout_caches_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job of batchframe 0.1: caches at results/<key>.<settled>.<tag>.<part>.parquet."""
    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.3, seed=46) as server:
        _run(server, _chat(40), root, max_attempts=2)
    expected = bf.read_results(str(root))
    storage = Storage(str(root))
    manifest = Manifest.load(storage)
    for r in manifest.records:
        names = legacy_names(r, cache_tag(manifest, r.model))
        for part in ("ok", "failed"):
            src = root / part_path(part, r.key)
            if src.exists():
                pl.read_parquet(src).write_parquet(root / names[part])
    shutil.rmtree(root / "results" / "ok")
    shutil.rmtree(root / "results" / "failed")
    shutil.rmtree(root / "outputs")  # so the rows can only come from the old caches
    shutil.rmtree(root / "errors", ignore_errors=True)
    results = _check_dataset(root, 40, ["custom_id"])
    assert_frame_equal(results.ok, expected.ok)
    assert_frame_equal(results.failed, expected.failed)


def test_damaged_old_layout_cache_is_parsed_again(tmp_path: Path) -> None:
    """A 0.1 per-attempt cache file that cannot be read: the rows come from the outputs."""
    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.3, seed=46) as server:
        _run(server, _chat(20), root, max_attempts=1)
    expected = bf.read_results(str(root))
    assert expected.failed.height > 0
    storage = Storage(str(root))
    manifest = Manifest.load(storage)
    for r in manifest.records:
        names = legacy_names(r, cache_tag(manifest, r.model))
        src = root / part_path("ok", r.key)
        data = src.read_bytes()
        (root / names["ok"]).write_bytes(data[: len(data) // 2])  # truncated by a crash
    shutil.rmtree(root / "results" / "ok")
    results = _check_dataset(root, 20, ["custom_id"])
    assert_frame_equal(results.ok, expected.ok)


def test_repairs_missing_stale_and_stray_files(retried: Path, tmp_path: Path) -> None:
    root = tmp_path / "job"
    shutil.copytree(retried, root)
    expected = bf.read_results(str(root))
    ok = _files(root, "ok")
    ok[0].unlink()  # lost
    shutil.copy(ok[2], ok[1])  # another attempt's rows under this name: stale
    shutil.copy(ok[2], root / "results" / "ok" / "99999.a0.parquet")  # belongs to nobody
    staging = root / "results" / ".staging"
    staging.mkdir(exist_ok=True)
    old_crash = staging / "0123.00001.a0.parquet.part"  # no writer in its name: by age
    old_crash.write_bytes(b"PAR1")
    os.utime(old_crash, (time.time() - 2 * 86400,) * 2)
    live = staging / f"{writer_tag()}-0123.00002.a0.parquet.part"  # this process writes it
    live.write_bytes(b"PAR1")
    assert_frame_equal(bf.scan_results(str(root)).collect(), expected.ok)
    assert [p.name for p in _files(root, "ok")] == [p.name for p in ok]
    assert list(staging.iterdir()) == [live]
    _check_dataset(root, 80, ["custom_id"])


def test_a_crash_between_publishing_and_saving(tmp_path: Path) -> None:
    """Killed after an attempt's files are written but before the manifest says so."""
    from batchframe import _engine

    root = tmp_path / "job"
    req = _chat(40)
    with bf.LocalBatchServer(failure_rate=0.3, seed=47) as server:
        job = bf.BatchJob.create(
            req,
            str(root),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=10),
            max_attempts=3,  # some rows end failed, so both folders are checked
        )
        job.submit()
        server.wait_idle(timeout=10)
        published = _engine.publish_outcome
        calls: list[str] = []

        def crash(*args: Any, **kwargs: Any) -> None:
            published(*args, **kwargs)
            calls.append(args[2].key)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as a kill would, before the save

        _engine.publish_outcome = crash  # type: ignore[assignment]
        try:
            with pytest.raises(KeyboardInterrupt):
                job.wait(poll_interval=POLL)
        finally:
            _engine.publish_outcome = published  # type: ignore[assignment]
            job.close()
        assert (root / part_path("ok", calls[1])).exists()
        with bf.BatchJob.open(str(root), client=server.client()) as again:
            again.wait(poll_interval=POLL)
    _check_dataset(root, 40, ["custom_id"])


def test_collect_refuses_results_above_max_bytes(retried: Path) -> None:
    with bf.BatchJob.open(str(retried)) as job:
        with pytest.raises(bf.ResultsTooLargeError, match="scan_results") as info:
            job.collect(max_bytes=1000)
        assert "to_duckdb" in str(info.value) and "results_to_duckdb" in str(info.value)
        assert info.value.max_bytes == 1000 and info.value.size > 1000
        assert isinstance(info.value, bf.ResultsError)
        assert job.collect(max_bytes=None).ok.height > 0
    with pytest.raises(bf.ResultsTooLargeError):
        bf.read_results(str(retried), max_bytes=1000)


_DRIVER = textwrap.dedent(
    """
    import json, sys
    import duckdb, openai
    import batchframe as bf

    root, database, base_url = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key="local", max_retries=0)
    with open("/proc/self/status") as f:
        start = next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024
    def peak():  # not ru_maxrss: on Linux it keeps the parent's RSS across exec
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024

    with bf.BatchJob.open(root, client=client) as job:
        job.wait(poll_interval=0.1, progress=False)
        wait = peak()
        # DuckDB caches blocks up to its memory_limit: keep that cache small and fixed,
        # so that what is measured is what batchframe holds.
        with duckdb.connect(database) as con:
            con.execute("SET memory_limit = '64MB'")
            job.to_duckdb(con, table="t")
    print(json.dumps({"start": start, "wait": wait, "peak": peak()}))
    """
)


@pytest.mark.slow  # over 30 s on a busy 2-core machine: CI runs it
def test_driver_memory_does_not_grow_with_the_job(tmp_path: Path) -> None:
    """wait() + to_duckdb in a child process: peak RSS for 10x the rows stays put."""
    peaks = {}
    with bf.LocalBatchServer(seed=48) as server:
        for n in (10_000, 100_000):
            root = tmp_path / f"job{n}"
            bf.BatchJob.create(
                _chat(n), str(root), client=None, limits=bf.BatchLimits(max_requests=5_000)
            ).close()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _DRIVER,
                    str(root),
                    str(tmp_path / f"{n}.duckdb"),
                    server.base_url,
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            assert out.returncode == 0, out.stderr[-2000:]
            peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
            with duckdb.connect(str(tmp_path / f"{n}.duckdb"), read_only=True) as con:
                assert con.execute("SELECT count(*) FROM t").fetchone() == (n,)
    small, large = peaks[10_000], peaks[100_000]
    # Holding every row (collect().to_duckdb(), as before) cost ~450 MB over the imports
    # at 100k rows and grew ~1.7 GB per million rows (+150 MB here); streaming stays at
    # about one shard (~220 MB over the imports, +40 to +90 MB here: allocator noise).
    assert large["peak"] - small["peak"] < 150, peaks
    assert large["peak"] - large["start"] < 360, peaks


def test_a_retry_added_after_settling_republishes_the_parent(tmp_path: Path) -> None:
    """More attempts for rows of a settled attempt (what a `retry()` does) move them.

    There is no public `retry()` yet, so the test adds the child attempt the way the job
    does when it settles an attempt; the parent's published failures must then lose
    the retried rows, or a row would be in two files.
    """
    root = tmp_path / "job"
    with bf.LocalBatchServer(failure_rate=0.3, seed=49) as server:
        _run(server, _chat(40), root, max_attempts=1)
        before = bf.read_results(str(root))
        assert before.failed["retryable"].any()
        with bf.BatchJob.open(str(root), client=server.client()) as job:
            job.configure(max_attempts=2)
            parent = next(r for r in job._m.records if r.n_final_failed)
            retry = set(
                before.failed.filter(pl.col("retryable") & (pl.col("batch_id") == parent.batch_id))[
                    "custom_id"
                ]
            )
            job._write_child(parent, retry)
            parent.n_retried = len(retry)
            parent.n_final_failed = (parent.n_final_failed or 0) - len(retry)
            job._save()
            job.wait(poll_interval=POLL)
    # Republished when the job settled again, before any reader came.
    failed = (
        pl.read_parquet(root / part_path("failed", parent.key))
        if (root / part_path("failed", parent.key)).exists()
        else pl.DataFrame({"custom_id": []}, schema={"custom_id": pl.String})
    )
    assert not set(failed["custom_id"]) & retry
    results = _check_dataset(root, 40, ["custom_id"])
    assert retry <= set(results.ok["custom_id"]) | set(
        results.failed.filter(pl.col("attempts") == 2)["custom_id"]
    )


def test_published_files_are_written_in_row_groups_of_about_8_mb() -> None:
    """The Parquet writer holds a row group's pages until it is done: groups are bounded."""
    from batchframe._publish import row_group_rows

    rows = pl.DataFrame({"body": ["x" * 700] * 50_000})  # ~700 bytes a row, like chat
    per_group = row_group_rows(rows)
    assert 8_000 <= per_group <= 16_000
    vectors = pl.DataFrame({"v": [[0.0] * 3072] * 10}, schema={"v": pl.Array(pl.Float32, 3072)})
    assert row_group_rows(vectors) == 1024  # 12 KB a row: never fewer rows than this
    assert row_group_rows(pl.DataFrame({"a": [1] * 10})) == 1 << 20
