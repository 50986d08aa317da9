"""Damaged or missing state on disk and on S3: each is recovered, or named with what to do.

Every test damages real files of a real job (run against ``LocalBatchServer`` over
HTTP) and then goes through the public API or the CLI.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import batchframe as bf
from batchframe._manifest import MANIFEST_FILE, PREVIOUS_MANIFEST_FILE

POLL = 0.02


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})


def _requests(n: int) -> bf.Requests:
    return bf.build_requests(
        _frame(n),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
    )


def _run(server: bf.LocalBatchServer, root: str, n: int = 30, **kwargs: Any) -> bf.BatchResults:
    kwargs.setdefault("limits", bf.BatchLimits(max_requests=10))
    return bf.run(
        _frame(n),
        root,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
        client=server.client(),
        poll_interval=POLL,
        progress=False,
        **kwargs,
    )


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _same(a: bf.BatchResults, b: bf.BatchResults) -> None:
    assert_frame_equal(a.ok.sort("custom_id"), b.ok.sort("custom_id"))
    assert_frame_equal(a.failed.sort("custom_id"), b.failed.sort("custom_id"))


# -- 1. manifest.json ------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not a manifest", "deleted"])
def test_damaged_manifest_is_recovered_by_read_open_and_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        first = _run(server, str(root))
        created = len(server.batches_created())
        manifest = root / MANIFEST_FILE
        assert (root / PREVIOUS_MANIFEST_FILE).exists()
        if damage == "truncated":
            _truncate(manifest)
        elif damage == "empty":
            manifest.write_bytes(b"")
        elif damage == "garbage":
            manifest.write_bytes(b"\x00\xff" * 100)
        elif damage == "not a manifest":
            manifest.write_bytes(b'{"format_version": 1, "records": 3}')
        else:
            manifest.unlink()
        with caplog.at_level(logging.WARNING, logger="batchframe"):
            again = bf.read_results(root)
        assert "previous version" in caplog.text
        assert str(manifest) in caplog.text
        _same(first, again)
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=POLL)
            _same(first, job.collect())
        # bf.run resumes the same job: nothing is created again, the manifest is whole.
        _same(first, _run(server, str(root)))
        assert len(server.batches_created()) == created
    assert orjson.loads(manifest.read_bytes())["job_id"] == orjson.loads(
        (root / PREVIOUS_MANIFEST_FILE).read_bytes()
    )["job_id"]


def test_recovery_never_loses_a_created_batch(tmp_path: Path) -> None:
    """The previous version lacks the newest intent and batch: reconciliation adopts it.

    With one shard, the saves are: created, uploaded, intent, batch id. The intent does
    not change the skeleton, so ``manifest.prev.json`` holds the *uploaded* version:
    neither the intent nor the batch. Recovery must still find the batch by its tags.
    """
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(_requests(8), root, client=server.client()) as job:
            job.submit()
        assert len(server.batches_created()) == 1
        prev = orjson.loads((root / PREVIOUS_MANIFEST_FILE).read_bytes())
        assert [(r["status"], r["batch_id"]) for r in prev["records"]] == [("uploaded", None)]
        _truncate(root / MANIFEST_FILE, 0.3)
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=POLL)
            results = job.collect()
        assert len(server.batches_created()) == 1  # adopted, not created again
    assert results.ok.height == 8


def test_recovery_of_a_job_in_flight_with_several_shards(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer(validation_seconds=0.2) as server:
        req = _requests(40)
        limits = bf.BatchLimits(max_requests=10)
        with bf.BatchJob.create(req, root, client=server.client(), limits=limits) as job:
            job.submit()
        assert len(server.batches_created()) == 4
        (root / MANIFEST_FILE).write_bytes(b'{"format_version": 1, "job_id": "bf')
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=POLL)
            results = job.collect()
        assert len(server.batches_created()) == 4
    assert results.ok.height == 40 and results.failed.height == 0


def test_no_readable_version_names_the_file_and_the_job(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        _run(server, str(root), n=5)
    job_id = orjson.loads((root / MANIFEST_FILE).read_bytes())["job_id"]
    _truncate(root / MANIFEST_FILE, 0.2)  # the job id survives in the first bytes
    (root / PREVIOUS_MANIFEST_FILE).write_bytes(b"")
    for call in (
        lambda: bf.read_results(root),
        lambda: bf.BatchJob.open(root),
        lambda: bf.scan_results(root),
    ):
        with pytest.raises(bf.ManifestDamagedError) as info:
            call()
        text = str(info.value)
        assert str(root / MANIFEST_FILE) in text
        assert f"batchframe_job={job_id}" in text
        assert "backup" in text
        assert isinstance(info.value.__cause__, orjson.JSONDecodeError)
    with pytest.raises(bf.ManifestDamagedError):  # never a second job over the first
        _run(bf.LocalBatchServer(), str(root), n=5)


def test_newer_previous_version_is_not_mistaken_for_damage(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        _run(server, str(root), n=3)
    data = orjson.loads((root / PREVIOUS_MANIFEST_FILE).read_bytes())
    (root / PREVIOUS_MANIFEST_FILE).write_bytes(orjson.dumps(data | {"format_version": 99}))
    (root / MANIFEST_FILE).write_bytes(b"{")
    with pytest.raises(bf.ManifestVersionError):
        bf.read_results(root)
