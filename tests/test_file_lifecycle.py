"""Files on the provider: expiry, deletion once results are stored, no orphans, cleanup."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

import batchframe as bf
from batchframe import _engine
from batchframe._cli import main
from batchframe._files import keep_kinds

POLL = 0.02


def requests_for(n: int = 12) -> bf.Requests:
    df = pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)]})
    return bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=8),
        custom_id="id",
    )


def job_files(server: bf.LocalBatchServer, job_id: str | None = None) -> list[dict[str, Any]]:
    files = server.files()
    if job_id is None:
        return files
    return [f for f in files if f["filename"].startswith(job_id)]


def uploads(server: bf.LocalBatchServer) -> list[Any]:
    return [
        c for c in server.calls if c.method == "POST" and c.path == "/v1/files" and c.status == 200
    ]


def test_uploads_carry_expires_after_and_batches_output_expiry(tmp_path: Path) -> None:
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(
            requests_for(4),
            tmp_path / "a",
            client=server.client(),
            keep_files=True,
            output_expires_after=7 * 86_400,
        ) as job:
            job.wait(poll_interval=POLL)
        (up,) = uploads(server)
        assert up.body["expires_after"] == {"anchor": "created_at", "seconds": "2592000"}
        created = [c for c in server.calls if c.method == "POST" and c.path == "/v1/batches"]
        assert created[0].body["output_expires_after"] == {
            "anchor": "created_at",
            "seconds": 604800,
        }
        (inp,) = [f for f in server.files() if f["purpose"] == "batch"]
        assert inp["expires_at"] - inp["created_at"] == 30 * 86_400
        out = [f for f in server.files() if f["purpose"] == "batch_output"]
        assert out and all(f["expires_at"] - f["created_at"] == 7 * 86_400 for f in out)
        server.clear_calls()
        with bf.BatchJob.create(
            requests_for(4), tmp_path / "b", client=server.client(), expires_after=None
        ) as job:
            job.wait(poll_interval=POLL)
        (up,) = uploads(server)
        assert up.body["expires_after"] is None


def test_expiry_outside_the_provider_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(bf.ProviderError, match="1,209,600 to 2,592,000"):
        bf.BatchJob.create(requests_for(2), tmp_path / "a", provider="azure", expires_after=3600)
    with pytest.raises(bf.ProviderError, match="output_expires_after"):
        bf.BatchJob.create(
            requests_for(2), tmp_path / "b", provider="groq", output_expires_after=7200
        )
    with pytest.raises(bf.ProviderError, match="keep_files"):
        keep_kinds(["inputs"])


@pytest.mark.parametrize(
    ("keep", "left"),
    [
        (False, set()),
        (True, {"batch", "batch_output"}),
        ("output", {"batch_output"}),
        ("input", {"batch"}),
    ],
)
def test_files_are_deleted_once_results_are_stored(
    tmp_path: Path, keep: Any, left: set[str]
) -> None:
    # failure_rate makes retry shards: their files go too.
    with bf.LocalBatchServer(failure_rate=0.3, seed=3) as server:
        with bf.BatchJob.create(
            requests_for(12),
            tmp_path / "job",
            client=server.client(),
            limits=bf.BatchLimits(max_requests=4),
            keep_files=keep,
        ) as job:
            job.wait(poll_interval=POLL)
            results = job.collect()
            attempts = job.status().height
        assert results.ok.height + results.failed.height == 12
        assert attempts > 3  # retries ran
        assert {f["purpose"] for f in server.files()} == left
        if not left:
            deletes = [c for c in server.calls if c.method == "DELETE" and c.status == 200]
            assert len(deletes) == len({c.object_id for c in deletes})  # never twice


def test_a_lost_upload_answer_is_adopted_not_uploaded_twice(tmp_path: Path) -> None:
    with bf.LocalBatchServer() as server:
        server.fail_next("POST", "/v1/files", after=True)  # the file exists, the answer is lost
        with bf.BatchJob.create(
            requests_for(4), tmp_path / "job", client=server.client(), keep_files=True
        ) as job:
            job.wait(poll_interval=POLL)
            assert job.collect().ok.height == 4
            posts = [c for c in server.calls if c.method == "POST" and c.path == "/v1/files"]
            assert [c.status for c in posts] == [500]  # taken effect, answer lost, not re-sent
            assert len(job_files(server, job.job_id)) == 1  # the one input, adopted


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import batchframe as bf
    from batchframe import _api

    base_url, root, mode = sys.argv[1:4]
    if mode == "after_upload":
        orig = _api.BatchAPI.upload

        def upload(self, *a, **k):
            file_id = orig(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # uploaded; the manifest never hears of it
            return file_id

        _api.BatchAPI.upload = upload
    from batchframe._api import make_client
    with bf.BatchJob.open(root, client=make_client(base_url, api_key="local")) as job:
        print("ready", flush=True)
        job.wait(poll_interval=0.02)
    print("done", flush=True)
    """
)


