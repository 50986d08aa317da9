"""``BatchJob.retry`` and ``batchframe retry``: failed rows run again as new shard attempts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from conftest_server import chat_requests

import batchframe as bf
from batchframe import _engine
from batchframe._cli import main

N = 20
LIMITS = bf.BatchLimits(max_requests=8)  # 3 shards: 8, 8, 4


def _requests(n: int = N) -> bf.Requests:
    return chat_requests(n)


def _check_invariants(job: bf.BatchJob, n: int = N) -> bf.BatchResults:
    """Every row once in ok or failed, in memory and in the published folders."""
    results = job.collect()
    ok, failed = results.ok["custom_id"].to_list(), results.failed["custom_id"].to_list()
    assert len(ok) == len(set(ok)) and len(failed) == len(set(failed))
    assert sorted(ok + failed) == sorted(f"r{i}" for i in range(n))
    scanned_ok, scanned_failed = (
        [
            i
            for p in sorted(Path(job.root, "results", part).glob("*.parquet"))
            for i in pl.read_parquet(p, columns=["custom_id"])["custom_id"].to_list()
        ]
        for part in ("ok", "failed")
    )
    assert sorted(scanned_ok) == sorted(ok) and sorted(scanned_failed) == sorted(failed)
    ok_n, failed_n, _ = job.counts()
    assert (ok_n, failed_n) == (len(ok), len(failed))
    return results


def _tagged(server: bf.LocalBatchServer, job_id: str) -> Counter[tuple[str, str]]:
    return Counter(
        (b["metadata"]["batchframe_shard"], b["metadata"]["batchframe_attempt"])
        for b in server.batches_created()
        if (b.get("metadata") or {}).get("batchframe_job") == job_id
    )


def test_retry_a_cancelled_job(tmp_path: Path) -> None:
    with bf.LocalBatchServer() as server:
        job = bf.BatchJob.create(_requests(), tmp_path / "j", client=server.client(), limits=LIMITS)
        with job:
            job.cancel()  # nothing was submitted: every row ends failed, stage "cancelled"
            before = job.collect().failed
            assert before.height == N and set(before["stage"]) == {"cancelled"}
            assert job.is_settled and job.is_cancelled

            new = job.retry()
            assert new.columns == ["shard", "attempt", "n_requests", "path"]
            assert new["n_requests"].to_list() == [8, 8, 4]
            assert new["attempt"].to_list() == [1, 1, 1]
            assert not job.is_settled and not job.is_cancelled
            # Called again before the rows finish: nothing new, nothing submitted twice.
            assert job.retry().height == 0
            job.wait(poll_interval=0.02, progress=False)
            results = _check_invariants(job)
            assert results.ok.height == N and results.failed.height == 0
            assert max(_tagged(server, job.job_id).values()) == 1
            assert job.retry().height == 0  # nothing left to retry


def test_retry_exhausted_rows_counts_attempts_unless_reset(tmp_path: Path) -> None:
    root = tmp_path / "f"
    with (
        bf.LocalBatchServer(failure_rate=1.0, seed=2) as failing,
        bf.BatchJob.create(
            _requests(), root, client=failing.client(), limits=LIMITS, max_attempts=2
        ) as job,
    ):
        job.wait(poll_interval=0.02, progress=False)
        failed = job.collect().failed
        assert failed.height == N and failed["retryable"].all()
        assert set(failed["attempts"]) == {2}
        # Counted in max_attempts: the retried rows run once (attempt 2), no more.
        job.retry(where=pl.col("custom_id").is_in(["r0", "r1", "r9"]))
        job.wait(poll_interval=0.02, progress=False)
        status = job.status()
        assert status.filter(pl.col("shard") == 0)["attempt"].to_list() == [0, 1, 2]
        assert status.filter(pl.col("shard") == 2)["attempt"].to_list() == [0, 1]
        _check_invariants(job)
        # reset_attempts: max_attempts tries again, automatic retries included.
        job.retry(where=pl.col("custom_id") == "r0", reset_attempts=True)
        job.wait(poll_interval=0.02, progress=False)
        shard0 = job.status().filter(pl.col("shard") == 0)
        assert shard0["attempt"].to_list() == [0, 1, 2, 3, 4]
        assert shard0.filter(pl.col("attempt") >= 3)["n_requests"].to_list() == [1, 1]
        _check_invariants(job)
    # Another day, another (working) provider: the rows that failed by a code run again.
    with bf.LocalBatchServer() as good, bf.BatchJob.open(root, client=good.client()) as job:
        with pytest.raises(bf.ColumnNotFoundError, match="no_such_column"):
            job.retry(where=pl.col("no_such_column") == 1)
        assert job.is_settled  # nothing was changed by the refused call
        new = job.retry(where=pl.col("error_code") == "server_error")
        assert new["n_requests"].sum() == N
        job.wait(poll_interval=0.02, progress=False)
        results = _check_invariants(job)
        assert results.ok.height == N


def test_cli_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "c")
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(_requests(), root, client=server.client(), limits=LIMITS) as job:
            job.cancel()
        api = ["--base-url", server.base_url, "--poll-interval", "0.02"]
        assert main(["retry", root, "--error-code", "nope", *api]) == 0
        out = capsys.readouterr().out
        assert "no failed row matches" in out
        assert main(["retry", root, "--cancelled", *api, "--wait"]) == 0
        out = capsys.readouterr().out
        assert f"retrying {N} row(s) in 3 new shard attempt(s)" in out
        assert f"{N} ok, 0 failed" in out
        with bf.BatchJob.open(root) as job:
            _check_invariants(job)


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import polars as pl
    import batchframe as bf
    from batchframe import _api, _engine, _storage

    base_url, root, mode = sys.argv[1:4]
    _engine._INTENT_GRACE = 0.3

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "before_save":  # the new shard files are written, the manifest not yet
        orig = _storage.Storage.write_bytes

        def write_bytes(self, rel, data):
            if rel == "manifest.json":
                die()
            return orig(self, rel, data)

        _storage.Storage.write_bytes = write_bytes
    elif mode == "after_save":  # the new attempts are recorded, nothing uploaded
        def upload(self, *a, **k):
            die()

        _api.BatchAPI.upload = upload
    elif mode == "after_create":  # a batch exists, the manifest does not know it
        orig_create = _api.BatchAPI.create_batch

        def create(self, *a, **k):
            orig_create(self, *a, **k)
            die()

        _api.BatchAPI.create_batch = create
    job = bf.BatchJob.open(root, client=_api.make_client(base_url, api_key="x"))
    job.retry()
    print("done", flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["before_save", "after_save", "after_create"])
def test_retry_survives_a_crash(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine, "_INTENT_GRACE", 0.3)
    root = tmp_path / "k"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(_requests(), root, client=server.client(), limits=LIMITS) as job:
            job.cancel()
        proc = subprocess.run(
            [sys.executable, str(script), server.base_url, str(root), mode],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        # Resume as a user would: retry again (a no-op when the first call was recorded), wait.
        with bf.BatchJob.open(root, client=server.client()) as job:
            again = job.retry()
            assert again.height == (3 if mode == "before_save" else 0)
            job.wait(poll_interval=0.02, progress=False)
            results = _check_invariants(job)
            assert results.ok.height == N
            assert max(_tagged(server, job.job_id).values()) == 1
            assert job.status()["attempt"].to_list() == [0, 1, 0, 1, 0, 1]


def test_tries_used_counts_from_the_reset() -> None:
    from batchframe._manifest import ShardAttempt
    from batchframe._retry_rows import tries_used

    def r(attempt: int, shard: int = 0) -> ShardAttempt:
        return ShardAttempt(shard=shard, attempt=attempt, path="p", sha256="x", n_requests=1)

    assert [tries_used({}, r(a)) for a in range(4)] == [1, 2, 3, 4]
    reset = {"attempt_base": {"0": 3}}
    assert [tries_used(reset, r(a)) for a in range(5)] == [1, 2, 3, 1, 2]
    assert tries_used(reset, r(4, shard=1)) == 5  # another shard is not reset
