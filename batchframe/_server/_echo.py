"""The ``echo`` executor: realistic, deterministic answers for every Batch API endpoint.

``echo(endpoint, body) -> (status_code, response_body)``. Text answers repeat the
request's last user text (cut to ``max_tokens``-style limits, with
``finish_reason="length"``); a ``json_schema`` response format (chat ``response_format``,
responses ``text.format``) gets JSON valid under the schema; a forced tool choice gets
a tool call whose arguments fit the tool's parameters. Embeddings are unit vectors of
``dimensions`` (default 1536, 3072 for ``text-embedding-3-large``) drawn from a hash of
the input; moderations flag a few keywords; images are a tiny valid PNG. Usage numbers
follow :mod:`batchframe._server._tokens`. Malformed bodies get the API's 400 answers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import secrets
import time
from array import array
from collections.abc import Callable
from typing import Any

import orjson

from batchframe._schemas import MODERATION_CATEGORIES
from batchframe._server._body_checks import check_body
from batchframe._server._echo_images import count, images, missing, videos
from batchframe._server._errors import ApiError, bad_request, error_body
from batchframe._server._schema_fill import fill_schema
from batchframe._server._tokens import estimate_body_tokens, estimate_tokens

#: ``(endpoint, body) -> (status_code, body)``: the shape of every executor.
Executor = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]

CONTEXT_TOKENS = 128_000
EMBEDDING_CONTEXT_TOKENS = 8_192
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_IMAGE_CATEGORIES = {
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "violence",
    "violence/graphic",
}
_KEYWORDS = {
    "harassment": ("idiot", "stupid", "loser"),
    "hate": ("hate",),
    "illicit": ("steal", "drugs"),
    "self-harm": ("suicide", "self-harm"),
    "sexual": ("sex",),
    "violence": ("kill", "murder", "attack"),
}


_BAD_INPUT = "'$.input' is invalid. Please check the API reference."


def _text(content: Any) -> str:
    """Plain text of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return _text(message.get("content"))
    last = messages[-1] if messages else None
    return _text(last.get("content")) if isinstance(last, dict) else ""


