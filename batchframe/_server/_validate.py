"""Validation of ``batches.create`` parameters and of batch input files.

Parameter problems are answered at once with HTTP 400 (the API's error body). Input
file problems are found in the background while the batch is ``validating`` and end
the batch in ``failed`` with ``errors.data``. OpenAI publishes no code table; the codes
follow Azure's table and user reports (see the reference, section 5):
``invalid_json_line``, ``invalid_request``, ``duplicate_custom_id``, ``url_mismatch``,
``model_mismatch``, ``empty_file``, ``too_many_tasks``, ``token_limit_exceeded``.
Two codes are not documented anywhere and were chosen here: ``file_too_large`` (its
message is the observed one) and ``too_many_inputs`` (embedding inputs over the cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from batchframe._bodies import ENDPOINTS as BATCH_ENDPOINTS
from batchframe._server._errors import bad_request
from batchframe._server._tokens import estimate_body_tokens

# The API also accepts video jobs, which batchframe itself does not build.
ENDPOINTS = (*BATCH_ENDPOINTS, "/v1/videos")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MIN_EXPIRES_SECONDS = 3_600
MAX_EXPIRES_SECONDS = 2_592_000
#: At most this many ``errors.data`` entries are reported for one file.
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class FileLimits:
    """Limits checked while a batch validates (defaults are the API's)."""

    max_requests: int = 50_000
    max_bytes: int = 209_715_200
    max_embedding_inputs: int = 50_000


@dataclass
class ValidFile:
    """A validated input file: its raw request lines, ids, model and token estimate."""

    lines: list[bytes]
    custom_ids: list[str]
    model: str | None
    tokens: int


def _quote_values(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), "an unsupported value")


