"""Input-file validation (batch -> failed with errors.data) and create-time HTTP errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from conftest_server import chat_line, jsonl, run_batch, submit, upload, wait_for
from openai.types import Batch

import batchframe as bf
from batchframe._server import estimate_body_tokens


@pytest.fixture
def server() -> Iterator[bf.LocalBatchServer]:
    with bf.LocalBatchServer(max_requests_per_file=10, max_file_bytes=5_000) as s:
        yield s


@pytest.fixture
def client(server: bf.LocalBatchServer) -> openai.OpenAI:
    return server.client(max_retries=0)


def errors_of(batch: Any) -> list[tuple[str | None, int | None]]:
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.in_progress_at is None
    assert batch.output_file_id is None
    assert batch.error_file_id is None
    assert batch.errors is not None
    assert batch.errors.object == "list"
    return [(e.code, e.line) for e in batch.errors.data]


def with_body(i: int, **body: Any) -> dict[str, Any]:
    line = chat_line(i)
    line["body"] = {**line["body"], **body}
    return line


def drop(line: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != key}


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        (drop(chat_line(2), "custom_id"), "custom_id"),
        (drop(chat_line(2), "method"), "method"),
        (drop(chat_line(2), "url"), "url"),
        (drop(chat_line(2), "body"), "body"),
        (chat_line(2, custom_id=""), "custom_id"),
        (chat_line(2, custom_id=7), "custom_id"),
        (chat_line(2, method="GET"), "method"),
        (chat_line(2, url=5), "url"),
        (chat_line(2, body="text"), "body"),
        (chat_line(2, body={"messages": []}), "body.model"),
        (with_body(2, stream=True), "body.stream"),
        ([1, 2, 3], ""),
    ],
)
def test_invalid_request(client: openai.OpenAI, bad: Any, param: str) -> None:
    batch = run_batch(client, [chat_line(1), bad, chat_line(3)])
    assert errors_of(batch) == [("invalid_request", 2)]
    assert batch.errors.data[0].param == param
    Batch.model_validate(
        client.batches.with_raw_response.retrieve(batch.id).http_response.json(), strict=True
    )


def test_invalid_json_lines_all_reported(client: openai.OpenAI) -> None:
    data = jsonl([chat_line(1), "{not json", chat_line(3), '{"custom_id": ', b"\xef\xbb\xbf{}"])
    batch = run_batch(client, data)
    assert errors_of(batch) == [
        ("invalid_json_line", 2),
        ("invalid_json_line", 4),
        ("invalid_json_line", 5),
    ]
    assert batch.errors.data[0].message == "This line is not parseable as valid JSON."


def test_duplicate_url_and_model_mismatch(client: openai.OpenAI) -> None:
    batch = run_batch(client, [chat_line(1), chat_line(2), chat_line(1)])
    assert errors_of(batch) == [("duplicate_custom_id", 3)]
    batch = run_batch(client, [chat_line(1), chat_line(2, url="/v1/embeddings")])
    assert errors_of(batch) == [("url_mismatch", 2)]
    batch = run_batch(client, [chat_line(1), chat_line(2, model="gpt-4o"), chat_line(3)])
    assert errors_of(batch) == [("model_mismatch", 2)]
    assert "gpt-4o" in batch.errors.data[0].message


def test_blank_lines_are_skipped_and_numbered(client: openai.OpenAI) -> None:
    data = jsonl([chat_line(1)]) + b"\n\r\n" + jsonl([chat_line(2, custom_id="r1")])
    batch = run_batch(client, data)
    assert errors_of(batch) == [("duplicate_custom_id", 4)]
    ok = run_batch(client, jsonl([chat_line(1)]).replace(b"\n", b"\r\n") + b"\n\n")
    assert ok.status == "completed"


@pytest.mark.parametrize("data", [b"", b"\n \n"])
def test_empty_file(client: openai.OpenAI, data: bytes) -> None:
    batch = run_batch(client, data)
    assert errors_of(batch) == [("empty_file", None)]


def test_too_many_tasks_configured(client: openai.OpenAI) -> None:
    assert run_batch(client, [chat_line(i) for i in range(10)]).status == "completed"
    batch = run_batch(client, [chat_line(i) for i in range(11)])
    assert errors_of(batch) == [("too_many_tasks", None)]


def test_file_too_large_configured(client: openai.OpenAI) -> None:
    batch = run_batch(client, [chat_line(i, "x" * 1000) for i in range(6)])
    assert errors_of(batch) == [("file_too_large", None)]
    assert batch.errors.data[0].message == (
        "The batch input file is larger than the 5000 maximum for the gpt-4o-mini model. "
        "Please try again with a smaller batch."
    )


def test_real_limits_too_many_tasks_and_embedding_inputs() -> None:
    with bf.LocalBatchServer() as server:
        client = server.client()
        line = b'{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{}}'
        batch = run_batch(client, b"\n".join([line] * 50_001))
        assert errors_of(batch) == [("too_many_tasks", None)]
        assert "50,001" in batch.errors.data[0].message

        def emb(i: int, n: int) -> dict[str, Any]:
            body = {"model": "text-embedding-3-small", "input": ["a"] * n, "dimensions": 8}
            return {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": body}

        done = run_batch(client, [emb(0, 25_000), emb(1, 25_000)], "/v1/embeddings")
        assert done.status == "completed"
        batch = run_batch(client, [emb(0, 25_000), emb(1, 25_001)], "/v1/embeddings")
        assert errors_of(batch) == [("too_many_inputs", None)]


def test_token_limit_exceeded() -> None:
    line = chat_line(1, "x" * 400)
    tokens = estimate_body_tokens(line["body"])
    assert tokens == 101  # 400 + 4 ("user") bytes / 4, rounded up
    with bf.LocalBatchServer(queue_token_limit=250, requests_per_second=20) as server:
        client = server.client()
        too_big = run_batch(client, [chat_line(i, "x" * 400) for i in range(3)])
        assert errors_of(too_big) == [("token_limit_exceeded", None)]
        assert "Limit: 250 enqueued tokens" in too_big.errors.data[0].message
        assert "gpt-4o-mini" in too_big.errors.data[0].message
        first = submit(client, [chat_line(i, "x" * 400) for i in range(2)])
        wait_for(client, first.id, {"in_progress"})
        assert server.enqueued_tokens() == {"gpt-4o-mini": 202}
        second = run_batch(client, [chat_line(9, "x" * 400)])
        assert errors_of(second) == [("token_limit_exceeded", None)]
        other_model = run_batch(client, [chat_line(9, "x" * 400, model="gpt-4o")])
        assert other_model.status == "completed"  # the limit is per model
        assert wait_for(client, first.id).status == "completed"
        assert server.enqueued_tokens() == {}
        assert run_batch(client, [chat_line(9, "x" * 400)]).status == "completed"  # queue drained
    with bf.LocalBatchServer(queue_token_limit={"gpt-4o": 10}) as server:
        client = server.client()
        assert run_batch(client, [chat_line(1, "x" * 400)]).status == "completed"
        assert errors_of(run_batch(client, [chat_line(1, "x" * 400, model="gpt-4o")])) == [
            ("token_limit_exceeded", None)
        ]


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        (
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata",
            "object_above_max_properties",
        ),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "string_above_max_length"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", "string_above_max_length"),
        ({"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
        ({"metadata": ["k"]}, "metadata", "invalid_type"),
        ({"completion_window": "48h"}, "completion_window", "invalid_value"),
        ({"endpoint": "/v1/audio/speech"}, "endpoint", "invalid_value"),
        ({"endpoint": "/chat/completions"}, "endpoint", "invalid_value"),
        (
            {"output_expires_after": {"anchor": "created_at", "seconds": 3599}},
            "output_expires_after.seconds",
            "integer_below_min_value",
        ),
        (
            {"output_expires_after": {"anchor": "created_at", "seconds": 2_592_001}},
            "output_expires_after.seconds",
            "integer_above_max_value",
        ),
        (
            {"output_expires_after": {"anchor": "now", "seconds": 3600}},
            "output_expires_after.anchor",
            "invalid_value",
        ),
        ({"input_file_id": None}, "input_file_id", "missing_required_parameter"),
        ({"endpoint": 5}, "endpoint", "invalid_type"),
        ({"priority": "high"}, "priority", "unknown_parameter"),
    ],
)
def test_create_bad_parameters(
    server: bf.LocalBatchServer,
    client: openai.OpenAI,
    params: dict[str, Any],
    param: str,
    code: str,
) -> None:
    base: dict[str, Any] = {
        "input_file_id": upload(client, [chat_line(1)]),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    base.update(params)
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/batches", cast_to=Batch, body=base)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.type == "invalid_request_error"
    assert server.batches() == []


def test_metadata_at_the_limits_is_accepted(client: openai.OpenAI) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = submit(client, [chat_line(1)], metadata=metadata)
    assert batch.metadata == metadata
    assert wait_for(client, batch.id).status == "completed"


def test_create_missing_or_wrong_file(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert info.value.param == "input_file_id"
    other = client.files.create(file=("x.jsonl", jsonl([chat_line(1)])), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(
            input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "purpose" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_malformed_json_body(server: bf.LocalBatchServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post(
            "/batches",
            cast_to=Batch,
            content=b"{oops",
            options={"headers": {"Content-Type": "application/json"}},
        )
    assert "JSON" in info.value.message


def test_input_file_deleted_before_validation() -> None:
    with bf.LocalBatchServer(validation_seconds=0.2) as server:
        client = server.client()
        batch = submit(client, [chat_line(1)])
        client.files.delete(batch.input_file_id)
        done = wait_for(client, batch.id)
        assert done.status == "failed"
        assert done.errors.data[0].code == "invalid_file"


def test_errors_are_capped() -> None:
    with bf.LocalBatchServer() as server:
        client = server.client()
        start = time.monotonic()
        batch = run_batch(client, b"\n".join([b"nope"] * 5000))
        assert len(batch.errors.data) == 100
        assert time.monotonic() - start < 5
        assert orjson.loads(orjson.dumps(server.batch(batch.id)))["errors"]["data"][0]["line"] == 1


# -- per-line body validation (see batchframe/_server/_body_checks.py) ------------------


def _any_upstream() -> tuple[Any, str]:
    """A model server that answers 200 to any body (it takes OpenAI-unknown params)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            data = orjson.dumps(
                {
                    "id": "chatcmpl-x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def _body_lines() -> list[dict[str, Any]]:
    return [
        with_body(1),
        with_body(2, top_k=5),  # no OpenAI parameter; vLLM and llama.cpp take it
        with_body(3, dimensions=8),  # an embeddings parameter
        with_body(4, messages=[]),
    ]


def _codes(client: openai.OpenAI, batch: Any) -> dict[str, Any]:
    from conftest_server import read_lines

    out: dict[str, Any] = {x["custom_id"]: 200 for x in read_lines(client, batch.output_file_id)}
    for x in read_lines(client, batch.error_file_id):
        out[x["custom_id"]] = x["response"]["body"]["error"]["code"]
    return out


def test_bad_bodies_get_the_apis_400_lines_as_openai_would(client: openai.OpenAI) -> None:
    batch = run_batch(client, _body_lines())
    assert batch.status == "completed"
    assert _codes(client, batch) == {
        "r1": 200,
        "r2": "unknown_parameter",
        "r3": "unknown_parameter",
        "r4": "empty_array",
    }


def test_forwarding_lets_the_model_servers_own_parameters_through() -> None:
    httpd, upstream = _any_upstream()
    try:
        with bf.LocalBatchServer(executor="forward", upstream=upstream) as server:
            client = server.client(max_retries=0)
            batch = run_batch(client, _body_lines())
            codes = _codes(client, batch)
            # Synchronous calls are validated the same way.
            with pytest.raises(openai.BadRequestError, match="empty array"):
                client.chat.completions.create(model="m", messages=[])
    finally:
        httpd.shutdown()
    assert codes == {"r1": 200, "r2": 200, "r3": "unknown_parameter", "r4": "empty_array"}


def test_synchronous_endpoints_refuse_what_batches_refuse(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="e", input=["x"] * 2049)
    assert e.value.code == "array_above_max_length"
    assert e.value.param == "input"
