"""Bad-input corpus: inputs batchframe must refuse before anything is uploaded.

Usage: python benchmarks/reliability/bad_inputs.py [--verbose]

Each case builds requests from a small table and writes them to ``memory://`` (the
step before any upload; a streamed input runs its row checks there). The expected
outcome of every case is the same: refused with the named ``BatchframeError``
subclass, whose message names the offending rows (position and ``custom_id``) or the
column / template path, and with nothing left written. Cases that the API itself would
refuse line by line (``api=True``) are also checked against the local server's own
validation (``batchframe._server``: per-line ``check_body`` and file validation), so
the two cannot disagree on them.

Prints one JSON line: cases, refused as expected, accepted (a bad input got through),
refused wrongly (other class, or a message that does not name the row/column), and how
many ``api`` cases the local server refuses too. ``tests/test_request_checks.py`` runs
the corpus.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import orjson
import polars as pl

import batchframe as bf

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
RESP = "/v1/responses"
COMP = "/v1/completions"
MOD = "/v1/moderations"
IMG = "/v1/images/generations"
EDIT = "/v1/images/edits"

IDS = ["a", "b", "c", "d"]


def frame(**cols: list[Any] | pl.Series) -> pl.DataFrame:
    """A 4-row table with ids ``a``..``d`` and the given columns."""
    return pl.DataFrame({"id": IDS, "text": ["w", "x", "y", "z"], **cols})


def user(content: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def chat(**params: Any) -> dict[str, Any]:
    return {**user(pl.col("text")), **params}


@dataclass
class Case:
    """One bad input and what must happen to it."""

    name: str
    category: str
    expect: type[bf.BatchframeError]
    #: Substrings the message must hold (rows, ids, the column or path).
    mentions: tuple[str, ...]
    endpoint: str = CHAT
    body: Any = None
    data: Any = None
    custom_id: Any = "id"
    limits: Callable[[], bf.BatchLimits] | None = None
    #: Read the table as a LazyFrame (the streamed build).
    lazy: bool = False
    #: Rows the error must name (``exc.rows``) and their ids (``exc.custom_ids``).
    rows: list[int] | None = None
    #: The API refuses this body line by line: the local server must refuse it too.
    api: bool = False
    #: A custom action instead of build + write (for non-build inputs).
    action: Callable[[], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bad_row(rows: list[int]) -> tuple[str, ...]:
    return (f"row(s) {rows}", f"custom_id {[IDS[r] for r in rows]}")


CASES: list[Case] = []


def add(*cases: Case) -> None:
    CASES.extend(cases)


def row_case(name: str, category: str, rows: list[int], **kw: Any) -> None:
    """A case whose error is in some rows: run in memory and streamed."""
    kw.setdefault("expect", bf.InvalidBodyError)
    mentions = (*_bad_row(rows), *kw.pop("mentions", ()))
    for lazy in (False, True):
        add(
            Case(
                f"{name} ({'LazyFrame' if lazy else 'DataFrame'})",
                category,
                mentions=mentions,
                rows=rows,
                lazy=lazy,
                **kw,
            )
        )


# -- bodies on the chat endpoint -----------------------------------------------------

add(
    Case(
        "embeddings body on the chat endpoint",
        "chat",
        bf.InvalidBodyError,
        ("`messages`", "/v1/embeddings"),
        body=bf.embeddings_body("text-embedding-3-small", input=pl.col("text")),
        api=True,
    ),
    Case(
        "empty messages list",
        "chat",
        bf.InvalidBodyError,
        ("`messages`", "empty"),
        body={"model": "m", "messages": []},
        api=True,
    ),
    Case(
        "messages is text",
        "chat",
        bf.InvalidBodyError,
        ("`messages`",),
        body={"model": "m", "messages": "hi"},
        api=True,
    ),
    Case(
        "message is text",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0]`",),
        body={"model": "m", "messages": ["hi"]},
        api=True,
    ),
    Case(
        "message without role",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0]`", "role"),
        body={"model": "m", "messages": [{"content": "hi"}]},
        api=True,
    ),
    Case(
        "wrong role constant",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].role`", "'usr'", "'user'"),
        body={"model": "m", "messages": [{"role": "usr", "content": "hi"}]},
        api=True,
    ),
    Case(
        "struct constant as content",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content`",),
        body=user({"text": "hi"}),
        api=True,
    ),
    Case(
        "integer constant as content",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content`",),
        body=user(5),
        api=True,
    ),
    Case(
        "content part without type",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content[0]`",),
        body=user([{"text": "hi"}]),
        api=True,
    ),
    Case(
        "content part of unknown type",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content[0].type`",),
        body=user([{"type": "txt", "text": "hi"}]),
        api=True,
    ),
    Case(
        "text part without text",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content[0]`", "text"),
        body=user([{"type": "text"}]),
        api=True,
    ),
    Case(
        "tool message without tool_call_id",
        "chat",
        bf.InvalidBodyError,
        ("tool_call_id",),
        body={"model": "m", "messages": [{"role": "tool", "content": "x"}]},
        api=True,
    ),
    Case(
        "user message without content",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0]`", "content"),
        body={"model": "m", "messages": [{"role": "user"}]},
        api=True,
    ),
    Case(
        "foreign key `dimensions` on chat",
        "chat",
        bf.InvalidBodyError,
        ("`dimensions`", "/v1/embeddings"),
        body=chat(dimensions=8),
        api=True,
    ),
    Case(
        "foreign key `input` next to messages",
        "chat",
        bf.InvalidBodyError,
        ("`input`",),
        body=chat(input="x"),
        api=True,
    ),
    Case(
        "foreign key `max_output_tokens` on chat",
        "chat",
        bf.InvalidBodyError,
        ("`max_output_tokens`", "/v1/responses"),
        body=chat(max_output_tokens=5),
        api=True,
    ),
    Case(
        "typo `max_token`",
        "chat",
        bf.InvalidBodyError,
        ("`max_token`", "`max_tokens`"),
        body=chat(max_token=5),
        api=True,
    ),
    Case(
        "typo `temprature`",
        "chat",
        bf.InvalidBodyError,
        ("`temprature`", "`temperature`"),
        body=chat(temprature=0.5),
        api=True,
    ),
    Case(
        "stream: true", "chat", bf.StreamingNotSupportedError, ("stream",), body=chat(stream=True)
    ),
    Case(
        "messages as a text column",
        "chat",
        bf.InvalidBodyError,
        ("`messages`", "String"),
        body={"model": "m", "messages": pl.col("text")},
    ),
    Case(
        "message struct column without role",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0]`", "role"),
        body={"model": "m", "messages": [pl.struct(content=pl.col("text"))]},
    ),
    Case(
        "list of strings as content",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content`", "list"),
        body=user(pl.concat_list(pl.col("text"))),
    ),
)
row_case(
    "wrong role in a column",
    "chat",
    [1, 3],
    body={"model": "m", "messages": [{"role": pl.col("r"), "content": pl.col("text")}]},
    data=frame(r=["user", "usr", "system", "bot"]),
    mentions=("`messages[0].role`",),
    api=True,
)
add(
    Case(
        "struct column as content",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content`", "struct"),
        body=user(pl.struct(t=pl.col("text"))),
        api=True,
    ),
    Case(
        "integer column as content",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content`", "Int64"),
        body=user(pl.col("n")),
        data=frame(n=[1, 2, 3, 4]),
        api=True,
    ),
    Case(
        "struct column as content (LazyFrame)",
        "chat",
        bf.InvalidBodyError,
        ("`messages[0].content`", "struct"),
        body=user(pl.struct(t=pl.col("text"))),
        lazy=True,
    ),
)
row_case(
    "null prompt",
    "chat",
    [2],
    expect=bf.NullValueError,
    body=user(pl.col("p")),
    data=frame(p=["a", "b", None, "d"]),
    mentions=("`messages[0].content`",),
)
row_case(
    "empty messages list in a column",
    "chat",
    [1],
    body={"model": "m", "messages": pl.col("msgs")},
    data=frame(
        msgs=[
            [{"role": "user", "content": "a"}],
            [],
            [{"role": "user", "content": "c"}],
            [{"role": "user", "content": "d"}],
        ]
    ),
    mentions=("`messages`", "empty"),
    api=True,
)
row_case(
    "bad role inside a messages column",
    "chat",
    [3],
    body={"model": "m", "messages": pl.col("msgs")},
    data=frame(
        msgs=[[{"role": "user", "content": "a"}]] * 3 + [[{"role": "robot", "content": "d"}]]
    ),
    mentions=("role",),
    api=True,
)
row_case(
    "content part of unknown type in a column",
    "chat",
    [2],
    body=user(pl.col("parts")),
    data=frame(
        parts=[
            [{"type": "text", "text": "a"}],
            [{"type": "text", "text": "b"}],
            [{"type": "image", "text": "c"}],
            [{"type": "text", "text": "d"}],
        ]
    ),
    mentions=("`messages[0].content`",),
    api=True,
)
row_case(
    "stream: true in a column",
    "chat",
    [1],
    expect=bf.StreamingNotSupportedError,
    body=chat(stream=pl.col("s")),
    data=frame(s=[False, True, False, False]),
    mentions=("stream",),
)
row_case(
    "NaN temperature",
    "chat",
    [0],
    expect=bf.TemplateError,
    body=chat(temperature=pl.col("t")),
    data=frame(t=[float("nan"), 0.5, 0.5, 0.5]),
    mentions=("`temperature`", "NaN"),
)

# -- model -----------------------------------------------------------------------------

add(
    Case(
        "no model",
        "model",
        bf.InvalidBodyError,
        ("`model`",),
        body={"messages": [{"role": "user", "content": "x"}]},
        api=True,
    ),
    Case(
        "empty model",
        "model",
        bf.InvalidBodyError,
        ("`model`",),
        body={**chat(), "model": ""},
        api=True,
    ),
    Case(
        "integer model",
        "model",
        bf.InvalidBodyError,
        ("`model`", "5"),
        body={**chat(), "model": 5},
        api=True,
    ),
    Case(
        "None model",
        "model",
        bf.InvalidBodyError,
        ("`model`",),
        body={**chat(), "model": None},
        api=True,
    ),
    Case(
        "integer model column",
        "model",
        bf.InvalidBodyError,
        ("`model`", "Int64"),
        body={**chat(), "model": pl.col("n")},
        data=frame(n=[1, 2, 3, 4]),
    ),
    Case(
        "integer model column (LazyFrame)",
        "model",
        bf.InvalidBodyError,
        ("`model`", "Int64"),
        body={**chat(), "model": pl.col("n")},
        data=frame(n=[1, 2, 3, 4]),
        lazy=True,
    ),
)
row_case(
    "empty model in a column",
    "model",
    [1],
    body={**chat(), "model": pl.col("m")},
    data=frame(m=["gpt-4o-mini", "", "gpt-4o-mini", "gpt-4o-mini"]),
    mentions=("`model`",),
    api=True,
)
row_case(
    "null model in a column",
    "model",
    [3],
    expect=bf.NullValueError,
    body={**chat(), "model": pl.col("m")},
    data=frame(m=["gpt-4o-mini"] * 3 + [None]),
    mentions=("`model`",),
)

# -- numeric parameters ---------------------------------------------------------------

add(
    Case(
        "temperature above 2",
        "params",
        bf.InvalidBodyError,
        ("`temperature`", "3"),
        body=chat(temperature=3),
        api=True,
    ),
    Case(
        "temperature as text",
        "params",
        bf.InvalidBodyError,
        ("`temperature`",),
        body=chat(temperature="0.5"),
        api=True,
    ),
    Case(
        "max_tokens 0",
        "params",
        bf.InvalidBodyError,
        ("`max_tokens`",),
        body=chat(max_tokens=0),
        api=True,
    ),
    Case(
        "max_tokens as text",
        "params",
        bf.InvalidBodyError,
        ("`max_tokens`",),
        body=chat(max_tokens="10"),
        api=True,
    ),
    Case(
        "max_tokens as a float",
        "params",
        bf.InvalidBodyError,
        ("`max_tokens`",),
        body=chat(max_tokens=10.5),
        api=True,
    ),
    Case("n 0", "params", bf.InvalidBodyError, ("`n`",), body=chat(n=0), api=True),
    Case("top_p 1.5", "params", bf.InvalidBodyError, ("`top_p`",), body=chat(top_p=1.5), api=True),
    Case(
        "presence_penalty -3",
        "params",
        bf.InvalidBodyError,
        ("`presence_penalty`",),
        body=chat(presence_penalty=-3),
        api=True,
    ),
    Case(
        "max_tokens as a boolean",
        "params",
        bf.InvalidBodyError,
        ("`max_tokens`",),
        body=chat(max_tokens=True),
        api=True,
    ),
    Case(
        "max_tokens float column",
        "params",
        bf.InvalidBodyError,
        ("`max_tokens`", "Float64"),
        body=chat(max_tokens=pl.col("f")),
        data=frame(f=[1.0, 2.0, 3.0, 4.0]),
    ),
)
row_case(
    "temperature column above 2",
    "params",
    [2],
    body=chat(temperature=pl.col("t")),
    data=frame(t=[0.1, 0.2, 5.0, 0.3]),
    mentions=("`temperature`",),
    api=True,
)
row_case(
    "max_tokens column with 0",
    "params",
    [0, 3],
    body=chat(max_tokens=pl.col("k")),
    data=frame(k=[0, 5, 5, -1]),
    mentions=("`max_tokens`",),
    api=True,
)

# -- embeddings --------------------------------------------------------------------

EMB_MODEL = "text-embedding-3-small"
add(
    Case(
        "chat body on the embeddings endpoint",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`", CHAT),
        endpoint=EMB,
        body=bf.chat_body(EMB_MODEL, user=pl.col("text")),
        api=True,
    ),
    Case(
        "empty-string input",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`", "empty"),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": ""},
        custom_id=pl.col("id"),
        api=True,
    ),
    Case(
        "empty-list input",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`", "empty"),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": []},
        api=True,
    ),
    Case(
        "2,049 inputs in one request",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`", "2,048"),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": ["x"] * 2049},
        api=True,
    ),
    Case(
        "empty string among inputs",
        "embeddings",
        bf.InvalidBodyError,
        ("`input[1]`",),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": ["x", ""]},
        api=True,
    ),
    Case(
        "boolean input",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`",),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": True},
        api=True,
    ),
    Case(
        "dict input",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`",),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": {"text": "x"}},
        api=True,
    ),
    Case(
        "encoding_format int8",
        "embeddings",
        bf.InvalidBodyError,
        ("`encoding_format`",),
        endpoint=EMB,
        body=bf.embeddings_body(EMB_MODEL, input=pl.col("text"), encoding_format="int8"),
        api=True,
    ),
    Case(
        "dimensions 0",
        "embeddings",
        bf.InvalidBodyError,
        ("`dimensions`",),
        endpoint=EMB,
        body=bf.embeddings_body(EMB_MODEL, input=pl.col("text"), dimensions=0),
        api=True,
    ),
    Case(
        "dimensions as text",
        "embeddings",
        bf.InvalidBodyError,
        ("`dimensions`",),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": pl.col("text"), "dimensions": "256"},
        api=True,
    ),
    Case(
        "struct input column",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`", "struct"),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": pl.struct(t=pl.col("text"))},
    ),
    Case(
        "float-list input column",
        "embeddings",
        bf.InvalidBodyError,
        ("`input`", "Float64"),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": pl.col("v")},
        data=frame(v=[[0.1]] * 4),
    ),
    Case(
        "foreign key `temperature` on embeddings",
        "embeddings",
        bf.InvalidBodyError,
        ("`temperature`",),
        endpoint=EMB,
        body={"model": EMB_MODEL, "input": pl.col("text"), "temperature": 0.5},
        api=True,
    ),
)
row_case(
    "empty strings in an input column",
    "embeddings",
    [1, 2],
    endpoint=EMB,
    body={"model": EMB_MODEL, "input": pl.col("t")},
    data=frame(t=["a", "", "", "d"]),
    mentions=("`input`", "empty"),
    api=True,
)
row_case(
    "empty list in an input column",
    "embeddings",
    [0],
    endpoint=EMB,
    body={"model": EMB_MODEL, "input": pl.col("t")},
    data=frame(t=[[], ["b"], ["c"], ["d"]]),
    mentions=("`input`", "empty"),
    api=True,
)
row_case(
    "2,049 inputs in one row",
    "embeddings",
    [3],
    endpoint=EMB,
    body={"model": EMB_MODEL, "input": pl.col("t")},
    data=frame(t=[["a"], ["b"], ["c"], ["d"] * 2049]),
    mentions=("`input`", "2,048"),
    api=True,
)
row_case(
    "empty string inside an input list",
    "embeddings",
    [2],
    endpoint=EMB,
    body={"model": EMB_MODEL, "input": pl.col("t")},
    data=frame(t=[["a"], ["b"], ["c", ""], ["d"]]),
    mentions=("`input`",),
    api=True,
)
row_case(
    "empty token list",
    "embeddings",
    [1],
    endpoint=EMB,
    body={"model": EMB_MODEL, "input": pl.col("t")},
    data=frame(t=[[1, 2], [], [3], [4]]),
    mentions=("`input`",),
    api=True,
)

# -- responses, completions, moderations, images ---------------------------------------

add(
    Case(
        "responses without input",
        "responses",
        bf.InvalidBodyError,
        ("`input`",),
        endpoint=RESP,
        body={"model": "gpt-4o-mini", "instructions": pl.col("text")},
        api=True,
    ),
    Case(
        "chat body on the responses endpoint",
        "responses",
        bf.InvalidBodyError,
        ("`input`", CHAT),
        endpoint=RESP,
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        api=True,
    ),
    Case(
        "responses item with a wrong role",
        "responses",
        bf.InvalidBodyError,
        ("`input[0].role`",),
        endpoint=RESP,
        body={"model": "m", "input": [{"role": "human", "content": pl.col("text")}]},
        api=True,
    ),
    Case(
        "responses message without content",
        "responses",
        bf.InvalidBodyError,
        ("`input[0]`", "content"),
        endpoint=RESP,
        body={"model": "m", "input": [{"role": "user"}]},
        api=True,
    ),
    Case(
        "responses input as an integer",
        "responses",
        bf.InvalidBodyError,
        ("`input`",),
        endpoint=RESP,
        body={"model": "m", "input": 7},
        api=True,
    ),
    Case(
        "responses input as an integer column",
        "responses",
        bf.InvalidBodyError,
        ("`input`", "Int64"),
        endpoint=RESP,
        body={"model": "m", "input": pl.col("n")},
        data=frame(n=[1, 2, 3, 4]),
    ),
    Case(
        "responses foreign key `max_tokens`",
        "responses",
        bf.InvalidBodyError,
        ("`max_tokens`",),
        endpoint=RESP,
        body=bf.responses_body("m", input=pl.col("text"), max_tokens=5),
        api=True,
    ),
    Case(
        "completions without prompt",
        "completions",
        bf.InvalidBodyError,
        ("`prompt`",),
        endpoint=COMP,
        body=bf.chat_body("gpt-3.5-turbo-instruct", user=pl.col("text")),
        api=True,
    ),
    Case(
        "completions prompt as a dict",
        "completions",
        bf.InvalidBodyError,
        ("`prompt`",),
        endpoint=COMP,
        body={"model": "m", "prompt": {"a": 1}},
        api=True,
    ),
    Case(
        "completions prompt struct column",
        "completions",
        bf.InvalidBodyError,
        ("`prompt`", "struct"),
        endpoint=COMP,
        body={"model": "m", "prompt": pl.struct(t=pl.col("text"))},
    ),
    Case(
        "moderations with an empty input list",
        "moderations",
        bf.InvalidBodyError,
        ("`input`", "empty"),
        endpoint=MOD,
        body=bf.moderations_body(input=[]),
        api=True,
    ),
    Case(
        "moderations input as an integer",
        "moderations",
        bf.InvalidBodyError,
        ("`input`",),
        endpoint=MOD,
        body=bf.moderations_body(input=3),
        api=True,
    ),
    Case(
        "moderations part of unknown type",
        "moderations",
        bf.InvalidBodyError,
        ("`input[0].type`",),
        endpoint=MOD,
        body=bf.moderations_body(input=[{"type": "video", "text": "x"}]),
        api=True,
    ),
    Case(
        "moderations without input",
        "moderations",
        bf.InvalidBodyError,
        ("`input`",),
        endpoint=MOD,
        body={"model": "omni-moderation-latest", "prompt": pl.col("text")},
        api=True,
    ),
    Case(
        "image generation with an empty prompt",
        "images",
        bf.InvalidBodyError,
        ("`prompt`", "empty"),
        endpoint=IMG,
        body=bf.image_body("gpt-image-1", prompt=""),
        custom_id=pl.col("id"),
        api=True,
    ),
    Case(
        "image prompt as an integer",
        "images",
        bf.InvalidBodyError,
        ("`prompt`",),
        endpoint=IMG,
        body=bf.image_body("gpt-image-1", prompt=4),
        api=True,
    ),
    Case(
        "image edit without images",
        "images",
        bf.InvalidBodyError,
        ("`images`",),
        endpoint=EDIT,
        body=bf.image_body("gpt-image-1", prompt=pl.col("text")),
        api=True,
    ),
    Case(
        "image edit with an empty images list",
        "images",
        bf.InvalidBodyError,
        ("`images`",),
        endpoint=EDIT,
        body={"model": "gpt-image-1", "prompt": pl.col("text"), "images": []},
        api=True,
    ),
    Case(
        "image edit item without image_url or file_id",
        "images",
        bf.InvalidBodyError,
        ("`images[0]`",),
        endpoint=EDIT,
        body={"model": "gpt-image-1", "prompt": pl.col("text"), "images": [{"url": "x"}]},
        api=True,
    ),
    Case(
        "messages on the images endpoint",
        "images",
        bf.InvalidBodyError,
        ("`messages`",),
        endpoint=IMG,
        body={"model": "gpt-image-1", "prompt": pl.col("text"), "messages": []},
        api=True,
    ),
)
row_case(
    "empty image prompt in a column",
    "images",
    [1],
    endpoint=IMG,
    body=bf.image_body("gpt-image-1", prompt=pl.col("p")),
    data=frame(p=["a", "", "c", "d"]),
    mentions=("`prompt`",),
    api=True,
)

# -- ids --------------------------------------------------------------------------------

for lazy in (False, True):
    kind = "LazyFrame" if lazy else "DataFrame"
    add(
        Case(
            f"null custom_id ({kind})",
            "ids",
            bf.CustomIdError,
            ("null", "row(s) [1]"),
            body=chat(),
            custom_id="k",
            data=frame(k=["a", None, "c", "d"]),
            lazy=lazy,
        ),
        Case(
            f"empty custom_id ({kind})",
            "ids",
            bf.CustomIdError,
            ("empty", "row(s) [2]"),
            body=chat(),
            custom_id="k",
            data=frame(k=["a", "b", "", "d"]),
            lazy=lazy,
        ),
        Case(
            f"duplicate custom_id ({kind})",
            "ids",
            bf.DuplicateCustomIdError,
            ("'a'", "row(s) [0, 3]"),
            body=chat(),
            custom_id="k",
            data=frame(k=["a", "b", "c", "a"]),
            lazy=lazy,
        ),
        Case(
            f"float custom_id ({kind})",
            "ids",
            bf.CustomIdError,
            ("Float64",),
            body=chat(),
            custom_id="k",
            data=frame(k=[1.5, 2.5, 3.5, 4.5]),
            lazy=lazy,
        ),
    )
add(
    Case(
        "struct custom_id",
        "ids",
        bf.CustomIdError,
        ("custom_id",),
        body=chat(),
        custom_id=pl.struct("id", "text"),
    ),
    Case(
        "custom_id given as a number",
        "ids",
        bf.CustomIdError,
        ("custom_id",),
        body=chat(),
        custom_id=5,
    ),
    Case(
        "no custom_id and a template without expressions",
        "ids",
        bf.TemplateError,
        ("custom_id",),
        body=user("constant"),
        custom_id=None,
    ),
)

# -- columns, dtypes, templates, endpoints, inputs ----------------------------------------

add(
    Case(
        "unknown column in the template",
        "columns",
        bf.ColumnNotFoundError,
        ("'txt'", "messages[0].content"),
        body=user(pl.col("txt")),
    ),
    Case(
        "unknown column as custom_id",
        "columns",
        bf.ColumnNotFoundError,
        ("'ident'",),
        body=chat(),
        custom_id="ident",
    ),
    Case(
        "unknown column (LazyFrame)",
        "columns",
        bf.ColumnNotFoundError,
        ("'txt'",),
        body=user(pl.col("txt")),
        lazy=True,
    ),
    Case("body is a list", "template", bf.TemplateError, ("`body`",), body=[chat()]),
    Case(
        "set in the template",
        "template",
        bf.TemplateError,
        ("`stop`", "set"),
        body=chat(stop={"a"}),
    ),
    Case(
        "infinity in the template",
        "template",
        bf.TemplateError,
        ("`temperature`",),
        body=chat(temperature=float("inf")),
    ),
    Case("non-string key", "template", bf.TemplateError, ("key",), body={**chat(), 3: "x"}),
    Case(
        "bytes that are not UTF-8",
        "dtypes",
        bf.EncodingError,
        ("row(s) [1]", "custom_id ['b']"),
        body=user(pl.col("b")),
        data=frame(b=pl.Series([b"ok", b"\xff\xfe", b"ok", b"ok"])),
    ),
    Case(
        "duration column as a leaf",
        "dtypes",
        bf.BatchframeError,
        ("`metadata`",),
        body=chat(metadata=pl.col("d")),
        data=frame(d=[dt.timedelta(seconds=i) for i in range(4)]),
    ),
    Case(
        "template expression that fails on the data",
        "dtypes",
        bf.EvaluationError,
        ("cast",),
        body=chat(max_tokens=pl.col("text").cast(pl.Int64, strict=True)),
    ),
    Case(
        "unknown endpoint",
        "endpoint",
        bf.EndpointError,
        ("/v1/chat",),
        endpoint="/v1/chat",
        body=chat(),
    ),
    Case(
        "endpoint without /v1",
        "endpoint",
        bf.EndpointError,
        ("'/v1/chat/completions'",),
        endpoint="/chat/completions",
        body=chat(),
    ),
    Case(
        "input that is not a table",
        "input",
        bf.InputError,
        ("dict",),
        body=chat(),
        data={"id": ["a"], "text": ["x"]},
    ),
)

# -- limits --------------------------------------------------------------------------------

add(
    Case(
        "max_requests 0",
        "limits",
        bf.LimitError,
        ("max_requests",),
        body=chat(),
        limits=lambda: bf.BatchLimits(max_requests=0),
    ),
    Case(
        "max_bytes negative",
        "limits",
        bf.LimitError,
        ("max_bytes",),
        body=chat(),
        limits=lambda: bf.BatchLimits(max_bytes=-1),
    ),
    Case(
        "max_tokens as text",
        "limits",
        bf.LimitError,
        ("max_tokens",),
        body=chat(),
        limits=lambda: bf.BatchLimits(max_tokens="5"),
    ),  # type: ignore[arg-type]
    Case(
        "max_embedding_inputs a float",
        "limits",
        bf.LimitError,
        ("max_embedding_inputs",),
        body=chat(),
        limits=lambda: bf.BatchLimits(max_embedding_inputs=1.5),
    ),  # type: ignore[arg-type]
)
for lazy in (False, True):
    kind = "LazyFrame" if lazy else "DataFrame"
    add(
        Case(
            f"a line over max_bytes ({kind})",
            "limits",
            bf.RequestTooLargeError,
            ("row(s) [2]", "custom_id ['c']", "max_bytes"),
            body=user(pl.col("p")),
            data=frame(p=["a", "b", "c" * 2_000, "d"]),
            limits=lambda: bf.BatchLimits(max_bytes=1_000),
            lazy=lazy,
        ),
        Case(
            f"a row over max_embedding_inputs ({kind})",
            "limits",
            bf.InputError,
            ("row(s) [1]", "custom_id ['b']", "max_embedding_inputs"),
            endpoint=EMB,
            body={"model": EMB_MODEL, "input": pl.col("t")},
            data=frame(t=[["a"], ["b"] * 5, ["c"], ["d"]]),
            limits=lambda: bf.BatchLimits(max_embedding_inputs=3),
            lazy=lazy,
        ),
    )


# -- running ---------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    refused: bool
    ok: bool
    detail: str
    server_refuses: bool | None = None


def _root(case: Case) -> str:
    return "/bad-inputs/" + "".join(c if c.isalnum() else "-" for c in case.name)


def _run(case: Case) -> None:
    data = case.data if case.data is not None else frame()
    if isinstance(data, pl.DataFrame) and case.lazy:
        data = data.lazy()
    limits = case.limits() if case.limits is not None else None
    req = bf.build_requests(data, endpoint=case.endpoint, body=case.body, custom_id=case.custom_id)
    req.write(f"memory:/{_root(case)}", limits=limits)


def _row_body(body: Any, data: pl.DataFrame, row: int) -> Any:
    """The JSON body a template gives for one row (expressions evaluated)."""
    if isinstance(body, pl.Expr):
        value = data.select(body.alias("v"))["v"][row]
        return value.to_list() if isinstance(value, pl.Series) else value
    if isinstance(body, dict):
        return {k: _row_body(v, data, row) for k, v in body.items()}
    if isinstance(body, list):
        return [_row_body(v, data, row) for v in body]
    return body


def server_refuses(case: Case) -> bool:
    """Whether the local server refuses the case's (first bad) line, per line or per file."""
    from batchframe._server._body_checks import check_body
    from batchframe._server._validate import FileLimits, ValidFile, validate_input_file

    data = case.data if case.data is not None else frame()
    row = (case.rows or [0])[0]
    body = _row_body(case.body, data, row)
    line = {"custom_id": "x", "method": "POST", "url": case.endpoint, "body": body}
    valid = validate_input_file(orjson.dumps(line), case.endpoint, FileLimits(), count_tokens=False)
    if not isinstance(valid, ValidFile):
        return True  # the whole file is refused
    return check_body(case.endpoint, body) is not None


