"""The forward and callable executors, against a second server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest_server import chat_line, read_lines, run_batch
from openai.types.chat import ChatCompletion

import batchframe as bf


@pytest.fixture
def upstream() -> Iterator[bf.LocalBatchServer]:
    with bf.LocalBatchServer(api_key="up-key") as s:
        yield s


def test_forward_batch_to_upstream(upstream: bf.LocalBatchServer) -> None:
    with bf.LocalBatchServer(
        "forward", upstream=upstream.base_url, upstream_api_key="up-key", max_concurrency=4
    ) as front:
        client = front.client()
        done = run_batch(client, [chat_line(i) for i in range(40)])
        assert done.status == "completed"
        results = read_lines(client, done.output_file_id)
        assert len(results) == 40
        for result in results:
            body = ChatCompletion.model_validate(result["response"]["body"])
            assert body.choices[0].message.content == f"hello {result['custom_id'][1:]}"
        forwarded = [c for c in upstream.calls if c.path == "/v1/chat/completions"]
        assert len(forwarded) == 40
        assert all(c.status == 200 for c in forwarded)
        assert forwarded[0].body["model"] == "gpt-4o-mini"
        # the synchronous endpoint of the front server forwards too
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "sync"}]
        )
        assert answer.choices[0].message.content == "sync"
        assert upstream.calls[-1].path == "/v1/chat/completions"


def test_forward_records_upstream_errors(upstream: bf.LocalBatchServer) -> None:
    with bf.LocalBatchServer(
        "forward", upstream=upstream.base_url, upstream_api_key="wrong"
    ) as front:
        client = front.client()
        done = run_batch(client, [chat_line(1)])
        [line] = read_lines(client, done.error_file_id)
        assert line["response"]["status_code"] == 401
        assert line["response"]["body"]["error"]["code"] == "invalid_api_key"


def test_forward_unreachable_upstream() -> None:
    with bf.LocalBatchServer() as gone:
        url = gone.base_url
    with bf.LocalBatchServer("forward", upstream=url) as front:
        client = front.client()
        done = run_batch(client, [chat_line(1), chat_line(2)])
        errors = read_lines(client, done.error_file_id)
        assert len(errors) == 2
        assert {e["response"]["status_code"] for e in errors} == {500}
        assert all(e["response"]["body"]["error"]["type"] == "server_error" for e in errors)


class _Odd(BaseHTTPRequestHandler):
    """A tiny upstream: slow for 'slow', HTML for 'html', a bare 422 for 'bare', else JSON."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        status, payload = 200, b'{"ok": true, "path": "%s"}' % self.path.encode()
        if b"slow" in data:
            time.sleep(0.5)
        elif b"html" in data:
            status, payload = 200, b"<html>nope</html>"
        elif b"bare" in data:
            status, payload = 422, b'{"detail": "unprocessable"}'
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except BrokenPipeError:  # the client gave up (the timeout case)
            self.close_connection = True


def test_forward_timeouts_non_json_and_bare_errors() -> None:
    odd = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=odd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        upstream = f"http://127.0.0.1:{odd.server_address[1]}"  # no /v1: the line url is appended
        with bf.LocalBatchServer("forward", upstream=upstream, upstream_timeout=0.2) as front:
            client = front.client()
            lines = [
                chat_line("ok"),
                chat_line("slow", "slow"),
                chat_line("html", "html"),
                chat_line("bare", "bare"),
            ]
            done = run_batch(client, lines)
            [ok] = read_lines(client, done.output_file_id)
            assert ok["response"]["body"] == {"ok": True, "path": "/v1/chat/completions"}
            errors = {e["custom_id"]: e for e in read_lines(client, done.error_file_id)}
            assert errors["rslow"]["response"] is None
            assert errors["rslow"]["error"]["code"] == "request_timeout"
            assert errors["rhtml"]["response"]["status_code"] == 500
            assert errors["rbare"]["response"]["status_code"] == 422
            assert errors["rbare"]["response"]["body"]["error"]["message"] == "unprocessable"
    finally:
        odd.shutdown()
        odd.server_close()
        thread.join()


