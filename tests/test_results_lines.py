"""Builders for realistic output/error lines (reference §4), and checks of their shapes.

Other ``test_results_*`` modules import the builders from here.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from batchframe._results import parse_output

# `BatchRequestOutput` from the OpenAI OpenAPI spec (reference/openapi-files-batches.json;
# descriptions dropped), with its example line.
SPEC_LINE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "custom_id": {"type": "string"},
        "response": {
            "type": "object",
            "nullable": True,
            "properties": {
                "status_code": {"type": "integer"},
                "request_id": {"type": "string"},
                "body": {"type": "object"},
            },
        },
        "error": {
            "type": "object",
            "nullable": True,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
SPEC_EXAMPLE = (
    b'{"id": "batch_req_wnaDys", "custom_id": "request-2", "response": {"status_code": 200, '
    b'"request_id": "req_c187b3", "body": {"id": "chatcmpl-9758Iw", "object": "chat.completion", '
    b'"created": 1711475054, "model": "gpt-4o-mini", "choices": [{"index": 0, "message": '
    b'{"role": "assistant", "content": "2 + 2 equals 4."}, "finish_reason": "stop"}], "usage": '
    b'{"prompt_tokens": 24, "completion_tokens": 15, "total_tokens": 39}, '
    b'"system_fingerprint": null}}, "error": null}\n'
)

USAGE_CHAT = {
    "prompt_tokens": 22,
    "completion_tokens": 4,
    "total_tokens": 26,
    "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 2,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def line(
    custom_id: str,
    body: dict[str, Any] | None = None,
    *,
    status: int | None = 200,
    error: Any = None,
    response: bool = True,
    request_id: str = "req_0538abc",
) -> bytes:
    """One output/error line: ``{id, custom_id, response, error}``."""
    resp = (
        {"status_code": status, "request_id": request_id, "body": body or {}} if response else None
    )
    return orjson.dumps(
        {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": resp, "error": error}
    )


def jsonl(lines: list[bytes], *, crlf: bool = False, trailing: bool = True) -> bytes:
    sep = b"\r\n" if crlf else b"\n"
    return sep.join(lines) + (sep if trailing else b"")


def chat_body(
    content: str | None = "positive",
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "gpt-4o-mini-2024-07-18",
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": refusal,
        "annotations": [],
    }
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-9758Iw",
        "object": "chat.completion",
        "created": 1711475054,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": USAGE_CHAT if usage is None else usage,
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb",
    }


def responses_body(
    text: str | None = "positive",
    *,
    refusal: str | None = None,
    status: str = "completed",
    model: str = "gpt-4.1-mini-2025-04-14",
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "output_text", "text": text, "annotations": []})
    if refusal is not None:
        content.append({"type": "refusal", "refusal": refusal})
    return {
        "id": "resp_67cb",
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "error": None,
        "model": model,
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": content,
            },
        ],
        "usage": {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 123,
        },
    }


def embeddings_body(
    vectors: list[list[float]], *, model: str = "text-embedding-3-small", b64: bool = False
) -> dict[str, Any]:
    def enc(v: list[float]) -> Any:
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if b64 else v

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


def completions_body(
    text: str = " world", *, model: str = "gpt-3.5-turbo-instruct"
) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1711475054,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


MOD_CATEGORIES = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
]


def moderation_result(flagged_on: tuple[str, ...] = (), score: float = 0.01) -> dict[str, Any]:
    return {
        "flagged": bool(flagged_on),
        "categories": {c: c in flagged_on for c in MOD_CATEGORIES},
        "category_scores": {c: (0.9 if c in flagged_on else score) for c in MOD_CATEGORIES},
        "category_applied_input_types": {c: ["text"] for c in MOD_CATEGORIES},
    }


def moderation_body(*results: dict[str, Any]) -> dict[str, Any]:
    return {"id": "modr-1", "model": "omni-moderation-2024-09-26", "results": list(results)}


def image_body(*images: dict[str, Any], usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "created": 1713833628,
        "data": list(images),
        "background": "opaque",
        "output_format": "png",
        "quality": "low",
        "size": "1024x1024",
    }
    if usage:
        body["usage"] = {
            "input_tokens": 50,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
            "output_tokens": 272,
            "total_tokens": 322,
        }
    return body


def http_error_line(
    custom_id: str,
    status: int = 400,
    code: str | None = "context_length_exceeded",
    message: str = "This model's maximum context length is 128000 tokens.",
    type_: str = "invalid_request_error",
) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": "messages", "code": code}}
    return line(custom_id, body, status=status)


def non_http_line(custom_id: str, code: str, message: str | None = None) -> bytes:
    messages = {
        "batch_expired": "This request could not be executed before the completion window expired.",
        "batch_cancelled": "The batch was cancelled before this request executed.",
        "request_timeout": "The underlying call to the model timed out.",
    }
    error = {"code": code, "message": message or messages.get(code, "failed")}
    return line(custom_id, response=False, error=error)


# -- the builders follow the reference ---------------------------------------------------


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    if value is None:
        assert schema.get("nullable"), path
        return
    kind = {"object": dict, "string": str, "integer": int}[schema["type"]]
    assert isinstance(value, kind), path
    for name, sub in schema.get("properties", {}).items():
        if (
            isinstance(value, dict)
            and name in value
            and sub.get("type")
            in (
                "object",
                "string",
                "integer",
            )
        ):
            _check(value[name], sub, f"{path}.{name}")


@pytest.mark.parametrize(
    "raw",
    [
        line("a", chat_body()),
        line("b", embeddings_body([[0.1, 0.2]])),
        http_error_line("c"),
        http_error_line("d", 500, None, "The server had an error", "server_error"),
        non_http_line("e", "batch_expired"),
        non_http_line("f", "batch_cancelled"),
        non_http_line("g", "request_timeout"),
    ],
)
def test_builders_match_the_spec_line_schema(raw: bytes) -> None:
    _check(orjson.loads(raw), SPEC_LINE, "$")


def test_the_spec_example_line_parses() -> None:
    example = SPEC_EXAMPLE
    ok, failed = parse_output(example, endpoint="/v1/chat/completions", batch_id="batch_1")
    assert failed.is_empty()
    assert ok.row(0, named=True) | {"body": None} == {
        "custom_id": "request-2",
        "batch_id": "batch_1",
        "request_id": "req_c187b3",
        "status_code": 200,
        "model": "gpt-4o-mini",
        "body": None,
        "content": "2 + 2 equals 4.",
        "refusal": None,
        "finish_reason": "stop",
        "tool_calls": None,
        "prompt_tokens": 24,
        "completion_tokens": 15,
        "total_tokens": 39,
        "cached_tokens": None,
        "reasoning_tokens": None,
    }
    assert orjson.loads(ok["body"][0]) == orjson.loads(example)["response"]["body"]
