"""Per-line request validation: the 400 answers the API gives a malformed ``body``.

The Batch API accepts a file whose lines are well-formed (``_validate``) and checks
each line's body only when the line runs: a body the endpoint refuses ends in the
error file as ``{"response": {"status_code": 400, "body": {"error": {...}}}, "error":
null}``, with the endpoint's own ``invalid_request_error`` (message, ``param``, and a
``code`` such as ``missing_required_parameter``, ``empty_array``,
``array_above_max_length``, ``invalid_type``, ``invalid_value``,
``unknown_parameter``). The server runs these checks before any executor, so a test
against it cannot pass a line production would fail, whatever the executor.

The key tables are batchframe's (``batchframe._request_schema``, compared with the ``openai``
package's TypedDicts by the tests); the checks here are written separately, on the
decoded JSON, as the API would see it.
"""

from __future__ import annotations

from typing import Any, NoReturn

from batchframe._request_schema import (
    CHAT_PART_TYPES,
    CHAT_ROLES,
    ENCODING_FORMATS,
    KNOWN_KEYS,
    MAX_EMBEDDING_INPUTS_PER_REQUEST,
    REQUIRED_KEYS,
    RESPONSES_PART_TYPES,
    RESPONSES_ROLES,
    number_specs,
)
from batchframe._server._errors import ApiError, bad_request

__all__ = ["check_body"]

BAD_INPUT = "'$.input' is invalid. Please check the API reference."


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), "an unsupported value")


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _missing(param: str) -> NoReturn:
    msg = f"Missing required parameter: '{param}'."
    raise bad_request(msg, param=param, code="missing_required_parameter")


def _invalid_type(param: str, expected: str, value: Any) -> NoReturn:
    msg = f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead."
    raise bad_request(msg, param=param, code="invalid_type")


def _invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> NoReturn:
    msg = f"Invalid value: '{value}'. Supported values are: {_supported(allowed)}."
    raise bad_request(msg, param=param, code="invalid_value")


def _empty_array(param: str) -> NoReturn:
    msg = (
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got "
        "an empty array instead."
    )
    raise bad_request(msg, param=param, code="empty_array")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(endpoint: str, body: dict[str, Any], *, strict: bool) -> None:
    known = KNOWN_KEYS[endpoint]
    for key in body:
        foreign = any(key in keys for keys in KNOWN_KEYS.values())
        if key not in known and (strict or foreign):
            msg = f"Unrecognized request argument supplied: {key}"
            raise bad_request(msg, param=key, code="unknown_parameter")
    for key in REQUIRED_KEYS[endpoint]:
        if key not in body:
            _missing(key)
    if endpoint == "/v1/responses" and not body.keys() & {
        "input",
        "prompt",
        "previous_response_id",
        "conversation",
    }:
        _missing("input")


def _check_numbers(endpoint: str, body: dict[str, Any]) -> None:
    for key, (integer, lo, hi) in number_specs(endpoint).items():
        value = body.get(key)
        if value is None:
            continue
        ok = _is_int(value) or (not integer and isinstance(value, float))
        if not ok:
            _invalid_type(key, "an integer" if integer else "a decimal", value)
        kind = "Integer" if integer else "Decimal"
        code = kind.lower()
        if lo is not None and value < lo:
            msg = f"Invalid '{key}': {code} below minimum value. Expected a value >= {lo:g}, but got {value} instead."
            raise bad_request(msg, param=key, code=f"{code}_below_min_value")
        if hi is not None and value > hi:
            msg = f"Invalid '{key}': {code} above maximum value. Expected a value <= {hi:g}, but got {value} instead."
            raise bad_request(msg, param=key, code=f"{code}_above_max_value")


def _check_parts(param: str, parts: list[Any], types: tuple[str, ...]) -> None:
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            _invalid_type(where, "an object", part)
        if "type" not in part:
            _missing(f"{where}.type")
        if part["type"] not in types:
            _invalid_value(f"{where}.type", part["type"], types)
        if part["type"] in ("text", "input_text") and not isinstance(part.get("text"), str):
            if "text" not in part:
                _missing(f"{where}.text")
            _invalid_type(f"{where}.text", "a string", part["text"])


def _check_content(param: str, content: Any, types: tuple[str, ...]) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        _invalid_type(param, "one of a string or array of objects", content)
    _check_parts(param, content, types)


def _chat(body: dict[str, Any]) -> None:
    messages = body["messages"]
    if not isinstance(messages, list):
        _invalid_type("messages", "an array", messages)
    if not messages:
        _empty_array("messages")
    roles = tuple(CHAT_ROLES)
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            _invalid_type(param, "an object", message)
        if "role" not in message:
            _missing(f"{param}.role")
        role = message["role"]
        if role not in CHAT_ROLES:
            _invalid_value(f"{param}.role", role, roles)
        needed = CHAT_ROLES[role]
        if role == "assistant" and "tool_calls" not in message:
            needed = ("content",)
        for key in needed:
            if key not in message:
                _missing(f"{param}.{key}")
        content = message.get("content")
        if content is None and role == "assistant":
            continue
        _check_content(f"{param}.content", content, CHAT_PART_TYPES)