def test_callable_executor() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def model(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        text = body["messages"][-1]["content"]
        with lock:
            seen.append(endpoint)
        if text == "boom":
            raise RuntimeError("model crashed")
        if text == "bad":
            return 400, {
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        return 200, {"label": text.upper()}

    with bf.LocalBatchServer(model, max_concurrency=3) as server:
        client = server.client()
        done = run_batch(client, [chat_line(1, "good"), chat_line(2, "bad"), chat_line(3, "boom")])
        [ok] = read_lines(client, done.output_file_id)
        assert ok["response"]["body"] == {"label": "GOOD"}
        errors = {e["custom_id"]: e["response"] for e in read_lines(client, done.error_file_id)}
        assert errors["r2"]["status_code"] == 400
        assert errors["r3"]["status_code"] == 500
        assert "model crashed" in errors["r3"]["body"]["error"]["message"]
        assert seen == ["/v1/chat/completions"] * 3


def test_bad_executor_arguments() -> None:
    with pytest.raises(ValueError, match="upstream"):
        bf.LocalBatchServer("forward")
    with pytest.raises(ValueError, match="executor"):
        bf.LocalBatchServer("magic")
    with pytest.raises(ValueError, match="failure_rate"):
        bf.LocalBatchServer(failure_rate=1.5)
    with pytest.raises(ValueError, match="requests_per_second"):
        bf.LocalBatchServer(requests_per_second=0)


def _llama_cpp_like(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Answers as llama.cpp's server does: ``json_schema`` is a 500, ``json_object`` +
    ``schema`` constrains the answer."""
    import orjson

    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return 500, {"error": {"code": 500, "message": "Unrecognized response_format type"}}
    structured = isinstance(fmt, dict) and fmt.get("type") == "json_object" and "schema" in fmt
    text = body["messages"][-1]["content"]
    content = orjson.dumps({"label": "positive", "words": len(text.split())}).decode()
    return 200, {
        "id": "chatcmpl-llama",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content if structured else text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


@pytest.mark.parametrize("adapt", [None, "llama.cpp"])
def test_forward_adapts_structured_outputs_for_llama_cpp(tmp_path: Any, adapt: str | None) -> None:
    import polars as pl
    from pydantic import BaseModel

    class Label(BaseModel):
        label: str
        words: int

    df = pl.DataFrame({"id": ["a", "b", "c"], "text": ["good one", "bad", "so so so"]})
    with (
        bf.LocalBatchServer(_llama_cpp_like, max_concurrency=2) as upstream,
        bf.LocalBatchServer("forward", upstream=upstream.base_url, upstream_adapt=adapt) as front,
    ):
        results = bf.run(
            df,
            str(tmp_path / "job"),
            endpoint="/v1/chat/completions",
            body=bf.chat_body("local-llama", user=pl.col("text"), response_format=Label),
            custom_id="id",
            client=front.client(),
            poll_interval=0.02,
            max_attempts=1,
        )
        sent = [c.body["response_format"]["type"] for c in upstream.calls if c.body]
    if adapt is None:  # what a user met: every structured row failed with a 500
        assert results.ok.height == 0
        assert results.failed["status_code"].to_list() == [500, 500, 500]
        assert set(sent) == {"json_schema"}
    else:
        assert set(sent) == {"json_object"}
        ok = results.ok.sort("custom_id")
        assert ok["parsed"].struct.field("label").to_list() == ["positive"] * 3
        assert ok["parsed"].struct.field("words").to_list() == [2, 1, 3]


def test_forward_adapters_rewrite_only_schema_bodies() -> None:
    from batchframe._server._forward import adapter, to_vllm_guided

    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    body = {
        "model": "m",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    llama = adapter("llama.cpp")
    assert llama is not None
    assert llama("/v1/chat/completions", body)["response_format"] == {
        "type": "json_object",
        "schema": schema,
    }
    assert to_vllm_guided("/v1/chat/completions", body) == {"model": "m", "guided_json": schema}
    plain = {"model": "m", "messages": []}
    assert llama("/v1/chat/completions", plain) is plain
    with pytest.raises(ValueError, match="upstream_adapt"):
        adapter("ollama")