def run_child(
    script: Path, server: bf.LocalBatchServer, root: Path, mode: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(script), server.base_url, str(root), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_crash_between_upload_and_save_leaves_no_orphan(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with bf.LocalBatchServer() as server:
        job = bf.BatchJob.create(
            requests_for(8),
            tmp_path / "job",
            client=server.client(),
            limits=bf.BatchLimits(max_requests=4),
        )
        job_id = job.job_id
        job.close()
        proc = run_child(script, server, tmp_path / "job", "after_upload")
        proc.communicate(timeout=120)
        assert proc.returncode == -9
        orphans = job_files(server, job_id)
        assert len(orphans) >= 1  # what the kill left: uploaded, recorded nowhere
        with bf.BatchJob.open(tmp_path / "job", client=server.client()) as job:
            assert all(r.input_file_id is None for r in job._m.records)
            job.wait(poll_interval=POLL)
            assert job.collect().ok.height == 8
        adopted = {f["id"] for f in orphans}
        used = {b["input_file_id"] for b in server.batches()}
        assert adopted <= used  # adopted, not uploaded again
        assert len(uploads(server)) == 2
        assert job_files(server, job_id) == []


@pytest.mark.slow
def test_kill_campaign_leaves_zero_orphan_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "_INTENT_GRACE", 0.3)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(20261130)
    kills = 0
    with bf.LocalBatchServer(requests_per_second=400, validation_seconds=0.05, seed=5) as server:
        for trial in range(2):
            root = tmp_path / f"t{trial}"
            job = bf.BatchJob.create(
                requests_for(40),
                root,
                client=server.client(),
                limits=bf.BatchLimits(max_requests=4),
            )
            job_id = job.job_id
            job.close()
            # Up to four drivers a trial, each killed within 0.4 s of opening the job (a
            # quick machine finished a job in less than the 0.8 s this once allowed, and
            # the campaign then counted too few kills to mean anything).
            for _ in range(4):
                proc = run_child(script, server, root, rng.choice(["random", "after_upload"]))
                assert proc.stdout is not None
                proc.stdout.readline()  # "ready": imported, the job opened
                time.sleep(rng.uniform(0.0, 0.4))
                proc.kill()
                out, err = proc.communicate(timeout=120)
                assert proc.returncode in (0, -9), err.decode()[-2000:]
                kills += proc.returncode == -9
                if b"done" in out:
                    break
            with bf.BatchJob.open(root, client=server.client()) as job:
                job.wait(poll_interval=POLL)
                results = job.collect()
            assert results.ok.height + results.failed.height == 40
            per_attempt = Counter(
                (b["metadata"]["batchframe_shard"], b["metadata"]["batchframe_attempt"])
                for b in server.batches_created()
                if b["metadata"]["batchframe_job"] == job_id
            )
            assert max(per_attempt.values()) == 1
            assert job_files(server, job_id) == []  # 0 orphans
    assert kills >= 4


def test_cleanup_removes_what_a_job_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(
            requests_for(6),
            tmp_path / "job",
            client=server.client(),
            keep_files=True,
            limits=bf.BatchLimits(max_requests=3),
        ) as job:
            job.wait(poll_interval=POLL)
            job_id = job.job_id
        # A stray upload named for the job (e.g. from a crash) and an unrelated file.
        client = server.client()
        client.files.create(file=(f"{job_id}-00000.a0.jsonl", b"{}\n"), purpose="batch")
        other = client.files.create(file=("other.jsonl", b"{}\n"), purpose="batch")
        assert len(server.files()) == 2 + 2 + 1 + 1  # inputs, outputs, stray, other
        code = main(["cleanup", str(tmp_path / "job"), "--base-url", server.base_url])
        assert code == 0
        assert "deleted 5 file(s)" in capsys.readouterr().out
        assert [f["id"] for f in server.files()] == [other.id]


def test_results_survive_deleted_provider_files(tmp_path: Path) -> None:
    with bf.LocalBatchServer() as server:
        results = bf.run(
            pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"]}),
            tmp_path / "job",
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
            custom_id="id",
            client=server.client(),
            poll_interval=POLL,
        )
        assert server.files() == []
    again = bf.read_results(tmp_path / "job")
    assert sorted(again.ok["custom_id"]) == sorted(results.ok["custom_id"]) == ["a", "b"]
    assert orjson.loads(again.ok["body"][0])["object"] == "chat.completion"


def test_a_lost_local_output_names_the_provider_copy_deleted_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(
            requests_for(8), root, client=server.client(), limits=bf.BatchLimits(max_requests=4)
        ) as job:
            job.wait(poll_interval=POLL)
        (root / "outputs" / "00001.a0.jsonl").unlink()
        (root / "results" / "ok" / "00001.a0.parquet").unlink()
        with (
            caplog.at_level(logging.WARNING, logger="batchframe"),
            bf.BatchJob.open(root, client=server.client()) as job,
        ):
            results = job.collect()
        downloads = [c for c in server.calls if c.path.endswith("/content")]
    lost = results.failed.filter(pl.col("stage") == "lost")
    assert lost.height == 4 and results.ok.height == 4
    assert "was deleted once the rows were stored" in lost["error_message"][0]
    assert len(downloads) == 2  # the two first downloads; none for the deleted copy
