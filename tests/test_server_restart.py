"""state_dir: a restarted server keeps files and batches, and finishes running batches."""

from __future__ import annotations

import time
from pathlib import Path

from conftest_server import chat_line, read_lines, run_batch, submit, upload, wait_for
from openai.types import Batch

import batchframe as bf


def test_restart_keeps_files_and_batches(tmp_path: Path) -> None:
    with bf.LocalBatchServer(state_dir=tmp_path) as server:
        client = server.client()
        done = run_batch(client, [chat_line(i) for i in range(10)], metadata={"job": "a"})
        extra = client.files.create(file=("x.txt", b"hello"), purpose="user_data")
        output = client.files.content(done.output_file_id).content
        files = sorted(f.id for f in client.files.list())
    with bf.LocalBatchServer(state_dir=tmp_path) as again:
        client = again.client()
        assert client.batches.retrieve(done.id) == done
        Batch.model_validate(again.batch(done.id), strict=True)
        assert client.files.content(done.output_file_id).content == output
        assert client.files.content(extra.id).content == b"hello"
        assert sorted(f.id for f in client.files.list()) == files
        assert [b.id for b in client.batches.list()] == [done.id]
        assert again.batches_created() == []  # the call log is per process
        newer = run_batch(client, [chat_line(1)])
        assert [b.id for b in client.batches.list()] == [newer.id, done.id]
        client.files.delete(extra.id)
    with bf.LocalBatchServer(state_dir=tmp_path) as third:
        assert extra.id not in {f["id"] for f in third.files()}


def test_restart_finishes_running_and_cancelling_batches(tmp_path: Path) -> None:
    with bf.LocalBatchServer(state_dir=tmp_path, requests_per_second=20) as server:
        client = server.client()
        running = submit(client, [chat_line(i) for i in range(100)])
        cancelled = submit(client, [chat_line(i) for i in range(100)])
        wait_for(client, running.id, {"in_progress"})
        wait_for(client, cancelled.id, {"in_progress"})
        time.sleep(0.1)
        client.batches.cancel(cancelled.id)
        server._lifecycle._stop.set()  # freeze the worker before it finishes the cancel
    with bf.LocalBatchServer(state_dir=tmp_path) as again:
        client = again.client()
        done = wait_for(client, running.id)
        assert done.status == "completed"
        assert done.request_counts.completed == 100
        assert len(read_lines(client, done.output_file_id)) == 100
        stopped = wait_for(client, cancelled.id)
        assert stopped.status == "cancelled"
        errors = read_lines(client, stopped.error_file_id)
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        assert stopped.request_counts.failed == len(errors)


def test_state_dir_validating_batch_resumes(tmp_path: Path) -> None:
    with bf.LocalBatchServer(state_dir=tmp_path, validation_seconds=30) as server:
        client = server.client()
        file_id = upload(client, [chat_line(1)])
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.batches.retrieve(batch.id).status == "validating"
    with bf.LocalBatchServer(state_dir=tmp_path) as again:
        client = again.client()
        assert wait_for(client, batch.id).status == "completed"
