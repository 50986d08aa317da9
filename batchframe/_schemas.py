"""Declared Polars schemas for results, and JSON schema -> Polars dtype mapping.

Schemas are declared here, never inferred from data, so an empty or all-failed job still
returns frames with the right columns and dtypes (DESIGN.md, "Typed results").

``body`` is the API's own text of ``response.body``, byte for byte, whenever the line
has the layout OpenAI writes (``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}`` in that order, minified or ``json.dumps``-spaced;
see :func:`batchframe._lines.cut_body`). A line in any other layout (other key order,
extra members) is parsed whole and its ``body`` is the same JSON value re-serialised by
DuckDB (minified; numbers and escapes may be spelled differently). Either way
``orjson.loads(body)`` gives the body.

Row shapes, where a body holds more than one answer (``body`` always keeps the rest):

- chat/completions, completions: the first choice (``n > 1``: the others are in ``body``).
- embeddings: one row per input vector, keyed ``(custom_id, index)``; the request's
  ``prompt_tokens`` sit on its first row only (so sums are right); ``body`` is the body
  without ``data`` (the vectors are in ``embedding``); base64 vectors are decoded.
- moderations: one row per request; with several results (an input array) ``flagged``
  is any, ``categories`` or-ed and ``category_scores`` the maximum over them.
- images: one row per request from ``data[0]``, with ``n_images``; ``body`` has
  ``data[0].b64_json`` set to null (the image lives once, in ``b64_json``) and keeps
  any further images.

The ``parsed`` column of structured outputs is typed from the JSON schema the requests
carried. :func:`compile_json_schema` returns that dtype together with a converter that
checks one decoded answer against the schema, so the dtype and the check can never
disagree about what a valid answer is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import polars as pl

__all__ = [
    "DEFAULT_PRICES",
    "ENDPOINT_KEYS",
    "FAILED_SCHEMA",
    "MODERATION_CATEGORIES",
    "PRICES_AS_OF",
    "STAGES",
    "USAGE_COLUMNS",
    "USAGE_NAMES",
    "USAGE_PATHS",
    "SchemaMismatch",
    "compile_json_schema",
    "endpoint_key",
    "ok_key",
    "ok_schema",
    "polars_dtype_from_json_schema",
    "price_for",
    "unwrap_json_schema",
]

#: Endpoints with typed result columns, as ``endpoint_key`` spells them.
ENDPOINT_KEYS = (
    "chat/completions",
    "responses",
    "embeddings",
    "completions",
    "moderations",
    "images/generations",
    "images/edits",
)

#: Why a row failed. ``request``: the API answered the request with an error;
#: ``batch``: the whole batch failed validation; ``expired`` / ``cancelled``: the batch
#: ended before the request ran; ``missing``: in neither file after the batch ended;
#: ``parse``: a paid answer that does not fit the typed columns or the JSON schema;
#: ``lost``: the downloaded file that held the answer was deleted and cannot be fetched again.
STAGES = ("request", "batch", "expired", "cancelled", "missing", "parse", "lost")

#: Category names of ``omni-moderation-latest`` (text-moderation models leave the
#: ``illicit`` ones null).
MODERATION_CATEGORIES = (
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
)

FAILED_SCHEMA = pl.Schema(
    {
        "custom_id": pl.String,
        "stage": pl.String,
        "status_code": pl.Int32,
        "error_code": pl.String,
        "error_message": pl.String,
        "retryable": pl.Boolean,
        "attempts": pl.Int32,
        "batch_id": pl.String,
        "line": pl.String,
    }
)

_BASE: dict[str, pl.DataType] = {
    "custom_id": pl.String(),
    "batch_id": pl.String(),
    "request_id": pl.String(),
    "status_code": pl.Int32(),
    "model": pl.String(),
    "body": pl.String(),
}
_TOOL_CALL = pl.Struct(
    {
        "id": pl.String,
        "type": pl.String,
        "function": pl.Struct({"name": pl.String, "arguments": pl.String}),
    }
)
_I64 = pl.Int64()
_ENDPOINT_COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "chat/completions": {
        "content": pl.String(),
        "refusal": pl.String(),
        "finish_reason": pl.String(),
        "tool_calls": pl.List(_TOOL_CALL),
        "prompt_tokens": _I64,
        "completion_tokens": _I64,
        "total_tokens": _I64,
        "cached_tokens": _I64,
        "reasoning_tokens": _I64,
    },
    "responses": {
        "output_text": pl.String(),
        "status": pl.String(),
        "input_tokens": _I64,
        "output_tokens": _I64,
        "total_tokens": _I64,
        "cached_tokens": _I64,
        "reasoning_tokens": _I64,
    },
    "embeddings": {"prompt_tokens": _I64},
    "completions": {
        "text": pl.String(),
        "finish_reason": pl.String(),
        "prompt_tokens": _I64,
        "completion_tokens": _I64,
        "total_tokens": _I64,
    },
    "moderations": {
        "flagged": pl.Boolean(),
        "categories": pl.Struct(dict.fromkeys(MODERATION_CATEGORIES, pl.Boolean)),
        "category_scores": pl.Struct(dict.fromkeys(MODERATION_CATEGORIES, pl.Float64)),
    },
}
_IMAGE_COLUMNS: dict[str, pl.DataType] = {
    "b64_json": pl.String(),
    "url": pl.String(),
    "revised_prompt": pl.String(),
    "n_images": pl.Int32(),
    "input_tokens": _I64,
    "output_tokens": _I64,
    "total_tokens": _I64,
}
_ENDPOINT_COLUMNS["images/generations"] = _IMAGE_COLUMNS
_ENDPOINT_COLUMNS["images/edits"] = _IMAGE_COLUMNS


def endpoint_key(endpoint: str) -> str:
    """Canonical short form of an endpoint: ``"/v1/chat/completions"`` -> ``"chat/completions"``.

    Accepts the OpenAI form (``/v1/...``), Azure's legacy form (``/chat/completions``)
    and the bare form.
    """
    key = endpoint.strip().strip("/")
    if key.startswith("v1/"):
        key = key[3:]
    return key


def ok_key(endpoint: str) -> list[str]:
    """Columns that identify one row of the ok frame of ``endpoint``.

    ``["custom_id"]``, or ``["custom_id", "index"]`` for embeddings (one row per input).
    """
    return ["custom_id", "index"] if endpoint_key(endpoint) == "embeddings" else ["custom_id"]


def ok_schema(
    endpoint: str,
    *,
    parsed: pl.DataType | None = None,
    embedding_dim: int | None = None,
) -> pl.Schema:
    """The declared schema of ``BatchResults.ok`` for ``endpoint``.

    Parameters
    ----------
    endpoint
        Batch endpoint, e.g. ``"/v1/chat/completions"``. Endpoints without typed columns
        (``/v1/videos``) get the common columns only.
    parsed
        Dtype of the ``parsed`` column (chat/completions and responses only), usually
        from :func:`polars_dtype_from_json_schema`; ``None`` leaves the column out.
    embedding_dim
        Width of the embeddings' ``pl.Array(pl.Float32, dim)`` column. ``None`` means
        unknown and gives ``pl.List(pl.Float32)``.

    Returns
    -------
    pl.Schema
        ``custom_id, batch_id, request_id, status_code, model, body`` and the endpoint's
        columns (see DESIGN.md). Embeddings put ``index`` and ``embedding`` after
        ``custom_id``.
    """
    key = endpoint_key(endpoint)
    cols = dict(_BASE)
    if key == "embeddings":
        emb: pl.DataType = (
            pl.List(pl.Float32) if embedding_dim is None else pl.Array(pl.Float32, embedding_dim)
        )
        cols = {"custom_id": pl.String(), "index": pl.Int32(), "embedding": emb, **cols}
    cols.update(_ENDPOINT_COLUMNS.get(key, {}))
    if parsed is not None and key in ("chat/completions", "responses"):
        cols["parsed"] = parsed
    return pl.Schema(cols)


# -- JSON schema -> Polars -------------------------------------------------------------


class SchemaMismatch(ValueError):
    """A decoded answer does not match the JSON schema (internal; becomes a failed row)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '$'}: {message}")


