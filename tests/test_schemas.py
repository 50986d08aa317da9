from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from batchframe._schemas import (
    DEFAULT_PRICES,
    ENDPOINT_KEYS,
    FAILED_SCHEMA,
    MODERATION_CATEGORIES,
    SchemaMismatch,
    compile_json_schema,
    endpoint_key,
    ok_key,
    ok_schema,
    polars_dtype_from_json_schema,
    price_for,
    unwrap_json_schema,
)

COMMON = ["custom_id", "batch_id", "request_id", "status_code", "model", "body"]


@pytest.mark.parametrize(
    ("endpoint", "key"),
    [
        ("/v1/chat/completions", "chat/completions"),
        ("/chat/completions", "chat/completions"),
        ("v1/embeddings/", "embeddings"),
        ("responses", "responses"),
        ("/v1/images/edits", "images/edits"),
    ],
)
def test_endpoint_key(endpoint: str, key: str) -> None:
    assert endpoint_key(endpoint) == key


def test_ok_schemas_per_endpoint() -> None:
    extra = {
        "chat/completions": [
            "content", "refusal", "finish_reason", "tool_calls", "prompt_tokens",
            "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
        ],
        "responses": [
            "output_text", "status", "input_tokens", "output_tokens", "total_tokens",
            "cached_tokens", "reasoning_tokens",
        ],
        "completions": ["text", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens"],
        "moderations": ["flagged", "categories", "category_scores"],
        "images/generations": [
            "b64_json", "url", "revised_prompt", "n_images", "input_tokens", "output_tokens", "total_tokens",
        ],
    }  # fmt: skip
    extra["images/edits"] = extra["images/generations"]
    for key, cols in extra.items():
        assert ok_schema(f"/v1/{key}").names() == COMMON + cols
    emb = ok_schema("/v1/embeddings", embedding_dim=1536)
    assert emb.names() == ["custom_id", "index", "embedding", *COMMON[1:], "prompt_tokens"]
    assert emb["embedding"] == pl.Array(pl.Float32, 1536)
    assert ok_schema("/v1/embeddings")["embedding"] == pl.List(pl.Float32)
    assert set(ENDPOINT_KEYS) == {*extra, "embeddings"}


def test_declared_dtypes() -> None:
    chat = ok_schema("/v1/chat/completions")
    assert chat["status_code"] == pl.Int32
    assert chat["tool_calls"] == pl.List(
        pl.Struct(
            {
                "id": pl.String,
                "type": pl.String,
                "function": pl.Struct({"name": pl.String, "arguments": pl.String}),
            }
        )
    )
    mod = ok_schema("/v1/moderations")
    assert mod["categories"] == pl.Struct(dict.fromkeys(MODERATION_CATEGORIES, pl.Boolean))
    assert mod["category_scores"] == pl.Struct(dict.fromkeys(MODERATION_CATEGORIES, pl.Float64))
    assert FAILED_SCHEMA.names() == [
        "custom_id", "stage", "status_code", "error_code", "error_message",
        "retryable", "attempts", "batch_id", "line",
    ]  # fmt: skip


def test_parsed_column_only_where_answers_are_text() -> None:
    dtype = pl.Struct({"a": pl.Int64})
    assert ok_schema("/v1/chat/completions", parsed=dtype)["parsed"] == dtype
    assert ok_schema("/v1/responses", parsed=dtype)["parsed"] == dtype
    assert "parsed" not in ok_schema("/v1/embeddings", parsed=dtype)


def test_ok_key() -> None:
    assert ok_key("/v1/embeddings") == ["custom_id", "index"]
    assert ok_key("/v1/chat/completions") == ["custom_id"]


# -- JSON schema -> dtype -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "dtype"),
    [
        ({"type": "string"}, pl.String),
        ({"type": "integer"}, pl.Int64),
        ({"type": "number"}, pl.Float64),
        ({"type": "boolean"}, pl.Boolean),
        ({"type": "null"}, pl.Null),
        ({"type": ["string", "null"]}, pl.String),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, pl.Int64),
        ({"type": "string", "enum": ["a", "b"]}, pl.Enum(["a", "b"])),
        ({"enum": ["a", None]}, pl.Enum(["a"])),
        ({"enum": [1, 2]}, pl.Int64),
        ({"const": "x"}, pl.Enum(["x"])),
        ({"type": "array", "items": {"type": "number"}}, pl.List(pl.Float64)),
        ({"type": "object"}, pl.String),  # free-form: JSON text
        ({"type": "object", "additionalProperties": {"type": "integer"}}, pl.String),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, pl.String),
        ({"type": ["string", "integer"]}, pl.String),
        ({}, pl.String),
        ({"enum": ["a", 1]}, pl.String),
    ],
)
def test_dtype_mapping(schema: dict[str, Any], dtype: pl.DataType) -> None:
    assert polars_dtype_from_json_schema(schema) == dtype