def _responses(body: dict[str, Any]) -> None:
    value = body.get("input")
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        _invalid_type("input", "one of a string or array of objects", value)
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            _invalid_type(param, "an object", item)
        if "role" in item and item.get("type", "message") == "message":
            if item["role"] not in RESPONSES_ROLES:
                _invalid_value(f"{param}.role", item["role"], RESPONSES_ROLES)
            if "content" not in item:
                _missing(f"{param}.content")
            _check_content(f"{param}.content", item["content"], RESPONSES_PART_TYPES)
        elif "type" not in item:
            _missing(f"{param}.type")


def _embeddings(body: dict[str, Any]) -> None:
    value = body["input"]
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ENCODING_FORMATS:
        _invalid_value("encoding_format", fmt, ENCODING_FORMATS)
    if isinstance(value, str):
        if not value:
            raise bad_request(BAD_INPUT, param="input")
        return
    if not isinstance(value, list):
        _invalid_type("input", "one of a string or array", value)
    if not value:
        raise bad_request(BAD_INPUT, param="input")
    if all(_is_int(v) for v in value):
        return  # one input as token ids
    limit = MAX_EMBEDDING_INPUTS_PER_REQUEST
    if len(value) > limit:
        msg = (
            f"Invalid 'input': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(value)} instead."
        )
        raise bad_request(msg, param="input", code="array_above_max_length")
    for item in value:
        text = isinstance(item, str) and item
        tokens = isinstance(item, list) and item and all(_is_int(v) for v in item)
        if not (text or tokens):
            raise bad_request(BAD_INPUT, param="input")


def _completions(body: dict[str, Any]) -> None:
    value = body["prompt"]
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _invalid_type("prompt", "one of a string or array", value)
    for i, item in enumerate(value):
        ok = isinstance(item, str) or _is_int(item)
        ok = ok or (isinstance(item, list) and all(_is_int(v) for v in item))
        if not ok:
            _invalid_type(f"prompt[{i}]", "one of a string or array of integers", item)


def _moderations(body: dict[str, Any]) -> None:
    value = body["input"]
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _invalid_type("input", "one of a string or array", value)
    if not value:
        _empty_array("input")
    if any(isinstance(v, dict) for v in value):
        _check_parts("input", value, ("text", "image_url"))
        return
    for i, item in enumerate(value):
        if not isinstance(item, str):
            _invalid_type(f"input[{i}]", "a string", item)


def _images(body: dict[str, Any]) -> None:
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        _invalid_type("prompt", "a string", prompt)
    if not prompt:
        msg = "Invalid 'prompt': empty string. Expected a string with minimum length 1."
        raise bad_request(msg, param="prompt", code="empty_string")


def _image_edits(body: dict[str, Any]) -> None:
    _images(body)
    images = body["images"]
    if not isinstance(images, list):
        _invalid_type("images", "an array", images)
    if not images:
        _empty_array("images")
    for i, item in enumerate(images):
        param = f"images[{i}]"
        if not isinstance(item, dict):
            _invalid_type(param, "an object", item)
        keys = item.keys() & {"image_url", "file_id"}
        if len(keys) != 1:
            msg = f"Invalid '{param}': expected exactly one of 'image_url' or 'file_id'."
            raise bad_request(msg, param=param, code="invalid_value")
        value = item[next(iter(keys))]
        if not isinstance(value, str) or not value:
            _invalid_type(f"{param}.{next(iter(keys))}", "a non-empty string", value)


_CHECKS = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
    "/v1/moderations": _moderations,
    "/v1/images/generations": _images,
    "/v1/images/edits": _image_edits,
}


def check_body(endpoint: str, body: Any, *, strict_keys: bool = True) -> ApiError | None:
    """Return the API's 400 for a body the endpoint refuses, or None when it is valid.

    Endpoints batchframe does not model (``/v1/videos``) are not checked. With
    ``strict_keys`` (OpenAI's behaviour) any key the endpoint does not know is refused;
    without it (forwarding to another OpenAI-compatible server, whose own parameters
    such as ``top_k`` are legitimate) only keys of another endpoint are.
    """
    check = _CHECKS.get(endpoint)
    if check is None:
        return None
    try:
        if not isinstance(body, dict):
            _invalid_type("body", "an object", body)
        _check_keys(endpoint, body, strict=strict_keys)
        model = body.get("model")
        if not isinstance(model, str):
            _invalid_type("model", "a string", model)
        _check_numbers(endpoint, body)
        check(body)
    except ApiError as exc:
        return exc
    return None
