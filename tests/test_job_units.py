"""Pure parts of the job: manifest round trip and transitions, lock, scheduling."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import subprocess
import sys

import orjson
import pytest

from batchframe._manifest import (
    FORMAT_VERSION,
    LOCK_FILE,
    MANIFEST_FILE,
    TRANSITIONS,
    LockInfo,
    Manifest,
    ShardAttempt,
    acquire_lock,
    release_lock,
)
from batchframe._schedule import PollBackoff, QueueBounds, admissible
from batchframe._storage import Storage
from batchframe.exceptions import (
    APIError,
    InvalidTransitionError,
    JobError,
    JobLockedError,
    JobNotFoundError,
    JobNotSettledError,
    JobTimeoutError,
    ManifestVersionError,
)


def _record(
    shard: int, *, tokens: int = 100, status: str = "pending", model: str = "m", attempt: int = 0
) -> ShardAttempt:
    r = ShardAttempt(
        shard=shard,
        attempt=attempt,
        path=f"shards/{shard:05d}.jsonl",
        sha256="x",
        n_requests=1,
        est_tokens=tokens,
        model=model,
    )
    r.status = status  # type: ignore[assignment]
    return r


def _manifest(records: list[ShardAttempt]) -> Manifest:
    return Manifest(
        job_id=Manifest.new_job_id(),
        endpoint="/v1/chat/completions",
        fingerprint="f" * 64,
        n_requests=len(records),
        limits={"max_requests": 10},
        options={"max_attempts": 3},
        records=records,
    )


def test_manifest_round_trip(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    m = _manifest([_record(0), _record(1, status="completed")])
    m.records[1].batch_id = "batch_1"
    m.save(storage)
    data = orjson.loads(storage.read_bytes(MANIFEST_FILE))
    assert next(iter(data)) == "format_version"
    assert data["format_version"] == FORMAT_VERSION
    back = Manifest.load(storage)
    assert back.to_dict() | {"updated_at": 0} == m.to_dict() | {"updated_at": 0}


def test_manifest_missing_and_newer(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    with pytest.raises(JobNotFoundError, match="no batchframe job"):
        Manifest.load(storage)
    m = _manifest([])
    data = m.to_dict() | {"format_version": FORMAT_VERSION + 1}
    storage.write_bytes(MANIFEST_FILE, orjson.dumps(data))
    with pytest.raises(ManifestVersionError, match="upgrade batchframe"):
        Manifest.load(storage)


def test_record_to_dict_is_asdict_with_copies() -> None:
    r = _record(3, status="completed")
    r.previous_batch_ids = ["batch_a"]
    r.batch_errors = [{"code": "x", "message": "m", "param": None, "line": 2}]
    r.usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 1}}
    r.duplicates = [{"batch_id": "batch_b", "status": "cancelled"}]
    r.batch_timestamps = {"completed_at": 7}
    plain = r.to_dict()
    assert plain == dataclasses.asdict(r)
    assert list(plain) == [f.name for f in dataclasses.fields(ShardAttempt)]
    # the dict is a snapshot: changing the record in place leaves it as it was
    r.previous_batch_ids.append("batch_c")
    r.usage["input_tokens_details"]["cached_tokens"] = 9
    r.batch_errors[0]["line"] = 3
    assert plain["previous_batch_ids"] == ["batch_a"]
    assert plain["usage"]["input_tokens_details"] == {"cached_tokens": 1}
    assert plain["batch_errors"][0]["line"] == 2


def test_manifest_save_writes_and_checks_only_when_something_changed(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    m = _manifest([_record(0), _record(1)])
    checks: list[int] = []
    m.save(storage, before_write=lambda: checks.append(1))
    assert checks == [1]
    written = storage.read_bytes(MANIFEST_FILE)
    m.save(storage, before_write=lambda: checks.append(1))  # nothing new: no check, no write
    assert checks == [1]
    assert storage.read_bytes(MANIFEST_FILE) == written
    m.records[1].completed = 1
    m.save(storage, before_write=lambda: checks.append(1))
    assert checks == [1, 1]
    assert Manifest.load(storage).records[1].completed == 1

    def refuse() -> None:
        raise JobLockedError("taken over")

    m.records[0].completed = 1
    before = storage.read_bytes(MANIFEST_FILE)
    with pytest.raises(JobLockedError):
        m.save(storage, before_write=refuse)
    assert storage.read_bytes(MANIFEST_FILE) == before  # refused before any write


@pytest.mark.parametrize(
    ("start", "end", "ok"),
    [
        ("pending", "uploaded", True),
        ("uploaded", "submitting", True),
        ("submitting", "validating", True),
        ("submitting", "completed", True),
        ("validating", "completed", True),
        ("in_progress", "finalizing", True),
        ("failed", "uploaded", True),
        ("completed", "in_progress", False),
        ("pending", "submitting", False),
        ("expired", "uploaded", False),
        ("finalizing", "in_progress", False),
    ],
)
def test_transitions(start: str, end: str, ok: bool) -> None:
    r = _record(0, status=start)
    if ok:
        r.move(end)  # type: ignore[arg-type]
        assert r.status == end
    else:
        with pytest.raises(InvalidTransitionError, match="cannot move") as info:
            r.move(end)  # type: ignore[arg-type]
        assert isinstance(info.value, JobError) and isinstance(info.value, RuntimeError)
        assert r.status == start


def test_transition_table_covers_every_status() -> None:
    from typing import get_args

    from batchframe._manifest import RecordStatus

    assert set(TRANSITIONS) == set(get_args(RecordStatus))


def test_lock_same_process_and_release(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    first = acquire_lock(storage)
    second = acquire_lock(storage)  # same process: taken over
    assert second.token != first.token
    release_lock(storage, first)  # not the holder any more: no effect
    assert storage.exists(LOCK_FILE)
    release_lock(storage, second)
    assert not storage.exists(LOCK_FILE)


def test_lock_live_other_process_then_dead_one_is_taken_over(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = Storage(str(tmp_path))
    code = (
        "import sys, time\n"
        "from batchframe._storage import Storage\n"
        "from batchframe._manifest import acquire_lock\n"
        f"acquire_lock(Storage({str(tmp_path)!r}))\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"locked"
        host = socket.gethostname()
        with pytest.raises(JobLockedError, match=f"process {proc.pid} on host `{host}`") as info:
            acquire_lock(storage)
        assert "being driven by" in str(info.value)
        assert "holding it since 20" in str(info.value)  # when it took the lock
        with pytest.raises(JobLockedError):
            acquire_lock(storage)
    finally:
        proc.kill()
        proc.wait()
    # The holder is dead (killed, reaped): taken over without break_lock, with a warning.
    with caplog.at_level(logging.WARNING, logger="batchframe"):
        lock = acquire_lock(storage)
    assert lock.pid == os.getpid()
    assert orjson.loads(storage.read_bytes(LOCK_FILE))["token"] == lock.token
    (warning,) = [r for r in caplog.records if r.name == "batchframe"]
    assert warning.levelno == logging.WARNING
    assert f"process {proc.pid}" in warning.getMessage()
    assert "no longer running" in warning.getMessage()


def _foreign_lock(storage: Storage, **fields: object) -> None:
    data: dict[str, object] = {
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "started": 0.0,
        "token": "theirs",
        "proc_start": None,
    }
    data.update(fields)
    storage.write_bytes(LOCK_FILE, orjson.dumps(data))


def test_lock_pid_reused_by_another_process_is_taken_over(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from batchframe._manifest import _proc_start

    storage = Storage(str(tmp_path))
    parent = os.getppid()  # alive, on this host, but not the process that took the lock
    if _proc_start(parent) is None:
        pytest.skip("no /proc start times on this platform")
    _foreign_lock(storage, proc_start="1")
    with caplog.at_level(logging.WARNING, logger="batchframe"):
        assert acquire_lock(storage).pid == os.getpid()
    assert "no longer running" in caplog.text
    # The same pid with its real start time is a live holder.
    _foreign_lock(storage, proc_start=_proc_start(parent))
    with pytest.raises(JobLockedError, match=f"process {parent} on host"):
        acquire_lock(storage)
    assert acquire_lock(storage, break_lock=True).pid == os.getpid()


def test_lock_other_host(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    storage.write_bytes(
        LOCK_FILE, orjson.dumps({"host": "elsewhere", "pid": 1, "started": 0, "token": "t"})
    )
    with pytest.raises(
        JobLockedError, match=r"`elsewhere`.*cannot be checked from here.*if that process is gone"
    ):
        acquire_lock(storage)
    assert acquire_lock(storage, break_lock=True).host != "elsewhere"


@pytest.mark.parametrize(
    ("field", "value"),
    [("pid_ns", "pid:[1]"), ("boot_id", "another-boot")],
    ids=["another-container", "before-a-reboot"],
)
def test_lock_that_cannot_be_checked_needs_break_lock(tmp_path, field: str, value: str) -> None:
    """Same host name, but the pid means nothing here: never taken over by itself."""
    storage = Storage(str(tmp_path))
    mine = LockInfo.mine()
    if getattr(mine, field) is None:
        pytest.skip(f"no {field} on this platform")
    for pid in (12345678, os.getpid()):  # a dead pid here, or even this very pid
        _foreign_lock(storage, pid=pid, **{field: value})
        with pytest.raises(JobLockedError, match=r"cannot be checked from here"):
            acquire_lock(storage)
    assert acquire_lock(storage, break_lock=True).token != "theirs"


def test_lock_unreadable_needs_break_lock(tmp_path) -> None:
    storage = Storage(str(tmp_path))
    for junk in (b"", b"[1, 2]", b'{"host": "x"}'):  # killed while writing it, or damaged
        storage.write_bytes(LOCK_FILE, junk)
        with pytest.raises(JobLockedError, match=r"unreadable `lock\.json`.*break_lock=True"):
            acquire_lock(storage)
    assert acquire_lock(storage, break_lock=True).pid == os.getpid()


def test_exception_tree() -> None:
    timeout = JobTimeoutError("slow")
    assert isinstance(timeout, TimeoutError) and isinstance(timeout, JobNotSettledError)
    assert isinstance(timeout, JobError)
    assert issubclass(InvalidTransitionError, RuntimeError)
    plain = APIError("boom")
    assert (plain.operation, plain.status_code, plain.code, plain.retryable) == (
        None,
        None,
        None,
        False,
    )
    err = APIError(
        "refused", operation="batches.create", status_code=400, code="bad", retryable=False
    )
    back = pickle.loads(pickle.dumps(err))
    assert (back.operation, back.status_code, back.code, str(back)) == (
        "batches.create",
        400,
        "bad",
        "refused",
    )
    import batchframe as bf
    from batchframe import _api

    assert not hasattr(_api, "APICallError")
    for name in ("JobTimeoutError", "InvalidTransitionError"):
        assert getattr(bf, name) is getattr(bf.exceptions, name)
        assert name in (bf.exceptions.__doc__ or "")


def test_admission_known_limit() -> None:
    records = [_record(i, tokens=100) for i in range(5)]
    chosen = admissible(records, queue_token_limit=250, learned={}, max_in_flight=None, now=0)
    assert [r.shard for r in chosen] == [0, 1]
    records[0].status = "in_progress"
    records[1].status = "completed"
    chosen = admissible(records, queue_token_limit=250, learned={}, max_in_flight=None, now=0)
    assert [r.shard for r in chosen] == [2]
    # Per-model dict; another model has its own budget.
    records.append(_record(9, tokens=100, model="other"))
    chosen = admissible(
        records, queue_token_limit={"m": 250, "other": 100}, learned={}, max_in_flight=None, now=0
    )
    assert [r.shard for r in chosen] == [2, 9]


def test_admission_oversized_shard_alone_and_backfill() -> None:
    records = [_record(0, tokens=1000), _record(1, tokens=10)]
    chosen = admissible(records, queue_token_limit=100, learned={}, max_in_flight=None, now=0)
    assert [r.shard for r in chosen] == [0]  # nothing in flight: admitted even though too big
    records = [
        _record(0, tokens=60, status="in_progress"),
        _record(1, tokens=60),
        _record(2, tokens=30),
    ]
    chosen = admissible(records, queue_token_limit=100, learned={}, max_in_flight=None, now=0)
    assert [r.shard for r in chosen] == [2]


def test_admission_max_in_flight_and_not_before() -> None:
    records = [_record(i) for i in range(4)]
    records[0].status = "validating"
    records[1].not_before = 50.0
    chosen = admissible(records, queue_token_limit=None, learned={}, max_in_flight=2, now=10.0)
    assert [r.shard for r in chosen] == [2]
    chosen = admissible(records, queue_token_limit=None, learned={}, max_in_flight=None, now=60.0)
    assert [r.shard for r in chosen] == [1, 2, 3]


def test_admission_learned_bounds() -> None:
    bounds = QueueBounds()
    bounds.accepted(200)
    bounds.rejected(300)
    records = [
        _record(0, tokens=100, status="in_progress"),
        _record(1, tokens=100),
        _record(2, tokens=100),
    ]
    records[1].status = "in_progress"
    chosen = admissible(
        records, queue_token_limit=None, learned={"m": bounds}, max_in_flight=None, now=0
    )
    assert chosen == []  # 300 would reach the known-bad total
    records[0].status = "completed"
    chosen = admissible(
        records, queue_token_limit=None, learned={"m": bounds}, max_in_flight=None, now=0
    )
    assert [r.shard for r in chosen] == [2]
    # Contradicting evidence resets the upper bound.
    bounds.accepted(400)
    assert bounds.upper is None and bounds.lower == 400


def test_poll_backoff() -> None:
    b = PollBackoff(start=2.0, factor=2.0, cap=10.0)
    assert [b.next() for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 2.0
    assert PollBackoff(interval=0.1).next() == 0.1


def _line(cid: str) -> bytes:
    return (
        orjson.dumps(
            {
                "custom_id": cid,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": cid}]},
            }
        )
        + b"\n"
    )


def _ok_line(cid: str) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    line = {
        "id": "br",
        "custom_id": cid,
        "response": {"status_code": 200, "request_id": "r", "body": body},
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


def _err_line(cid: str, status: int) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": "boom", "type": kind, "param": None, "code": None}}
    line = {
        "id": "br",
        "custom_id": cid,
        "response": {"status_code": status, "request_id": "r", "body": body},
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


def test_record_outcome_and_child(tmp_path) -> None:
    from batchframe._retry import record_outcome, shard_ids, write_child

    storage = Storage(str(tmp_path))
    ids = ["a", 'b"c', "d", "e"]  # an escaped quote takes the slow path
    storage.write_bytes("shards/00000.jsonl", b"".join(_line(i) for i in ids))
    assert shard_ids(storage, "shards/00000.jsonl") == ids
    storage.write_bytes("outputs/00000.a0.jsonl", _ok_line("a") + _ok_line("zzz"))
    storage.write_bytes("errors/00000.a0.jsonl", _err_line('b"c', 500) + _err_line("d", 400))
    r = _record(0, status="completed")
    r.batch_id = "batch_1"
    r.output_path, r.error_path = "outputs/00000.a0.jsonl", "errors/00000.a0.jsonl"
    out = record_outcome(storage, r, endpoint="/v1/chat/completions", json_schema=None)
    assert out.ok["custom_id"].to_list() == ["a"]  # the foreign "zzz" line is dropped
    failed = {row["custom_id"]: row for row in out.failed.iter_rows(named=True)}
    assert set(failed) == {'b"c', "d", "e"}
    assert failed['b"c']["retryable"] and failed['b"c']["stage"] == "request"
    assert not failed["d"]["retryable"]
    assert failed["e"]["stage"] == "missing" and failed["e"]["retryable"]
    child = write_child(storage, r.path, "shards/00000.a1.jsonl", {'b"c', "e"})
    assert child.n_requests == 2
    assert storage.read_bytes(child.path) == _line('b"c') + _line("e")  # verbatim lines

    r.status = "failed"
    r.batch_errors = [{"code": "invalid_json_line", "message": "bad", "line": 2}]
    out = record_outcome(storage, r, endpoint="/v1/chat/completions", json_schema=None)
    assert out.ok.height == 0 and set(out.failed["stage"]) == {"batch"}
    assert not out.failed["retryable"].any()
    assert "input line 2" in out.failed["error_message"][0]

    local = _record(0, status="cancelled")
    out = record_outcome(storage, local, endpoint="/v1/chat/completions", json_schema=None)
    assert set(out.failed["stage"]) == {"cancelled"} and out.failed.height == 4


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([{"code": "token_limit_exceeded", "message": "x"}], True),
        ([{"code": None, "message": "Enqueued token limit reached for gpt-4o"}], True),
        (
            [
                {
                    "code": None,
                    "message": "Enqueued request limit reached for text-embedding-3-small",
                }
            ],
            True,
        ),
        ([{"code": "invalid_json_line", "message": "bad"}], False),
        ([], False),
    ],
)
def test_token_limit_detection(errors: list[dict[str, object]], expected: bool) -> None:
    from batchframe._retry import is_token_limit_failure

    assert is_token_limit_failure(errors) is expected
