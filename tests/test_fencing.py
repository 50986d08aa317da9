"""Two drivers on one root: the displaced one stops; duplicates are found and cancelled."""

from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from conftest_server import chat_requests

import batchframe as bf
from batchframe._manifest import (
    LOCK_FILE,
    LOCK_TTL,
    acquire_lock,
    check_lock,
    renew_lock,
)
from batchframe._storage import Storage


def _requests(n: int) -> bf.Requests:
    return chat_requests(n)


def _job_batches(server: bf.LocalBatchServer, job_id: str) -> list[dict[str, Any]]:
    return [
        b
        for b in server.batches_created()
        if (b.get("metadata") or {}).get("batchframe_job") == job_id
    ]


def _foreign(storage: Storage, **fields: Any) -> None:
    data = {"host": "elsewhere", "pid": 1, "started": 0.0, "token": "theirs", "epoch": 7}
    data.update(fields)
    storage.write_bytes(LOCK_FILE, orjson.dumps(data))


def test_epoch_grows_and_a_displaced_holder_is_told(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    first = acquire_lock(storage)
    check_lock(storage, first)
    second = acquire_lock(storage, break_lock=True)
    assert second.epoch > first.epoch
    with pytest.raises(bf.JobLockedError, match=r"taken over by process .*lock epoch"):
        check_lock(storage, first)
    check_lock(storage, second)
    assert not renew_lock(storage, first)  # never overwrites the new holder
    assert orjson.loads(storage.read_bytes(LOCK_FILE))["token"] == second.token
    # A foreign lock with a bigger epoch: the next taker goes above it.
    _foreign(storage, epoch=10**15)
    assert acquire_lock(storage, break_lock=True).epoch == 10**15 + 1


def test_a_deleted_lock_file_is_taken_back(tmp_path: Path, caplog: Any) -> None:
    storage = Storage(str(tmp_path))
    mine = acquire_lock(storage)
    storage.delete(LOCK_FILE)
    with caplog.at_level(logging.WARNING, logger="batchframe"):
        check_lock(storage, mine)
    assert "had disappeared" in caplog.text
    assert orjson.loads(storage.read_bytes(LOCK_FILE))["token"] == mine.token


def test_heartbeat_ttl_on_another_host(tmp_path: Path, caplog: Any) -> None:
    storage = Storage(str(tmp_path))
    # Fresh heartbeat elsewhere: refused, and the message says how old it is.
    _foreign(storage, heartbeat=time.time() - 5)
    with pytest.raises(bf.JobLockedError, match=r"heartbeat is \d+ s old"):
        acquire_lock(storage)
    # Older than the TTL: taken over without break_lock, with a warning.
    _foreign(storage, heartbeat=time.time() - LOCK_TTL - 1)
    with caplog.at_level(logging.WARNING, logger="batchframe"):
        lock = acquire_lock(storage)
    assert lock.host == socket.gethostname() and lock.epoch > 7
    assert "heartbeat is" in caplog.text
    # No heartbeat at all (an older batchframe): never stale.
    _foreign(storage, heartbeat=None)
    with pytest.raises(bf.JobLockedError, match="cannot be checked"):
        acquire_lock(storage)


def test_the_holder_renews_its_heartbeat(tmp_path: Path) -> None:
    from batchframe._fence import Fence

    storage = Storage(str(tmp_path))
    fence = Fence(storage, acquire_lock(storage), heartbeat=0.05)
    try:
        first = orjson.loads(storage.read_bytes(LOCK_FILE))["heartbeat"]
        deadline = time.monotonic() + 10
        while orjson.loads(storage.read_bytes(LOCK_FILE))["heartbeat"] == first:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        fence.release()
    assert not storage.exists(LOCK_FILE)


def test_displaced_driver_stops_before_creating(tmp_path: Path) -> None:
    """Driver A is taken over with break_lock=True mid-way: it never creates again."""
    root = str(tmp_path / "job")
    with bf.LocalBatchServer(validation_seconds=0.05, seed=2) as server:
        a = bf.BatchJob.create(
            _requests(60),
            root,
            client=server.client(),
            limits=bf.BatchLimits(max_requests=10),
            max_in_flight=2,
        )
        a.submit()
        assert len(_job_batches(server, a.job_id)) == 2
        b = bf.BatchJob.open(root, client=server.client(), break_lock=True)
        with pytest.raises(bf.JobLockedError, match="taken over by process"):
            a.wait(poll_interval=0.02, progress=False)
        with pytest.raises(bf.JobLockedError):  # and stays stopped
            a.submit()
        assert len(_job_batches(server, a.job_id)) == 2
        a.close()  # does not remove B's lock
        assert Storage(root).exists(LOCK_FILE)
        with b:
            b.wait(poll_interval=0.02, progress=False)
            results = b.collect()
        batches = _job_batches(server, b.job_id)
    keys = [
        (x["metadata"]["batchframe_shard"], x["metadata"]["batchframe_attempt"]) for x in batches
    ]
    assert len(keys) == len(set(keys)) == 6
    assert results.ok.height == 60


def test_duplicate_batch_is_cancelled_and_reported(
    tmp_path: Path, caplog: Any, capsys: Any
) -> None:
    """A batch made for an attempt that already has one (the fence's backstop)."""
    from batchframe import _cli

    root = str(tmp_path / "job")
    with bf.LocalBatchServer(validation_seconds=1.0, seed=3) as server:
        job = bf.BatchJob.create(
            _requests(20), root, client=server.client(), limits=bf.BatchLimits(max_requests=10)
        )
        job.submit()
        (recorded,) = [
            b for b in _job_batches(server, job.job_id) if b["metadata"]["batchframe_shard"] == "0"
        ]
        # Someone else creates a second batch for shard 0, attempt 0, with the same tags.
        client = server.client()
        dup = client.batches.create(
            input_file_id=recorded["input_file_id"],
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=recorded["metadata"],
        )
        with caplog.at_level(logging.WARNING, logger="batchframe"):
            job.wait(poll_interval=0.02, progress=False)
        status = job.status()
        results = job.collect()
        job.close()
        assert server.batch(dup.id)["status"] == "cancelled"
        assert server.batch(dup.id)["request_counts"]["completed"] == 0
    assert f"batch {dup.id} duplicates shard attempt 00000.a0" in caplog.text
    assert "cancelled" in caplog.text
    row = status.filter(pl.col("shard") == 0, pl.col("attempt") == 0)
    assert row["duplicate_batch_ids"].to_list() == [dup.id]
    assert row["batch_id"].to_list() == [recorded["id"]]
    assert results.ok.height == 20
    assert _cli.main(["status", root]) == 0
    assert "1 duplicate batch(es) found" in capsys.readouterr().out


@pytest.mark.slow
def test_two_drivers_script_small() -> None:
    """benchmarks/reliability/two_drivers.py, one trial per takeover kind, 8 shards."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reliability"))
    try:
        import two_drivers
    finally:
        sys.path.pop(0)
    figures = two_drivers.main(["--trials", "1", "--shards", "8"])
    assert len(figures) == 2
    for fig in figures:
        assert fig["duplicates that ran"] == 0, fig
        assert fig["lost rows"] == 0 and fig["duplicated rows"] == 0, fig
        assert fig["ok"] == 80, fig


def test_batch_made_by_a_displaced_driver_is_adopted_not_made_again(tmp_path: Path) -> None:
    """A batch for a shard this driver still holds as pending (made by the driver it
    took over from, from that driver's own upload) is adopted: no second batch."""
    root = tmp_path / "job"
    with bf.LocalBatchServer(seed=6) as server:
        job = bf.BatchJob.create(
            _requests(20),
            str(root),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=10),
            max_in_flight=1,
        )
        job.submit()  # shard 0 only
        (first,) = _job_batches(server, job.job_id)
        shard1 = job._m.record(1, 0)
        assert shard1 is not None and shard1.status in ("pending", "uploaded")
        client = server.client()
        data = (root / "shards" / "00001.jsonl").read_bytes()
        file_id = client.files.create(file=("other.jsonl", data), purpose="batch").id
        tags = dict(first["metadata"], batchframe_shard="1", batchframe_sha256=shard1.sha256)
        theirs = client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=tags,
        )
        job._last_scan = None  # scan at the next step, as after a takeover
        job.wait(poll_interval=0.02, progress=False)
        status = job.status()
        results = job.collect()
        job.close()
        batches = _job_batches(server, job.job_id)
    assert len(batches) == 2
    assert status.filter(pl.col("shard") == 1)["batch_id"].to_list() == [theirs.id]
    assert status["duplicate_batch_ids"].null_count() == status.height
    assert results.ok.height == 20
