"""The echo executor through the synchronous endpoints and inside batches."""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from enum import Enum
from typing import Any, Literal

import openai
import orjson
import pytest
from conftest_server import read_lines, run_batch
from openai.types import (
    Completion,
    CreateEmbeddingResponse,
    ImagesResponse,
    ModerationCreateResponse,
    Video,
)
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel, Field

import batchframe as bf
from batchframe._api import strict_json_schema
from batchframe._server._schema_fill import fill_schema


@pytest.fixture(scope="module")
def server() -> Iterator[bf.LocalBatchServer]:
    with bf.LocalBatchServer() as s:
        yield s


@pytest.fixture(scope="module")
def client(server: bf.LocalBatchServer) -> openai.OpenAI:
    return server.client(max_retries=0)


class Sentiment(str, Enum):  # noqa: UP042 - the (str, Enum) form users write
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Aspect(BaseModel):
    name: str
    score: float = Field(ge=0, le=1)


class Review(BaseModel):
    label: Sentiment
    confidence: int = Field(ge=1, le=5)
    aspects: list[Aspect] = Field(min_length=1, max_length=3)
    summary: str | None
    spam: bool
    kind: Literal["short", "long"]
    detail: Aspect | int


def test_chat_text_usage_and_limits(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hello world"}],
    )
    ChatCompletion.model_validate(answer.model_dump(), strict=False)
    assert answer.choices[0].message.content == "hello world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 6  # "sys" + "system" + "hello world" + "user" = 24 bytes
    cut = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 100}], max_tokens=5, n=2
    )
    assert [c.message.content for c in cut.choices] == ["x" * 20] * 2
    assert {c.finish_reason for c in cut.choices} == {"length"}
    reasoning = client.chat.completions.create(
        model="o3-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert reasoning.usage is not None
    assert reasoning.usage.completion_tokens_details is not None
    assert reasoning.usage.completion_tokens_details.reasoning_tokens > 0


def test_chat_structured_output_parses(client: openai.OpenAI) -> None:
    for text in ("great phone", "awful", "meh", "fine"):
        parsed = client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": text}],
            response_format=Review,
        )
        review = parsed.choices[0].message.parsed
        assert isinstance(review, Review)
        assert 1 <= len(review.aspects) <= 3
    again = client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "fine"}], response_format=Review
    )
    assert again.choices[0].message.parsed == review  # deterministic
    obj = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_object"},
    )
    assert orjson.loads(obj.choices[0].message.content or "") == {"echo": "x"}


def test_chat_forced_tool_call(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {"name": "label", "parameters": strict_json_schema(Aspect)},
    }
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x"}],
        tools=[tool],
        tool_choice="required",
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "label"  # type: ignore[union-attr]
    Aspect.model_validate_json(call.function.arguments)  # type: ignore[union-attr]


def test_responses(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="gpt-4.1-mini", input="echo me", instructions="be brief"
    )
    assert response.output_text == "echo me"
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    parsed = client.responses.parse(
        model="gpt-4.1-mini", input=[{"role": "user", "content": "good"}], text_format=Review
    )
    assert isinstance(parsed.output_parsed, Review)
    short = client.responses.create(model="gpt-4.1-mini", input="y" * 100, max_output_tokens=16)
    assert short.status == "incomplete"
    assert short.output_text == "y" * 64


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "a"])
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [1536] * 3
    assert vectors[0] == pytest.approx(vectors[2])
    assert vectors[0] != vectors[1]
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-5)
    small = client.embeddings.create(
        model="text-embedding-3-large", input="a", dimensions=64, encoding_format="float"
    )
    assert len(small.data[0].embedding) == 64
    assert (
        len(client.embeddings.create(model="text-embedding-3-large", input="a").data[0].embedding)
        == 3072
    )
    assert client.embeddings.create(model="m", input=[1, 2, 3]).usage.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="m", input=[])


def test_completions_moderations_images(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["one", "z" * 100]
    )
    assert [c.text for c in completion.choices] == ["one", "z" * 64]
    assert [c.finish_reason for c in completion.choices] == ["stop", "length"]
    moderation = client.moderations.create(
        model="omni-moderation-latest", input=["I will kill you", "nice day"]
    )
    assert [r.flagged for r in moderation.results] == [True, False]
    assert moderation.results[0].categories.violence is True
    images = client.images.generate(model="gpt-image-1", prompt="a cat", n=2)
    assert images.data is not None
    pngs = [base64.b64decode(d.b64_json or "") for d in images.data]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert pngs[0] != pngs[1]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert info.value.param == "stream"


LINES: dict[str, tuple[dict[str, Any], Any]] = {
    "/v1/chat/completions": (
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        ChatCompletion,
    ),
    "/v1/responses": ({"model": "gpt-4.1-mini", "input": "hi"}, Response),
    "/v1/embeddings": (
        {"model": "text-embedding-3-small", "input": ["hi", "yo"], "dimensions": 32},
        CreateEmbeddingResponse,
    ),
    "/v1/completions": ({"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}, Completion),
    "/v1/moderations": (
        {
            "model": "omni-moderation-latest",
            "input": [
                {"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        ModerationCreateResponse,
    ),
    "/v1/images/generations": ({"model": "gpt-image-1", "prompt": "a dog"}, ImagesResponse),
    "/v1/images/edits": (
        {"model": "gpt-image-1", "prompt": "a dog", "images": [{"image_url": "https://x/y.png"}]},
        ImagesResponse,
    ),
    "/v1/videos": ({"model": "sora-2", "prompt": "a dog"}, Video),
}


@pytest.mark.parametrize("endpoint", list(LINES))
def test_every_endpoint_in_a_batch(client: openai.OpenAI, endpoint: str) -> None:
    body, model = LINES[endpoint]
    line = {"custom_id": "a", "method": "POST", "url": endpoint, "body": body}
    done = run_batch(client, [line], endpoint)
    assert done.status == "completed", done.errors
    [result] = read_lines(client, done.output_file_id)
    model.model_validate(result["response"]["body"], strict=False)
    assert done.usage is not None
    if endpoint not in ("/v1/moderations", "/v1/videos"):
        assert done.usage.input_tokens > 0


def test_fill_schema_covers_keywords() -> None:
    schema: dict[str, Any] = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["value", "children"],
            }
        },
        "type": "object",
        "properties": {
            "tree": {"$ref": "#/$defs/node"},
            "n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "minLength": 5, "maxLength": 5},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2, "maxItems": 2},
            "const": {"const": 7},
            "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "both": {
                "allOf": [
                    {"properties": {"x": {"type": "boolean"}}},
                    {"properties": {"y": {"type": "null"}}},
                ]
            },
            "maybe": {"type": ["integer", "null"], "minimum": 3, "maximum": 3},
        },
    }
    for seed in range(20):
        value = fill_schema(schema, rng=random.Random(seed), text="hello")
        assert isinstance(value["tree"]["value"], int)
        assert 0 < value["n"] < 1
        assert value["when"] == "2024-01-01T00:00:00Z"
        assert len(value["code"]) == 5
        assert len(value["tags"]) == 2
        assert set(value["tags"]) <= {"a", "b"}
        assert value["const"] == 7
        assert value["either"] is None or isinstance(value["either"], str)
        assert isinstance(value["both"]["x"], bool)
        assert value["both"]["y"] is None
        assert value["maybe"] == 3
