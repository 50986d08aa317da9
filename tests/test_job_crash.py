"""Kill the driving process at any moment; resuming never pays twice and never loses a row."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import batchframe as bf
from batchframe import _engine

pytestmark = pytest.mark.slow

N_ROWS = 48
MAX_REQUESTS = 8

CHILD = textwrap.dedent(
    """
    import os, random, signal, sys
    from contextlib import contextmanager

    import polars as pl
    import batchframe as bf
    from batchframe import _api, _engine, _storage

    base_url, root, mode, seed = sys.argv[1:5]
    rng = random.Random(int(seed))
    _engine._INTENT_GRACE = 0.3


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    if mode in ("after_create", "before_create"):
        orig_create = _api.BatchAPI.create_batch
        left = [rng.randint(1, 4)]

        def create(self, *a, **k):
            left[0] -= 1
            if left[0] == 0 and mode == "before_create":
                die()  # the intent is saved, the batch is not created
            b = orig_create(self, *a, **k)
            if left[0] == 0:
                die()  # the batch exists, the manifest does not know it
            return b

        _api.BatchAPI.create_batch = create
    elif mode == "after_upload":
        orig_upload = _api.BatchAPI.upload

        def upload(self, *a, **k):
            file_id = orig_upload(self, *a, **k)
            if rng.random() < 0.5:
                die()
            return file_id

        _api.BatchAPI.upload = upload
    elif mode == "during_download":
        orig_open_write = _storage.Storage.open_write

        @contextmanager
        def open_write(self, rel):
            with orig_open_write(self, rel) as f:
                if rel.startswith(("outputs/", "errors/")) and rng.random() < 0.4:
                    f.write(b'{"partial": ')
                    f.flush()
                    die()
                yield f

        _storage.Storage.open_write = open_write
    elif mode == "during_save":
        orig_write = _storage.Storage.write_bytes

        def write_bytes(self, rel, data):
            if rel == "manifest.json" and rng.random() < 0.05:
                with orig_write.__globals__["Storage"].open_write(self, rel) as f:
                    f.write(bytes(data)[: len(data) // 2])
                    f.flush()
                    die()
            return orig_write(self, rel, data)

        _storage.Storage.write_bytes = write_bytes

    df = pl.DataFrame({"id": [f"r{i}" for i in range(%(n)d)], "text": [f"t {i}" for i in range(%(n)d)]})
    req = bf.build_requests(
        df, endpoint="/v1/chat/completions", body=bf.chat_body("m", user=pl.col("text")), custom_id="id"
    )
    client = _api.make_client(base_url, api_key="x")
    # No break_lock: the lock of a killed predecessor on this host is taken over by itself.
    if os.path.exists(os.path.join(root, "manifest.json")):
        job = bf.BatchJob.open(root, client=client)
    else:
        job = bf.BatchJob.create(
            req, root, client=client, limits=bf.BatchLimits(max_requests=%(m)d),
            retry_backoff=bf.RetryBackoff(initial=0.05, max_delay=0.2),  # crashes, not waits
        )
    job.submit()
    job.wait(poll_interval=0.02, progress=False)
    print("done", flush=True)
    """
) % {"n": N_ROWS, "m": MAX_REQUESTS}

MODES = [
    "random",
    "after_create",
    "before_create",
    "after_upload",
    "during_download",
    "during_save",
]


def _requests() -> bf.Requests:
    df = pl.DataFrame(
        {"id": [f"r{i}" for i in range(N_ROWS)], "text": [f"t {i}" for i in range(N_ROWS)]}
    )
    return bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )


def _tagged(server: bf.LocalBatchServer, job_id: str) -> list[dict[str, Any]]:
    return [
        b
        for b in server.batches_created()
        if (b.get("metadata") or {}).get("batchframe_job") == job_id
    ]


def test_sigkill_at_random_moments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine, "_INTENT_GRACE", 0.3)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(20261125)
    kills: Counter[str] = Counter()
    with bf.LocalBatchServer(
        failure_rate=0.15, requests_per_second=300, validation_seconds=0.05, seed=11
    ) as server:
        for trial in range(8):
            root = tmp_path / f"trial{trial}"
            for _ in range(3):
                mode = rng.choice(MODES)
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        str(script),
                        server.base_url,
                        str(root),
                        mode,
                        str(rng.randrange(10**6)),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                if mode == "random":
                    time.sleep(rng.uniform(0.3, 1.6))
                    proc.kill()
                out, err = proc.communicate(timeout=120)
                if proc.returncode not in (0, -9):
                    pytest.fail(f"child failed ({mode}): {err.decode()[-3000:]}")
                if proc.returncode == -9:
                    kills[mode] += 1
                if b"done" in out:
                    break
            # Finish in this process, as a user would after the crash.
            if (root / "manifest.json").exists():
                job = bf.BatchJob.open(str(root), client=server.client())
            else:
                job = bf.BatchJob.create(
                    _requests(),
                    str(root),
                    client=server.client(),
                    limits=bf.BatchLimits(max_requests=MAX_REQUESTS),
                    retry_backoff=bf.RetryBackoff(initial=0.05, max_delay=0.2),
                )
            with job:
                job.wait(poll_interval=0.02)
                results = job.collect()
                status = job.status()
            ids = [f"r{i}" for i in range(N_ROWS)]
            ok_ids = results.ok["custom_id"].to_list()
            failed_ids = results.failed["custom_id"].to_list()
            assert len(ok_ids) == len(set(ok_ids))
            assert sorted(ok_ids + failed_ids) == sorted(ids), trial
            # Exactly one batch per shard attempt on the server, and each one is recorded.
            created = _tagged(server, job.job_id)
            keys = Counter(
                (b["metadata"]["batchframe_shard"], b["metadata"]["batchframe_attempt"])
                for b in created
            )
            assert max(keys.values()) == 1, (trial, keys)
            recorded = set(status["batch_id"].drop_nulls().to_list())
            assert {b["id"] for b in created} == recorded
            assert len(recorded) == status.height
    print("kills:", dict(kills))
    assert sum(kills.values()) >= 8, kills
    assert kills["after_create"] + kills["before_create"] >= 2, kills


def test_resume_from_another_process(tmp_path: Path) -> None:
    root = tmp_path / "job"
    code = textwrap.dedent(
        f"""
        import sys
        import polars as pl
        import batchframe as bf
        from batchframe import _api

        df = pl.DataFrame({{"id": [f"r{{i}}" for i in range(20)], "text": [f"t {{i}}" for i in range(20)]}})
        req = bf.build_requests(df, endpoint="/v1/chat/completions", body=bf.chat_body("m", user=pl.col("text")), custom_id="id")
        with bf.BatchJob.create(req, {str(root)!r}, client=_api.make_client(sys.argv[1], api_key="x"), limits=bf.BatchLimits(max_requests=5)) as job:
            job.submit()
            print("submitted", flush=True)
            sys.stdin.read()
        """
    )
    with bf.LocalBatchServer(requests_per_second=100, seed=12) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, server.base_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == b"submitted"
            with pytest.raises(bf.JobLockedError, match=rf"process {proc.pid} on host"):
                bf.BatchJob.open(str(root), client=server.client())
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
            proc.wait()
        with bf.BatchJob.open(str(root), client=server.client()) as job:
            assert job.status()["batch_id"].null_count() == 0
            job.wait(poll_interval=0.02)
            results = job.collect()
        assert results.ok.height == 20
        assert len(_tagged(server, job.job_id)) == 4


def test_crash_between_create_and_save_is_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same window as the kill test, deterministic and in-process."""
    from batchframe._api import BatchAPI
    from batchframe._manifest import Manifest

    monkeypatch.setattr(_engine, "_INTENT_GRACE", 0.0)
    root = str(tmp_path / "j")
    with bf.LocalBatchServer(seed=13) as server:
        job = bf.BatchJob.create(
            _requests(), root, client=server.client(), limits=bf.BatchLimits(max_requests=24)
        )
        saved = Manifest.load(job._storage)

        class Crash(BaseException):
            pass

        orig = BatchAPI.create_batch

        def create_then_crash(self: BatchAPI, *a: Any, **k: Any) -> Any:
            orig(self, *a, **k)
            raise Crash

        monkeypatch.setattr(BatchAPI, "create_batch", create_then_crash)
        with pytest.raises(Crash):
            job.submit()
        monkeypatch.setattr(BatchAPI, "create_batch", orig)
        on_disk = Manifest.load(job._storage)
        assert [r.status for r in on_disk.records] == ["submitting", "uploaded"]
        assert on_disk.records[0].batch_id is None and saved.records[0].intent_at is None
        job.close()
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=0.02)
            assert job.collect().ok.height == N_ROWS
        assert len(_tagged(server, job.job_id)) == 2


def test_kill_campaign_small() -> None:
    """benchmarks/reliability/kills.py, about ten kills (the README has the full run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reliability"))
    try:
        import kills
    finally:
        sys.path.pop(0)
    figures = kills.main(["--trials", "4", "--kills", "3", "--seed", "5"])
    assert int(figures["kills"]) >= 6, figures  # type: ignore[call-overload]
    assert figures["max batches per shard attempt"] == 1, figures
    assert figures["duplicates that ran"] == 0 and figures["duplicate batches"] == 0, figures
    assert figures["lost rows"] == 0 and figures["duplicated rows"] == 0, figures
    assert figures.get("duckdb mismatches", 0) == 0, figures
    assert figures["unclean trials"] == 0, figures
