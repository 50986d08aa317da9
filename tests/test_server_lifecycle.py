"""Batch lifecycle of LocalBatchServer: statuses, timestamps, files, counts, cancel, expiry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from conftest_server import TERMINAL, chat_line, read_lines, run_batch, submit, wait_for
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

import batchframe as bf


@pytest.fixture
def server() -> Iterator[bf.LocalBatchServer]:
    with bf.LocalBatchServer() as s:
        yield s


@pytest.fixture
def client(server: bf.LocalBatchServer) -> openai.OpenAI:
    return server.client(max_retries=0)


def test_completed_batch_objects_and_files(
    server: bf.LocalBatchServer, client: openai.OpenAI
) -> None:
    lines = [chat_line(i) for i in range(50)]
    created = submit(client, lines, metadata={"job": "j1", "shard": "0"})
    assert created.status == "validating"
    assert created.request_counts is not None
    assert created.request_counts.total == 0
    batch = wait_for(client, created.id)
    raw = client.batches.with_raw_response.retrieve(batch.id).http_response.json()
    Batch.model_validate(raw, strict=True)
    assert raw["object"] == "batch"
    assert raw["status"] == "completed"
    assert raw["endpoint"] == "/v1/chat/completions"
    assert raw["model"] == "gpt-4o-mini"
    assert raw["completion_window"] == "24h"
    assert raw["metadata"] == {"job": "j1", "shard": "0"}
    assert raw["errors"] is None
    assert raw["request_counts"] == {"total": 50, "completed": 50, "failed": 0}
    assert raw["expires_at"] == raw["created_at"] + 86_400
    for key in ("in_progress_at", "finalizing_at", "completed_at"):
        assert raw["created_at"] <= raw[key] <= time.time()
    for key in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert raw[key] is None
    usage = raw["usage"]
    assert usage["input_tokens"] > 0
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert raw["error_file_id"] is None  # nothing failed: no error file
    out = client.files.retrieve(raw["output_file_id"])
    FileObject.model_validate(
        client.files.with_raw_response.retrieve(out.id).http_response.json(), strict=True
    )
    assert out.purpose == "batch_output"
    assert out.filename == f"{batch.id}_output.jsonl"
    results = read_lines(client, out.id)
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(50))
    for result in results:
        assert set(result) == {"id", "custom_id", "response", "error"}
        assert result["id"].startswith("batch_req_")
        assert result["error"] is None
        assert result["response"]["status_code"] == 200
        assert result["response"]["request_id"].startswith("req_")
        completion = ChatCompletion.model_validate(result["response"]["body"])
        assert completion.choices[0].message.content == f"hello {result['custom_id'][1:]}"
    assert server.batches_created()[0]["id"] == batch.id


def test_output_order_is_shuffled_and_reproducible() -> None:
    lines = [chat_line(i) for i in range(200)]

    def order(seed: int) -> list[str]:
        with bf.LocalBatchServer(seed=seed) as server:
            client = server.client()
            batch = run_batch(client, lines)
            return [r["custom_id"] for r in read_lines(client, batch.output_file_id)]

    first, again, other = order(7), order(7), order(8)
    assert first == again
    assert first != other
    assert first != [f"r{i}" for i in range(200)]
    assert sorted(first) == sorted(other)


def test_validation_seconds_and_progress() -> None:
    with bf.LocalBatchServer(validation_seconds=0.3, requests_per_second=100) as server:
        client = server.client()
        batch = submit(client, [chat_line(i) for i in range(40)])
        time.sleep(0.1)
        assert client.batches.retrieve(batch.id).status == "validating"
        running = wait_for(client, batch.id, {"in_progress"})
        assert running.in_progress_at is not None
        time.sleep(0.15)
        middle = client.batches.retrieve(batch.id)
        assert middle.status == "in_progress"
        assert middle.request_counts is not None
        assert 0 < middle.request_counts.completed < 40
        assert middle.request_counts.total == 40
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        assert done.in_progress_at is not None
        assert done.completed_at is not None
        assert done.completed_at - done.created_at >= 0


def test_cancel_in_progress_keeps_partial_results() -> None:
    with bf.LocalBatchServer(requests_per_second=50) as server:
        client = server.client()
        batch = submit(client, [chat_line(i) for i in range(100)])
        wait_for(client, batch.id, {"in_progress"})
        time.sleep(0.2)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at is not None
        assert client.batches.cancel(batch.id).status in {"cancelling", "cancelled"}  # idempotent
        done = wait_for(client, batch.id)
        assert done.status == "cancelled"
        assert done.cancelled_at is not None
        assert done.completed_at is None
        counts = done.request_counts
        assert counts is not None
        assert counts.total == 100
        assert 0 < counts.completed < 100
        assert counts.completed + counts.failed == 100
        ok = read_lines(client, done.output_file_id)
        errors = read_lines(client, done.error_file_id)
        assert len(ok) == counts.completed
        assert len(errors) == counts.failed
        assert {r["custom_id"] for r in ok}.isdisjoint({r["custom_id"] for r in errors})
        for line in errors:
            assert line["response"] is None
            assert line["error"]["code"] == "batch_cancelled"
        Batch.model_validate(server.batch(batch.id), strict=True)


def test_cancel_while_validating_and_after_the_end() -> None:
    with bf.LocalBatchServer(validation_seconds=5) as server:
        client = server.client(max_retries=0)
        batch = submit(client, [chat_line(1)])
        assert client.batches.cancel(batch.id).status == "cancelling"
        done = wait_for(client, batch.id, timeout=3)
        assert done.status == "cancelled"
        assert done.in_progress_at is None
        assert done.output_file_id is None
        assert done.error_file_id is None
        assert client.batches.cancel(batch.id).status == "cancelled"  # idempotent
        with pytest.raises(openai.NotFoundError):
            client.batches.cancel("batch_missing")
    with bf.LocalBatchServer() as server:
        client = server.client(max_retries=0)
        batch = run_batch(client, [chat_line(1)])
        with pytest.raises(openai.ConflictError) as info:
            client.batches.cancel(batch.id)
        assert info.value.status_code == 409
        assert "completed" in info.value.message


def test_expiry_keeps_finished_lines() -> None:
    with bf.LocalBatchServer(completion_window_seconds=0.6, requests_per_second=50) as server:
        client = server.client()
        batch = submit(client, [chat_line(i) for i in range(100)])
        assert batch.expires_at == batch.created_at or batch.expires_at == batch.created_at + 1
        done = wait_for(client, batch.id)
        assert done.status == "expired"
        assert done.expired_at is not None
        assert done.completed_at is None
        counts = done.request_counts
        assert counts is not None
        assert 0 < counts.completed < 100
        assert counts.completed + counts.failed == 100
        ok = read_lines(client, done.output_file_id)
        expired = read_lines(client, done.error_file_id)
        assert len(ok) == counts.completed
        assert {line["error"]["code"] for line in expired} == {"batch_expired"}
        assert all(line["response"] is None for line in expired)
        assert len({r["custom_id"] for r in ok + expired}) == 100


def test_expiry_while_validating() -> None:
    with bf.LocalBatchServer(completion_window_seconds=0.2, validation_seconds=5) as server:
        client = server.client()
        done = run_batch(client, [chat_line(1)])
        assert done.status == "expired"
        assert done.output_file_id is None
        assert done.error_file_id is None


def test_all_failed_has_no_output_file(client: openai.OpenAI) -> None:
    lines = [
        chat_line(i, body={"model": "gpt-4o-mini"}) for i in range(3)
    ]  # no messages: 400 per line
    done = run_batch(client, lines)
    assert done.status == "completed"
    assert done.output_file_id is None
    counts = done.request_counts
    assert counts is not None
    assert (counts.completed, counts.failed) == (0, 3)
    for line in read_lines(client, done.error_file_id):
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["param"] == "messages"


def test_output_expires_after(client: openai.OpenAI) -> None:
    done = run_batch(
        client, [chat_line(1)], output_expires_after={"anchor": "created_at", "seconds": 7200}
    )
    out = client.files.retrieve(done.output_file_id)
    assert out.expires_at == out.created_at + 7200


def test_list_batches_paging(server: bf.LocalBatchServer, client: openai.OpenAI) -> None:
    file_id = client.files.create(file=("a.jsonl", b'{"custom_id":"a"}\n'), purpose="batch").id
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(25)
    ]
    newest_first = list(reversed(ids))
    page = client.batches.list()
    assert [b.id for b in page.data] == newest_first[:20]  # default limit 20
    assert page.has_more is True
    raw = client.batches.with_raw_response.list(limit=10).http_response.json()
    assert raw["object"] == "list"
    assert raw["first_id"] == newest_first[0]
    assert raw["last_id"] == newest_first[9]
    assert [b.id for b in client.batches.list(limit=10)] == newest_first  # auto-paging ends
    last = client.batches.list(limit=10, after=newest_first[19])
    assert [b.id for b in last.data] == newest_first[20:]
    assert last.has_more is False
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)
    assert [b["id"] for b in server.batches_created()] == ids
    assert [b["id"] for b in server.batches()] == ids
    server.wait_idle(5)
    assert {b["status"] for b in server.batches()} == {"failed"}


def test_many_batches_run_concurrently(client: openai.OpenAI) -> None:
    batches = [submit(client, [chat_line(f"{j}-{i}") for i in range(30)]) for j in range(10)]
    for batch in batches:
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        assert len(read_lines(client, done.output_file_id)) == 30
    assert all(b.status in TERMINAL for b in client.batches.list())