def check_expires_after(value: Any, param: str) -> int:
    """Validate an ``expires_after``-shaped object and return its seconds."""
    if not isinstance(value, dict):
        msg = (
            f"Invalid type for '{param}': expected an object, but got {_type_name(value)} instead."
        )
        raise bad_request(msg, param=param, code="invalid_type")
    anchor = value.get("anchor")
    if anchor != "created_at":
        msg = f"Invalid value: '{anchor}'. Supported values are: 'created_at'."
        raise bad_request(msg, param=f"{param}.anchor", code="invalid_value")
    seconds = value.get("seconds")
    if isinstance(seconds, str) and seconds.strip().lstrip("-").isdigit():
        seconds = int(seconds)  # multipart sends numbers as text
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        msg = f"Invalid type for '{param}.seconds': expected an integer, but got {_type_name(seconds)} instead."
        raise bad_request(msg, param=f"{param}.seconds", code="invalid_type")
    if seconds < MIN_EXPIRES_SECONDS:
        msg = f"Integer below minimum value. Expected a value >= {MIN_EXPIRES_SECONDS}, but got {seconds} instead."
        raise bad_request(msg, param=f"{param}.seconds", code="integer_below_min_value")
    if seconds > MAX_EXPIRES_SECONDS:
        msg = f"Integer above maximum value. Expected a value <= {MAX_EXPIRES_SECONDS}, but got {seconds} instead."
        raise bad_request(msg, param=f"{param}.seconds", code="integer_above_max_value")
    return seconds


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """Validate batch ``metadata``: at most 16 string pairs, keys <= 64, values <= 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        msg = f"Invalid type for 'metadata': expected an object, but got {_type_name(metadata)} instead."
        raise bad_request(msg, param="metadata", code="invalid_type")
    if len(metadata) > MAX_METADATA_PAIRS:
        msg = (
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(metadata)} properties instead."
        )
        raise bad_request(msg, param="metadata", code="object_above_max_properties")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            msg = (
                f"Invalid 'metadata': string too long. Expected a string with maximum length "
                f"{MAX_METADATA_KEY}, but got a string with length {len(key)} instead."
            )
            raise bad_request(msg, param="metadata", code="string_above_max_length")
        if not isinstance(value, str):
            msg = f"Invalid type for 'metadata.{key}': expected a string, but got {_type_name(value)} instead."
            raise bad_request(msg, param=f"metadata.{key}", code="invalid_type")
        if len(value) > MAX_METADATA_VALUE:
            msg = (
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"{MAX_METADATA_VALUE}, but got a string with length {len(value)} instead."
            )
            raise bad_request(msg, param=f"metadata.{key}", code="string_above_max_length")
    return dict(metadata)


def check_create_batch(params: Any) -> dict[str, Any]:
    """Validate the JSON body of ``POST /v1/batches``; return the cleaned parameters."""
    if not isinstance(params, dict):
        msg = "The request body must be a JSON object."
        raise bad_request(msg)
    known = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
    for key in params:
        if key not in known:
            msg = f"Unrecognized request argument supplied: {key}"
            raise bad_request(msg, param=key, code="unknown_parameter")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if params.get(key) is None:
            msg = f"Missing required parameter: '{key}'."
            raise bad_request(msg, param=key, code="missing_required_parameter")
        if not isinstance(params[key], str):
            msg = f"Invalid type for '{key}': expected a string, but got {_type_name(params[key])} instead."
            raise bad_request(msg, param=key, code="invalid_type")
    if params["endpoint"] not in ENDPOINTS:
        msg = f"Invalid value: '{params['endpoint']}'. Supported values are: {_quote_values(ENDPOINTS)}."
        raise bad_request(msg, param="endpoint", code="invalid_value")
    if params["completion_window"] != "24h":
        msg = f"Invalid value: '{params['completion_window']}'. Supported values are: '24h'."
        raise bad_request(msg, param="completion_window", code="invalid_value")
    out = dict(params)
    out["metadata"] = check_metadata(params.get("metadata"))
    expires = params.get("output_expires_after")
    out["output_expires_seconds"] = (
        None if expires is None else check_expires_after(expires, "output_expires_after")
    )
    return out


def _error(
    code: str, message: str, *, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _first_model(content: bytes) -> str:
    first = content.split(b"\n", 1)[0]
    try:
        model = orjson.loads(first)["body"]["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "requested"
    return model if isinstance(model, str) else "requested"


def _embedding_inputs(body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list):
        if value and isinstance(value[0], int):
            return 1  # one input given as token ids
        return len(value)
    return 1


def _check_line(
    number: int, obj: Any, endpoint: str
) -> tuple[dict[str, Any] | None, str | None, dict[str, Any] | None]:
    """Return ``(error, custom_id, body)`` for one parsed line."""

    def invalid(message: str, param: str) -> tuple[dict[str, Any], None, None]:
        return _error("invalid_request", message, line=number, param=param), None, None

    if not isinstance(obj, dict):
        return invalid("Each line must be a JSON object.", "")
    for key in ("custom_id", "method", "url", "body"):
        if key not in obj:
            return invalid(f"Missing required parameter: '{key}'.", key)
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return invalid("'custom_id' must be a non-empty string.", "custom_id")
    if obj["method"] != "POST":
        return invalid(f"Invalid value: '{obj['method']}'. Supported values are: 'POST'.", "method")
    if not isinstance(obj["url"], str):
        return invalid("'url' must be a string.", "url")
    body = obj["body"]
    if not isinstance(body, dict):
        return invalid("'body' must be a JSON object.", "body")
    if obj["url"] != endpoint:
        message = f"The url '{obj['url']}' does not match the batch endpoint '{endpoint}'."
        return _error("url_mismatch", message, line=number, param="url"), None, None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return invalid("Missing required parameter: 'body.model'.", "body.model")
    if body.get("stream"):
        return invalid(
            "Streaming is not supported in the Batch API: remove 'stream'.", "body.stream"
        )
    return None, custom_id, body


def validate_input_file(
    content: bytes, endpoint: str, limits: FileLimits, *, count_tokens: bool
) -> ValidFile | list[dict[str, Any]]:
    """Check a batch input file; return the valid file or the ``errors.data`` entries.

    Line numbers are 1-based physical lines. Blank lines are skipped (tolerated).
    """
    if len(content) > limits.max_bytes:
        message = (
            f"The batch input file is larger than the {limits.max_bytes} maximum for the "
            f"{_first_model(content)} model. Please try again with a smaller batch."
        )
        return [_error("file_too_large", message)]
    numbered = [(i + 1, line) for i, line in enumerate(content.split(b"\n")) if line.strip()]
    if not numbered:
        message = (
            "The input file is empty. Please ensure that the batch contains at least one request."
        )
        return [_error("empty_file", message)]
    if len(numbered) > limits.max_requests:
        message = (
            f"The batch input file contains {len(numbered):,} requests, which is more than the "
            f"maximum of {limits.max_requests:,} requests per batch."
        )
        return [_error("too_many_tasks", message)]
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    ids: list[str] = []
    lines: list[bytes] = []
    model: str | None = None
    tokens = 0
    inputs = 0
    embeddings = endpoint == "/v1/embeddings"
    for number, raw in numbered:
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.append(
                _error(
                    "invalid_json_line", "This line is not parseable as valid JSON.", line=number
                )
            )
            continue
        error, custom_id, body = _check_line(number, obj, endpoint)
        if error is not None or custom_id is None or body is None:
            errors.append(error or {})
            continue
        if custom_id in seen:
            message = f"The custom_id '{custom_id}' is duplicated; custom_id must be unique for each request in a batch."
            errors.append(_error("duplicate_custom_id", message, line=number, param="custom_id"))
            continue
        seen.add(custom_id)
        if model is None:
            model = body["model"]
        elif body["model"] != model:
            message = (
                f"The model '{body['model']}' does not match the model '{model}' of the first request; "
                "all requests in a batch must use the same model."
            )
            errors.append(_error("model_mismatch", message, line=number, param="body.model"))
            continue
        if embeddings:
            inputs += _embedding_inputs(body)
        if count_tokens:
            tokens += estimate_body_tokens(body)
        ids.append(custom_id)
        lines.append(raw)
    if errors:
        return errors
    if embeddings and inputs > limits.max_embedding_inputs:
        message = (
            f"The batch contains {inputs:,} embedding inputs, which is more than the maximum of "
            f"{limits.max_embedding_inputs:,} embedding inputs per batch."
        )
        return [_error("too_many_inputs", message)]
    return ValidFile(lines=lines, custom_ids=ids, model=model, tokens=tokens)