def test_objects_refs_and_wrappers() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            "owner": {"anyOf": [{"$ref": "#/$defs/Person"}, {"type": "null"}]},
        },
        "required": ["name", "tags", "owner"],
        "additionalProperties": False,
        "$defs": {
            "Tag": {
                "type": "object",
                "properties": {"k": {"type": "string"}, "v": {"type": "number"}},
                "required": ["k", "v"],
                "additionalProperties": False,
            },
            "Person": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "manager": {"$ref": "#/$defs/Person"}},
                "required": ["name", "manager"],
            },
        },
    }
    expected = pl.Struct(
        {
            "name": pl.String,
            "tags": pl.List(pl.Struct({"k": pl.String, "v": pl.Float64})),
            # Recursive types have no finite dtype: the recursive part is JSON text.
            "owner": pl.Struct({"name": pl.String, "manager": pl.String}),
        }
    )
    assert polars_dtype_from_json_schema(schema) == expected
    chat = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    responses = {"format": {"type": "json_schema", "name": "x", "strict": True, "schema": schema}}
    for wrapped in (chat, chat["json_schema"], responses, responses["format"]):
        assert unwrap_json_schema(wrapped) == schema  # type: ignore[arg-type]
        assert polars_dtype_from_json_schema(wrapped) == expected  # type: ignore[arg-type]

    dtype, convert = compile_json_schema(schema)
    value = {
        "name": "n",
        "tags": [{"k": "a", "v": 1}],
        "owner": {"name": "o", "manager": {"name": "m", "manager": None}},
    }
    out = convert(value)
    assert out["tags"] == [{"k": "a", "v": 1.0}]
    assert out["owner"]["manager"] == '{"name":"m","manager":null}'
    assert pl.Series([out], dtype=dtype).to_list() == [out]


def test_pydantic_strict_schema_maps() -> None:
    from enum import Enum

    from pydantic import BaseModel

    from batchframe._api import strict_json_schema

    class Sentiment(str, Enum):  # noqa: UP042 - the (str, Enum) form users write
        pos = "positive"
        neg = "negative"

    class Item(BaseModel):
        name: str
        qty: int | None

    class Answer(BaseModel):
        sentiment: Sentiment
        items: list[Item]
        score: float

    dtype = polars_dtype_from_json_schema(strict_json_schema(Answer))
    assert dtype == pl.Struct(
        {
            "sentiment": pl.Enum(["positive", "negative"]),
            "items": pl.List(pl.Struct({"name": pl.String, "qty": pl.Int64})),
            "score": pl.Float64,
        }
    )


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        ({"type": "integer"}, 3.0, 3),
        ({"type": "number"}, 2, 2.0),
        ({"type": ["integer", "null"]}, None, None),
        ({"type": "object"}, {"a": [1]}, '{"a":[1]}'),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, 5, "5"),
        ({"enum": [1, 2]}, 2, 2),
    ],
)
def test_converter_accepts(schema: dict[str, Any], value: Any, expected: Any) -> None:
    assert compile_json_schema(schema)[1](value) == expected


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"type": "string"}, 1, "expected string, got integer"),
        ({"type": "integer"}, True, "expected integer, got boolean"),
        ({"type": "integer"}, 1.5, "expected integer, got number"),
        ({"type": "integer"}, 2**64, "does not fit in 64 bits"),
        ({"type": "number"}, "1", "expected number, got string"),
        ({"type": "boolean"}, 0, "expected boolean, got integer"),
        ({"type": "string"}, None, "expected string, got null"),
        ({"type": "null"}, 0, "expected null"),
        ({"enum": [1, 2]}, True, "is not one of"),
        ({"type": "array", "items": {"type": "string"}}, ["a", 2], r"\$\[1\]: expected string"),
        ({"type": "array", "items": {"type": "string"}}, "a", "expected an array"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {},
            "missing required property 'a'",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": False,
            },
            {"b": 1},
            r"unexpected properties \['b'\]",
        ),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, [], "expected an object"),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, 1.5, "matches none"),
    ],
)
def test_converter_rejects(schema: dict[str, Any], value: Any, message: str) -> None:
    with pytest.raises(SchemaMismatch, match=message):
        compile_json_schema(schema)[1](value)


def test_optional_property_missing_is_null() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a"],
    }
    assert compile_json_schema(schema)[1]({"a": "x", "extra": 1}) == {"a": "x", "b": None}


def test_remote_refs_are_refused() -> None:
    with pytest.raises(ValueError, match="local"):
        polars_dtype_from_json_schema({"$ref": "https://example.com/schema.json"})


# -- prices -------------------------------------------------------------------------------


def test_price_lookup_strips_snapshot_dates() -> None:
    assert price_for("gpt-4o-mini-2024-07-18", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-05-13", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o-2024-05-13"]
    assert price_for("gpt-4o-audio-preview", DEFAULT_PRICES) is None
    assert price_for(None, DEFAULT_PRICES) is None
    # Batch prices are half the standard ones, e.g. gpt-4o-mini: $0.15 / $0.60 per 1M.
    assert DEFAULT_PRICES["gpt-4o-mini"]["input"] == 0.075
    assert DEFAULT_PRICES["gpt-4o-mini"]["output"] == 0.30
