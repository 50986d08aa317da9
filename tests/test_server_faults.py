"""Fault injection: failing requests inside batches, failing API calls, lost answers."""

from __future__ import annotations

import openai
import pytest
from conftest_server import chat_line, read_lines, run_batch, submit, upload, wait_for

import batchframe as bf


def failed_ids(seed: int, rate: float = 0.3) -> list[str]:
    with bf.LocalBatchServer(failure_rate=rate, seed=seed) as server:
        client = server.client()
        done = run_batch(client, [chat_line(i) for i in range(200)])
        counts = done.request_counts
        errors = read_lines(client, done.error_file_id)
        ok = read_lines(client, done.output_file_id)
        assert counts.failed == len(errors)
        assert counts.completed == len(ok)
        assert counts.completed + counts.failed == 200
        for line in errors:
            assert line["error"] is None
            assert line["response"]["status_code"] == 500
            assert line["response"]["body"]["error"]["type"] == "server_error"
        return sorted(line["custom_id"] for line in errors)


def test_failure_rate_is_reproducible() -> None:
    first = failed_ids(3)
    assert 30 < len(first) < 90
    assert failed_ids(3) == first
    assert failed_ids(4) != first


def test_failure_rate_resubmission_gets_fresh_draws() -> None:
    with bf.LocalBatchServer(failure_rate=0.5, seed=1) as server:
        client = server.client()
        pending = [chat_line(i) for i in range(60)]
        for _ in range(20):
            done = run_batch(client, pending)
            failed = {line["custom_id"] for line in read_lines(client, done.error_file_id)}
            pending = [line for line in pending if line["custom_id"] in failed]
            if not pending:
                break
        assert pending == []


def test_api_error_rate_with_retries_still_succeeds() -> None:
    with bf.LocalBatchServer(api_error_rate=0.3, seed=5, retry_after_seconds=0.001) as server:
        client = server.client(max_retries=12)
        done = run_batch(client, [chat_line(i) for i in range(30)])
        assert done.status == "completed"
        assert len(read_lines(client, done.output_file_id)) == 30
        assert [b.id for b in client.batches.list()] == [done.id]
        faults = [c for c in server.calls if c.fault == "api_error_rate"]
        assert faults
        assert {c.status for c in faults} <= {429, 500}
        assert len(server.batches_created()) == 1  # faults happen before the call takes effect


def test_rate_limit_answer_carries_retry_after() -> None:
    with bf.LocalBatchServer(api_error_rate=1.0, seed=0, retry_after_seconds=2.5) as server:
        client = server.client(max_retries=0)
        seen = set()
        for _ in range(20):
            with pytest.raises(openai.APIStatusError) as info:
                client.batches.list()
            seen.add(info.value.status_code)
            if info.value.status_code == 429:
                assert isinstance(info.value, openai.RateLimitError)
                assert info.value.response.headers["retry-after"] == "3"
                assert info.value.response.headers["retry-after-ms"] == "2500"
                assert info.value.code == "rate_limit_exceeded"
            else:
                assert isinstance(info.value, openai.InternalServerError)
        assert seen == {429, 500}


def test_fail_next_before_and_after() -> None:
    with bf.LocalBatchServer() as server:
        client = server.client(max_retries=0)
        file_id = upload(client, [chat_line(1)])
        server.fail_next("POST", "/v1/batches", status=500)
        with pytest.raises(openai.InternalServerError):
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert server.batches_created() == []
        # the answer is lost after the batch was created: a retrying client makes a duplicate
        server.fail_next("POST", "/v1/batches", status=502, after=True)
        retrying = server.client(max_retries=1)
        batch = retrying.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        created = server.batches_created()
        assert len(created) == 2
        assert created[1]["id"] == batch.id
        assert [c.fault for c in server.calls if c.path == "/v1/batches"] == [
            "fail_next",
            "fail_next",
            None,
        ]
        server.fail_next("GET", "/v1/batches/*", status=429, times=2)
        with pytest.raises(openai.RateLimitError):
            client.batches.retrieve(batch.id)
        assert wait_for(retrying, batch.id).status == "completed"
        server.clear_calls()
        assert server.calls == []


def test_per_line_http_errors_from_echo() -> None:
    with bf.LocalBatchServer() as server:
        client = server.client()
        lines = [chat_line(1), chat_line(2, body={"messages": [{"role": "user", "content": "x"}]})]
        lines.append(
            chat_line(
                3,
                body={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "y" * 600_000}],
                },
            )
        )
        batch = submit(client, lines)
        done = wait_for(client, batch.id)
        assert done.status == "failed"  # line 2 has no model: the file is refused
        lines[1]["body"]["model"] = "gpt-4o-mini"
        done = run_batch(client, lines)
        errors = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
        assert set(errors) == {"r3"}
        error = errors["r3"]["response"]["body"]["error"]
        assert error["code"] == "context_length_exceeded"
        assert errors["r3"]["response"]["status_code"] == 400
