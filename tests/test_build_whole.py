"""The in-memory build's one-query path against the chunked build it stands in for.

A table whose leaves cannot fail to encode is built by one Polars query over every row
(``Builder.whole_query``); everything else, and any refusal, goes through the chunked
build. Both must give the same requests, byte for byte, and the same errors.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import batchframe as bf
from batchframe import _build, _calibrate, _stream
from batchframe.exceptions import InputError

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 rows, query slices of 1-4 rows and "auto" sample blocks of 5, so they
    all cross everywhere."""
    monkeypatch.setattr(_build, "CHUNK_ROWS", 7)
    monkeypatch.setattr(_stream, "CHUNK_ROWS", 6)
    monkeypatch.setattr(_build, "_SLICE_MIN", 1)
    monkeypatch.setattr(_build, "_SLICE_MAX", 4)
    monkeypatch.setattr(_calibrate, "CALIBRATION_ROWS", 5)


def _chunked_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build.Builder, "whole_query", lambda self, evaluated: None)


def _facts(req: bf.Requests) -> tuple[Any, ...]:
    return (req.fingerprint, req.frame.to_dicts(), req.tokenizer)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    texts=st.lists(TEXT, min_size=1, max_size=40),
    ids=st.sampled_from(["int", "text", "escaped"]),
    model=st.sampled_from(["const", "column"]),
    int_leaf=st.booleans(),
    tokenizer=st.sampled_from(["estimate", "auto"]),
)
def test_one_query_and_chunks_build_the_same_requests(
    small_blocks: None,
    monkeypatch: pytest.MonkeyPatch,
    texts: list[str],
    ids: str,
    model: str,
    int_leaf: bool,
    tokenizer: str,
) -> None:
    n = len(texts)
    id_values: list[Any] = {
        "int": list(range(n)),
        "text": [f"row-{i}" for i in range(n)],
        "escaped": [f'r"{i}\\\n\t' for i in range(n)],
    }[ids]
    df = pl.DataFrame(
        {"id": id_values, "text": texts, "m": ["m1", "m2"] * (n // 2) + ["m1"] * (n % 2)}
    ).with_columns(cap=pl.int_range(pl.len()) % 7 + 1)
    body = bf.chat_body(
        pl.col("m") if model == "column" else "gpt-4o-mini",
        user=pl.col("text"),
        system="Sé brief.",
        max_tokens=pl.col("cap") if int_leaf else 5,
    )

    def build(frame: Any) -> bf.Requests:
        return bf.build_requests(
            frame, endpoint="/v1/chat/completions", body=body, custom_id="id", tokenizer=tokenizer
        )

    # In memory and streamed (a LazyFrame: chunk by chunk), each way against the chunked
    # build without the query.
    whole = [_facts(build(df)), _facts(build(df.lazy()))]
    with monkeypatch.context() as m:
        _chunked_only(m)
        chunked = [_facts(build(df)), _facts(build(df.lazy()))]
    assert whole == chunked
    assert whole[0] == whole[1]


def test_one_query_path_is_taken_for_plain_text_and_integers() -> None:
    df = pl.DataFrame({"id": [1, 2], "text": ["a", 'b "q"'], "n": [3, 4]})
    body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=pl.col("n"))
    seen: list[bool] = []
    original = _build.Builder.whole_query

    def spy(self: _build.Builder, evaluated: pl.DataFrame) -> pl.LazyFrame | None:
        out = original(self, evaluated)
        seen.append(out is not None)
        return out

    with pytest.MonkeyPatch.context() as m:
        m.setattr(_build.Builder, "whole_query", spy)
        bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
        # A null leaf cannot take it: the chunked build refuses it.
        with pytest.raises(InputError):
            bf.build_requests(
                df.with_columns(pl.lit(None, pl.String).alias("text")),
                endpoint="/v1/chat/completions",
                body=body,
                custom_id="id",
            )
    # The second build: no query for the whole table, nor for its chunks.
    assert seen[0] and len(seen) > 1 and not any(seen[1:])


BAD_INPUTS = {
    "duplicate ids": (
        pl.DataFrame({"id": [1, 2, 1], "text": ["a", "b", "c"], "role": ["user"] * 3}),
        "id",
    ),
    "empty text id": (
        pl.DataFrame({"id": ["a", "", "c"], "text": ["a", "b", "c"], "role": ["user"] * 3}),
        "id",
    ),
    "bad role in a later chunk": (
        pl.DataFrame(
            {
                "id": list(range(20)),
                "text": ["t"] * 20,
                "role": ["user"] * 15 + ["robot"] + ["user"] * 4,
            }
        ),
        "id",
    ),
    "bad role and duplicate ids": (
        pl.DataFrame({"id": [1, 1], "text": ["a", "b"], "role": ["robot", "user"]}),
        "id",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_refusals_are_the_chunked_builds(
    small_blocks: None, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    df, custom_id = BAD_INPUTS[case]
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": pl.col("role"), "content": pl.col("text")}],
    }

    def refusal() -> tuple[type, str, list[int] | None]:
        with pytest.raises(InputError) as info:
            bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id=custom_id)
        return type(info.value), str(info.value), info.value.rows

    got = refusal()
    with monkeypatch.context() as m:
        _chunked_only(m)
        assert refusal() == got