def run_case(case: Case) -> Outcome:
    fs = fsspec.filesystem("memory")
    root = _root(case)
    try:
        if case.action is not None:
            case.action()
        else:
            _run(case)
    except bf.BatchframeError as exc:
        message = str(exc)
        missing = [m for m in case.mentions if m not in message]
        problems = []
        if not isinstance(exc, case.expect):
            problems.append(f"raised {type(exc).__name__}, expected {case.expect.__name__}")
        if missing:
            problems.append(f"message lacks {missing}")
        rows = getattr(exc, "rows", None)
        if case.rows is not None and rows != case.rows:
            problems.append(f"rows {rows}, expected {case.rows}")
        ids = getattr(exc, "custom_ids", None)
        if case.rows is not None and ids and ids != [IDS[r] for r in case.rows]:
            problems.append(f"custom_ids {ids}")
        if fs.exists(root) and fs.find(root):
            problems.append(f"files left behind: {fs.find(root)}")
        detail = "; ".join(problems) or message
        outcome = Outcome(case, True, not problems, detail)
    except Exception as exc:  # not a BatchframeError: a raw error reached the user
        outcome = Outcome(case, True, False, f"raw {type(exc).__name__}: {exc}")
    else:
        outcome = Outcome(case, False, False, "accepted")
    if case.api:
        outcome.server_refuses = server_refuses(case)
    return outcome