Converter = Callable[[Any, str], Any]
_MAX_I64 = 2**63 - 1


def unwrap_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return the bare JSON schema from the shapes the OpenAI API wraps it in.

    Accepts a bare schema, chat's ``response_format`` (``{"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}}``) or its inner object, and the
    Responses API's ``text`` (``{"format": {"type": "json_schema", "schema", ...}}``).
    """
    node: Any = schema
    for _ in range(4):
        if not isinstance(node, Mapping):
            break
        fmt = node.get("format")
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            node = fmt
        elif node.get("type") == "json_schema" and isinstance(node.get("json_schema"), Mapping):
            node = node["json_schema"]
        elif isinstance(node.get("schema"), Mapping) and "properties" not in node:
            node = node["schema"]
        else:
            break
    return dict(node)


def polars_dtype_from_json_schema(schema: Mapping[str, Any]) -> pl.DataType:
    """Map a (strict) JSON schema to the Polars dtype of the ``parsed`` column.

    ``object`` -> ``Struct`` (fields in ``properties`` order), ``array`` -> ``List``,
    ``string`` -> ``String`` (``Enum`` when it has a string ``enum``), ``integer`` ->
    ``Int64``, ``number`` -> ``Float64``, ``boolean`` -> ``Boolean``. ``anyOf`` / type
    lists with ``null`` make the inner type nullable; ``$ref`` into ``$defs`` /
    ``definitions`` is resolved. What has no single column type (a free-form object,
    a union of several types, a recursive ``$ref``) becomes ``String`` holding the
    value as JSON text.

    Parameters
    ----------
    schema
        A bare JSON schema or one of the wrappers :func:`unwrap_json_schema` accepts.

    Returns
    -------
    pl.DataType
    """
    return compile_json_schema(schema)[0]


def compile_json_schema(
    schema: Mapping[str, Any],
) -> tuple[pl.DataType, Callable[[Any], Any]]:
    """Dtype for ``schema`` and a function checking one decoded answer against it.

    The function returns the value converted for the dtype (JSON text for
    ``String``-as-JSON parts, ``int`` for integral floats) and raises
    :class:`SchemaMismatch` naming the JSON path when the value does not match.
    """
    root = unwrap_json_schema(schema)
    dtype, conv = _compile(root, root, ())

    def convert(value: Any) -> Any:
        return conv(value, "$")

    return dtype, convert


def _compile(
    node: Any, root: Mapping[str, Any], refs: tuple[str, ...]
) -> tuple[pl.DataType, Converter]:
    if not isinstance(node, Mapping):
        # `true` / `{}`: anything goes.
        return _json_text(None)
    if "$ref" in node:
        ref = str(node["$ref"])
        if ref in refs:  # recursive type: no finite dtype
            return _json_text(None)
        return _compile(_resolve(ref, root), root, (*refs, ref))
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = list(node[key])
            rest = [o for o in options if not _is_null_schema(o)]
            nullable = len(rest) < len(options)
            if len(rest) == 1:
                return _nullable(_compile(rest[0], root, refs), nullable)
            alts = [_compile(o, root, refs)[1] for o in rest]
            return _nullable(_json_text(_any_of(alts)), nullable)
    if "allOf" in node and len(node["allOf"]) == 1:
        return _compile(node["allOf"][0], root, refs)
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else list(node["enum"])
        rest_values = [v for v in values if v is not None]
        if not rest_values:
            return pl.Null(), _null_only
        return _nullable(_enum(rest_values), len(rest_values) < len(values))
    types = node.get("type")
    if types is None:
        types = "object" if "properties" in node else "array" if "items" in node else None
    if isinstance(types, list):
        rest_types = [t for t in types if t != "null"]
        nullable = len(rest_types) < len(types)
        if len(rest_types) == 1:
            return _nullable(_compile({**node, "type": rest_types[0]}, root, refs), nullable)
        alts = [_compile({**node, "type": t}, root, refs)[1] for t in rest_types]
        return _nullable(_json_text(_any_of(alts)), nullable)
    if types == "object":
        return _object(node, root, refs)
    if types == "array":
        if not isinstance(node.get("items"), Mapping):
            return _json_text(_check(list, "array"))
        inner, conv = _compile(node["items"], root, refs)
        return pl.List(inner), _list_converter(conv)
    if types in _SCALARS:
        return _SCALARS[types]
    if types == "null":
        return pl.Null(), _null_only
    return _json_text(None)


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    if not ref.startswith("#"):
        msg = f"only local `$ref`s are supported, got {ref!r}"
        raise ValueError(msg)
    node: Any = root
    for part in ref[1:].split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _is_null_schema(node: Any) -> bool:
    return isinstance(node, Mapping) and node.get("type") == "null" and len(node) == 1


def _nullable(
    compiled: tuple[pl.DataType, Converter], nullable: bool
) -> tuple[pl.DataType, Converter]:
    dtype, conv = compiled
    if not nullable:
        return dtype, conv

    def convert(value: Any, path: str) -> Any:
        return None if value is None else conv(value, path)

    return dtype, convert


def _object(
    node: Mapping[str, Any], root: Mapping[str, Any], refs: tuple[str, ...]
) -> tuple[pl.DataType, Converter]:
    props = node.get("properties")
    if not isinstance(props, Mapping) or not props:
        return _json_text(_check(dict, "object"))
    fields = {name: _compile(sub, root, refs) for name, sub in props.items()}
    required = set(node.get("required", ()))
    closed = node.get("additionalProperties", True) is False

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaMismatch(path, f"expected an object, got {_kind(value)}")
        if closed and not value.keys() <= fields.keys():
            extra = sorted(value.keys() - fields.keys())
            raise SchemaMismatch(path, f"unexpected properties {extra}")
        out = {}
        for name, (_, conv) in fields.items():
            if name in value:
                out[name] = conv(value[name], f"{path}.{name}")
            elif name in required:
                raise SchemaMismatch(path, f"missing required property {name!r}")
            else:
                out[name] = None
        return out

    return pl.Struct({name: dt for name, (dt, _) in fields.items()}), convert


def _list_converter(conv: Converter) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise SchemaMismatch(path, f"expected an array, got {_kind(value)}")
        return [conv(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return convert


def _enum(values: list[Any]) -> tuple[pl.DataType, Converter]:
    allowed = list(values)

    def check(value: Any, path: str) -> Any:
        # `True == 1` in Python; JSON keeps booleans and numbers apart.
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise SchemaMismatch(path, f"{value!r} is not one of {allowed!r}")
        return value

    if allowed and all(isinstance(v, str) for v in allowed):
        return pl.Enum(list(dict.fromkeys(allowed))), check
    if allowed and all(isinstance(v, int) and not isinstance(v, bool) for v in allowed):
        return pl.Int64(), check
    return _json_text(check)


def _json_text(check: Converter | None) -> tuple[pl.DataType, Converter]:
    def convert(value: Any, path: str) -> Any:
        if check is not None:
            check(value, path)
        return orjson.dumps(value).decode()

    return pl.String(), convert


def _any_of(alternatives: list[Converter]) -> Converter:
    def check(value: Any, path: str) -> Any:
        for alt in alternatives:
            try:
                return alt(value, path)
            except SchemaMismatch:
                continue
        raise SchemaMismatch(path, f"{_kind(value)} matches none of the `anyOf` options")

    return check


def _check(kind: type, name: str) -> Converter:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, kind):
            raise SchemaMismatch(path, f"expected {name}, got {_kind(value)}")
        return value

    return check


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def _string(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise SchemaMismatch(path, f"expected string, got {_kind(value)}")
    return value


def _integer(value: Any, path: str) -> Any:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SchemaMismatch(path, f"expected integer, got {_kind(value)}")
    if not -_MAX_I64 - 1 <= value <= _MAX_I64:
        raise SchemaMismatch(path, f"integer {value} does not fit in 64 bits")
    return value


def _number(value: Any, path: str) -> Any:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise SchemaMismatch(path, f"expected number, got {_kind(value)}")
    out = float(value)
    if math.isinf(out):
        raise SchemaMismatch(path, f"number {value} does not fit in a float64")
    return out


def _boolean(value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        raise SchemaMismatch(path, f"expected boolean, got {_kind(value)}")
    return value


def _null_only(value: Any, path: str) -> Any:
    if value is not None:
        raise SchemaMismatch(path, f"expected null, got {_kind(value)}")
    return None


_SCALARS: dict[str, tuple[pl.DataType, Converter]] = {
    "string": (pl.String(), _string),
    "integer": (pl.Int64(), _integer),
    "number": (pl.Float64(), _number),
    "boolean": (pl.Boolean(), _boolean),
}


# -- usage and prices -----------------------------------------------------------------

#: Date the default prices were taken from https://openai.com/api/pricing.
PRICES_AS_OF = "2025-08-15"

#: Batch API prices in USD per 1M tokens: half the standard rate (the Batch API's 50 %
#: discount), ``cached_input`` half the standard cached-input rate. Snapshot names
#: (``gpt-4o-mini-2024-07-18``) fall back to the name without the date. Check the
#: pricing page before relying on them, and pass your own to ``BatchResults.usage``.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-5": {"input": 0.625, "cached_input": 0.0625, "output": 5.00},
    "gpt-5-mini": {"input": 0.125, "cached_input": 0.0125, "output": 1.00},
    "gpt-5-nano": {"input": 0.025, "cached_input": 0.0025, "output": 0.20},
    "gpt-4.1": {"input": 1.00, "cached_input": 0.25, "output": 4.00},
    "gpt-4.1-mini": {"input": 0.20, "cached_input": 0.05, "output": 0.80},
    "gpt-4.1-nano": {"input": 0.05, "cached_input": 0.0125, "output": 0.20},
    "gpt-4o": {"input": 1.25, "cached_input": 0.625, "output": 5.00},
    "gpt-4o-2024-05-13": {"input": 2.50, "cached_input": 2.50, "output": 7.50},
    "gpt-4o-mini": {"input": 0.075, "cached_input": 0.0375, "output": 0.30},
    "gpt-3.5-turbo": {"input": 0.25, "cached_input": 0.25, "output": 0.75},
    "o1": {"input": 7.50, "cached_input": 3.75, "output": 30.00},
    "o3": {"input": 1.00, "cached_input": 0.25, "output": 4.00},
    "o3-mini": {"input": 0.55, "cached_input": 0.275, "output": 2.20},
    "o4-mini": {"input": 0.55, "cached_input": 0.1375, "output": 2.20},
    "text-embedding-3-small": {"input": 0.01, "output": 0.0},
    "text-embedding-3-large": {"input": 0.065, "output": 0.0},
    "text-embedding-ada-002": {"input": 0.05, "output": 0.0},
    "babbage-002": {"input": 0.20, "output": 0.20},
    "davinci-002": {"input": 1.00, "output": 1.00},
    "omni-moderation-latest": {"input": 0.0, "output": 0.0},
    "text-moderation-latest": {"input": 0.0, "output": 0.0},
}

DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")

# (input, cached, output, reasoning) token columns of each endpoint's ok frame.
USAGE_COLUMNS: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "chat/completions": ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens"),
    "responses": ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"),
    "embeddings": ("prompt_tokens", None, None, None),
    "completions": ("prompt_tokens", None, "completion_tokens", None),
    "images/generations": ("input_tokens", None, "output_tokens", None),
    "images/edits": ("input_tokens", None, "output_tokens", None),
}
# The same, as paths under a response body's `usage` (for paid answers that failed to parse).
USAGE_PATHS: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "chat/completions": (
        "prompt_tokens",
        "prompt_tokens_details.cached_tokens",
        "completion_tokens",
        "completion_tokens_details.reasoning_tokens",
    ),
    "responses": (
        "input_tokens",
        "input_tokens_details.cached_tokens",
        "output_tokens",
        "output_tokens_details.reasoning_tokens",
    ),
    **{
        k: (v[0], None, v[2], None)
        for k, v in USAGE_COLUMNS.items()
        if k not in ("chat/completions", "responses")
    },
}
USAGE_NAMES = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


def price_for(
    model: str | None, prices: Mapping[str, Mapping[str, float]]
) -> Mapping[str, float] | None:
    """Prices of ``model``, or of its name without a ``-YYYY-MM-DD`` snapshot suffix.

    Returns ``None`` for an unknown model: ``gpt-4o-audio-preview`` is not ``gpt-4o``.
    """
    if model is None:
        return None
    return prices.get(model) or prices.get(DATE_SUFFIX.sub("", model))