def _cut(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Cut text to about ``max_tokens`` tokens (4 characters each)."""
    valid = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 0
    if valid and len(text) > 4 * max_tokens:
        return text[: 4 * max_tokens], True
    return text, False


def _check_context(tokens: int, param: str) -> None:
    if tokens > CONTEXT_TOKENS:
        msg = (
            f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, your "
            f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
        )
        raise bad_request(msg, param=param, code="context_length_exceeded")


def _reasoning(model: str, completion: int) -> int:
    return completion if model.startswith(_REASONING_PREFIXES) else 0


def _forced_tool(tools: Any, choice: Any) -> dict[str, Any] | None:
    """Return the function tool a ``tool_choice`` forces, if any (chat and responses shapes)."""
    if not isinstance(tools, list) or not tools:
        return None
    functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    if not functions:
        return None
    if choice == "required":
        return functions[0]
    if isinstance(choice, dict):
        name = choice.get("name") or (choice.get("function") or {}).get("name")
        for tool in functions:
            if (tool.get("name") or (tool.get("function") or {}).get("name")) == name:
                return tool
    return None


def _structured(schema: Any, text: str, salt: int = 0) -> str:
    rng = random.Random(f"{text}\x00{salt}")
    return orjson.dumps(fill_schema(schema, rng=rng, text=text)).decode()


# -- chat completions ------------------------------------------------------------------


def _chat_message(body: dict[str, Any], prompt: str, index: int) -> tuple[dict[str, Any], str]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
    }
    tool = _forced_tool(body.get("tools"), body.get("tool_choice"))
    if tool is not None:
        function = tool.get("function") or {}
        arguments = _structured(function.get("parameters", {"type": "object"}), prompt, index)
        call: dict[str, Any] = {"id": "call_" + secrets.token_hex(12), "type": "function"}
        call["function"] = {"name": function.get("name", "tool"), "arguments": arguments}
        message["tool_calls"] = [call]
        return message, "tool_calls"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        message["content"] = _structured(
            (fmt.get("json_schema") or {}).get("schema", {}), prompt, index
        )
        return message, "stop"
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        message["content"] = orjson.dumps({"echo": prompt}).decode()
        return message, "stop"
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    message["content"], cut = _cut(prompt, limit)
    return message, "length" if cut else "stop"


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise missing(param="messages")
    prompt_tokens = estimate_body_tokens(body)
    _check_context(prompt_tokens, "messages")
    prompt = _last_user_text(messages)
    n = count(body.get("n"))
    choices, completion = [], 0
    for i in range(n):
        message, finish = _chat_message(body, prompt, i)
        completion += estimate_tokens(message["content"] or message.get("tool_calls"))
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
    reasoning = _reasoning(body["model"], completion)
    completion += reasoning
    return {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_local",
    }


# -- responses ---------------------------------------------------------------------------


def _responses_prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        messages = [
            m for m in value if isinstance(m, dict) and m.get("type", "message") == "message"
        ]
        return _last_user_text(messages) if messages else ""
    return ""


def _responses(body: dict[str, Any]) -> dict[str, Any]:
    if "input" not in body:
        raise missing(param="input")
    input_tokens = estimate_body_tokens(body)
    _check_context(input_tokens, "input")
    prompt = _responses_prompt(body["input"])
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    status, incomplete = "completed", None
    tool = _forced_tool(body.get("tools"), body.get("tool_choice"))
    item: dict[str, Any]
    if tool is not None:
        arguments = _structured(tool.get("parameters", {"type": "object"}), prompt)
        item = {"type": "function_call", "id": "fc_" + secrets.token_hex(12), "status": "completed"}
        item |= {
            "call_id": "call_" + secrets.token_hex(12),
            "name": tool.get("name", "tool"),
            "arguments": arguments,
        }
        produced: Any = arguments
    else:
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            text = _structured(fmt.get("schema", {}), prompt)
        elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
            text = orjson.dumps({"echo": prompt}).decode()
        else:
            text, cut = _cut(prompt, body.get("max_output_tokens"))
            if cut:
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {"type": "message", "id": "msg_" + secrets.token_hex(12), "status": status}
        item |= {"role": "assistant", "content": [content]}
        produced = text
    output_tokens = estimate_tokens(produced)
    reasoning = _reasoning(body["model"], output_tokens)
    output_tokens += reasoning
    now = int(time.time())
    return {
        "id": "resp_" + secrets.token_hex(12),
        "object": "response",
        "created_at": now,
        "completed_at": now if status == "completed" else None,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


# -- embeddings ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def unit_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """Return a deterministic unit vector for a text (rounded to 8 decimals)."""
    values = array("h")
    values.frombytes(hashlib.shake_256(text.encode("utf-8")).digest(2 * dimensions))
    scale = 1e8 / (math.hypot(*values) or 1.0)
    # round(x * scale) / 1e8 prints as at most 8 decimals, like the API's float32 values
    return tuple([round(x * scale) / 1e8 for x in values])


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise bad_request(_BAD_INPUT, param="input")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return [str(value)]
    out = []
    for item in value:
        if isinstance(item, str) and item:
            out.append(item)
        elif isinstance(item, list) and item and all(isinstance(x, int) for x in item):
            out.append(str(item))
        else:
            raise bad_request(_BAD_INPUT, param="input")
    return out


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    if "input" not in body:
        raise missing(param="input")
    inputs = _embedding_inputs(body["input"])
    default = 3072 if body["model"] == "text-embedding-3-large" else 1536
    dimensions = body.get("dimensions", default)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= 3072
    ):
        msg = f"Invalid value for 'dimensions': {dimensions}."
        raise bad_request(
            msg,
            param="dimensions",
            code="invalid_value",
        )
    as_base64 = body.get("encoding_format") == "base64"
    data, total = [], 0
    for i, text in enumerate(inputs):
        tokens = estimate_tokens(text)
        if tokens > EMBEDDING_CONTEXT_TOKENS:
            msg = (
                f"This model's maximum context length is {EMBEDDING_CONTEXT_TOKENS} tokens, however you "
                f"requested {tokens} tokens ({tokens} in your prompt; 0 for the completion). "
                "Please reduce your prompt; or completion length."
            )
            raise bad_request(msg, param="input", code="context_length_exceeded")
        total += tokens
        vector: Any = unit_vector(text, dimensions)
        if as_base64:
            vector = base64.b64encode(array("f", vector).tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    usage = {"prompt_tokens": total, "total_tokens": total}
    return {"object": "list", "data": data, "model": body["model"], "usage": usage}


# -- completions, moderations, images, videos ------------------------------------------------


def _completions(body: dict[str, Any]) -> dict[str, Any]:
    if "prompt" not in body:
        raise missing(param="prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and not all(isinstance(p, int) for p in prompt):
        prompts = [p if isinstance(p, str) else "" for p in prompt]
    else:
        prompts = [prompt if isinstance(prompt, str) else ""]
    prompt_tokens = estimate_body_tokens(body)
    _check_context(prompt_tokens, "prompt")
    n = count(body.get("n"))
    choices: list[dict[str, Any]] = []
    completion = 0
    for text in prompts:
        for _ in range(n):
            out, cut = _cut(text, body.get("max_tokens", 16))
            completion += estimate_tokens(out)
            choice = {"text": out, "index": len(choices), "logprobs": None}
            choices.append(choice | {"finish_reason": "length" if cut else "stop"})
    return {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "system_fingerprint": "fp_local",
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        },
    }


def _moderation_result(text: str, has_image: bool) -> dict[str, Any]:
    lowered = text.lower()
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=len(MODERATION_CATEGORIES)).digest()
    categories, scores, applied = {}, {}, {}
    for i, name in enumerate(MODERATION_CATEGORIES):
        base = name.split("/")[0]
        hit = name == base and any(word in lowered for word in _KEYWORDS.get(base, ()))
        score = 0.9 + digest[i] / 2560 if hit else digest[i] / 25_600
        categories[name] = score >= 0.5
        scores[name] = round(score, 6)
        applied[name] = ["text", "image"] if has_image and name in _IMAGE_CATEGORIES else ["text"]
    flagged = any(categories.values())
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


def _moderations(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("input")
    if value is None:
        raise missing(param="input")
    if isinstance(value, str):
        results = [_moderation_result(value, False)]
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        has_image = any(v.get("type") == "image_url" for v in value)
        results = [_moderation_result(_text(value), has_image)]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        results = [_moderation_result(v, False) for v in value]
    else:
        raise bad_request(_BAD_INPUT, param="input")
    return {"id": "modr-" + secrets.token_hex(12), "model": body["model"], "results": results}


_HANDLERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
    "/v1/moderations": _moderations,
    "/v1/images/generations": functools.partial(images, edit=False),
    "/v1/images/edits": functools.partial(images, edit=True),
    "/v1/videos": videos,
}


def echo(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Answer one request the way the real endpoint would, from the request alone."""
    handler = _HANDLERS.get(endpoint)
    if handler is None:
        return 404, error_body(f"Invalid URL (POST {endpoint})")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return 400, error_body("you must provide a model parameter")
    refused = check_body(endpoint, body)  # as the server does before any executor
    if refused is not None:
        return refused.status, refused.body()
    try:
        return 200, handler(body)
    except ApiError as exc:
        return exc.status, exc.body()