def run_all() -> list[Outcome]:
    """Run every case; the memory filesystem is left as it was found."""
    fs = fsspec.filesystem("memory")
    try:
        return [run_case(c) for c in CASES]
    finally:
        if fs.exists("/bad-inputs"):
            fs.rm("/bad-inputs", recursive=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    outcomes = run_all()
    for o in outcomes:
        if args.verbose or not o.ok or o.server_refuses is False:
            status = "ok" if o.ok else ("ACCEPTED" if not o.refused else "WRONG")
            server = "" if o.server_refuses is None else f" server_refuses={o.server_refuses}"
            print(f"[{status}] {o.case.category}: {o.case.name}{server}: {o.detail}")
    api = [o for o in outcomes if o.server_refuses is not None]
    summary = {
        "cases": len(outcomes),
        "refused_as_expected": sum(o.ok for o in outcomes),
        "accepted": sum(not o.refused for o in outcomes),
        "refused_wrongly": sum(o.refused and not o.ok for o in outcomes),
        "api_cases": len(api),
        "server_refuses_too": sum(bool(o.server_refuses) for o in api),
        "by_category": {
            c: sum(o.case.category == c for o in outcomes)
            for c in dict.fromkeys(o.case.category for o in outcomes)
        },
    }
    print(json.dumps(summary))
    return (
        0
        if summary["refused_as_expected"] == len(outcomes)
        and summary["server_refuses_too"] == len(api)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
