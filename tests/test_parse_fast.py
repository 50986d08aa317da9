"""The byte-offset cut gives exactly what the character-offset cut it replaced gave.

:func:`batchframe._lines.read_text_lines` cuts each line's body by byte offsets, with
one search for ``"body":`` and the blank-line test only on lines whose head did not
match; the previous reader (kept here as the reference) used character offsets, two
searches and tested every line for blanks. On generated files of many layouts, with
blank lines, CRLF endings and a BOM, both give the same frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import duckdb
import orjson
import polars as pl
from hypothesis import HealthCheck, given, settings, strategies as st
from polars.testing import assert_frame_equal
from test_results_cut import _dump, _strings, _with_extra, output_line
from test_results_lines import chat_body, embeddings_body, jsonl, line

from batchframe import _duckdb_json, _lines, _parse
from batchframe._lines import read_text_lines
from batchframe._results import parse_output
from batchframe.exceptions import ResultsError

CHAT = "/v1/chat/completions"
BOM = b"\xef\xbb\xbf"


def _reference_cut(line: pl.Expr) -> dict[str, pl.Expr]:
    """The cut as it was before byte offsets: character offsets, two searches."""
    key_at = line.str.find(_lines._BODY_KEY, literal=True)
    spaced = (line.str.find(_lines._BODY_KEY + " {", literal=True) == key_at).fill_null(False)
    tail = pl.lit(None, dtype=pl.Int64)
    for text, size in reversed(_lines._TAILS.items()):
        tail = pl.when(line.str.ends_with(text)).then(size).otherwise(tail)
    head = pl.when(line.str.contains(_lines._HEAD) & tail.is_not_null()).then(
        line.cast(pl.Binary).bin.slice(0, key_at + len(_lines._BODY_KEY)).cast(pl.String)
    )
    start = head.str.len_chars().cast(pl.Int64) + spaced.cast(pl.Int64)
    return {
        "_span": line.str.slice(start, line.str.len_chars() - start - tail),
        "_head": head + pl.lit("null}}"),
    }


def _reference_lines(data: bytes) -> pl.DataFrame:
    """``read_text_lines`` as it was: one Polars query, blank lines dropped first."""
    lines = pl.scan_csv(
        data,
        separator="\x1f",
        quote_char=None,
        has_header=False,
        new_columns=["line"],
        schema={"line": pl.String},
        comment_prefix=None,
    )
    blank = re.escape(_lines._BLANK)
    return (
        lines.with_row_index("_lineno", offset=1)
        .filter(pl.col("line").str.contains(f"[^{blank}]"))
        .with_row_index("_ordinal")
        .with_columns(**_reference_cut(pl.col("line")))
        .collect()
    )


# -- generated files -----------------------------------------------------------------------

_layouts = st.sampled_from(
    ["standard", "standard", "response", "top", "reversed", "no_id", "status_null", "error"]
)
_dumps = st.sampled_from(["orjson", "spaced", "spaced_ascii", "compact_ascii", "wide"])
_blank = st.sampled_from([b"", b" ", b"\t", b"\r", b" \x0b\x0c "])


@st.composite
def _files(draw: Any) -> bytes:
    """A file of output lines in many layouts, with blank lines, CRLF and a BOM."""
    out = []
    for k, (content, layout, how, status) in enumerate(
        draw(
            st.lists(
                st.tuples(_strings, _layouts, _dumps, st.sampled_from([200, 200, 404])),
                max_size=30,
            )
        )
    ):
        obj = output_line(f"c{k}", chat_body(content))
        obj["response"]["status_code"] = status
        if layout == "error":
            obj["error"] = {"code": "server_error", "message": content}
        elif layout != "standard":
            obj = _with_extra(obj, layout)
        out.append(_dump(obj, how))
        out.extend(draw(st.lists(_blank, max_size=2)))
    ending: bytes = draw(st.sampled_from([b"\n", b"\r\n"]))
    data: bytes = ending.join(out) + draw(st.sampled_from([b"", ending]))
    bom: bool = draw(st.booleans())
    return (BOM if bom else b"") + data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files())
def test_the_byte_cut_gives_the_reference_lines(data: bytes) -> None:
    want = _reference_lines(data)
    got = read_text_lines(data)
    assert_frame_equal(got, want.select(got.columns))


def test_a_spaced_body_key_with_a_minified_tail_and_the_reverse() -> None:
    body = chat_body("x")
    mini = orjson.dumps(output_line("a", body))
    raws = [
        mini.replace(b'"body":', b'"body": '),
        json.dumps(output_line("b", body)).encode().replace(b'"body": ', b'"body":'),
    ]
    got = read_text_lines(jsonl(raws))
    assert_frame_equal(got, _reference_lines(jsonl(raws)).select(got.columns))
    assert got["_span"].to_list() == [orjson.dumps(body).decode(), json.dumps(body)]
    ok, failed = parse_output(jsonl(raws), endpoint=CHAT, batch_id="b")
    assert failed.is_empty() and ok["body"].to_list() == got["_span"].to_list()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files())
def test_the_strict_cut_query_fails_or_gives_the_lenient_result(data: bytes) -> None:
    """``read_lines`` runs the cut query without ``try`` first, and again with it on error."""
    lines = read_text_lines(data).drop("_lineno", "line")
    lenient = _duckdb_json._read_cut("chat/completions", False, lines, lenient=True)
    try:
        strict = _duckdb_json._read_cut("chat/completions", False, lines, lenient=False)
    except duckdb.Error:
        # Some line's cut (head or body) did not parse.
        assert (lines["_span"].is_not_null() & ~lenient["_cut"]).any()
    else:
        assert_frame_equal(strict, lenient)


@contextlib.contextmanager
def _slices(cores: int, *, max_bytes: int = 1, **settings: int) -> Iterator[None]:
    """Inputs over ``max_bytes`` parsed in one slice of rows per core, ``cores`` cores (any
    file of a few lines is then "large"), with other ``_duckdb_json`` settings."""
    names = {"_PREPARED_MAX_BYTES": max_bytes, **settings}
    saved = {name: getattr(_duckdb_json, name) for name in names}
    cpu_count = os.cpu_count
    for name, value in names.items():
        setattr(_duckdb_json, name, value)
    os.cpu_count = lambda: cores
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_duckdb_json, name, value)
        os.cpu_count = cpu_count


def _chat_frames(data: bytes) -> tuple[pl.DataFrame, pl.DataFrame] | str:
    """``parse_output`` of chat ``data``, or the message it raises."""
    try:
        return parse_output(data, endpoint=CHAT, batch_id="b")
    except ResultsError as exc:
        return str(exc)


def _assert_same(got: tuple[pl.DataFrame, pl.DataFrame] | str, want: object) -> None:
    if isinstance(got, str) or isinstance(want, str):
        assert got == want
    else:
        assert isinstance(want, tuple)
        assert_frame_equal(got[0], want[0])
        assert_frame_equal(got[1], want[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files(), slice_bytes=st.integers(1, 4000))
def test_large_inputs_parsed_in_slices_side_by_side_give_the_same_frames(
    data: bytes, slice_bytes: int
) -> None:
    """Inputs over ``_PREPARED_MAX_BYTES`` run as one slice of rows per core."""
    want = _chat_frames(data)
    with _slices(3, max_bytes=slice_bytes):  # three slices where there are rows enough
        got = _chat_frames(data)
    _assert_same(got, want)


def test_failed_rows_from_slices_with_an_empty_part_do_not_panic() -> None:
    """Found by CI: parts of a frame that left a column with an empty chunk made Polars
    2.1 panic in ``pl.format`` (the failure messages) instead of giving the frames."""
    body = chat_body("BC")
    lines = [
        json.dumps(
            {
                "id": "batch_req_1",
                "custom_id": "c0",
                "response": {
                    "status_code": 200,
                    "request_id": "req_1",
                    "body": body,
                    "extra": {"k": {}},  # not the API's layout: parsed whole
                },
                "error": None,
            }
        ).encode(),
        line("c1", body, status=None),
        line("c2", body, status=404, error={"code": "server_error", "message": ""}),
    ]
    data = b"\xef\xbb\xbf" + jsonl(lines)
    want = parse_output(data, endpoint=CHAT, batch_id="b")
    with _slices(3):
        got = parse_output(data, endpoint=CHAT, batch_id="b")
    _assert_same(got, want)
    assert got[0]["custom_id"].to_list() == ["c0"]
    assert got[1].select("custom_id", "status_code", "error_code").rows() == [
        ("c1", None, None),
        ("c2", 404, "server_error"),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    odd=st.booleans(),
    b64=st.booleans(),
    dim=st.sampled_from([None, 3]),
    slices=st.integers(1, 4),
)
def test_vectors_taken_in_place_give_what_the_general_path_gives(
    counts: list[int], odd: bool, b64: bool, dim: int | None, slices: int
) -> None:
    """Embeddings of files parsed in slices (one chunk of rows each) are taken chunk by
    chunk without copying the vectors; the frames are those of the general path (which
    also takes over when any vector is missing or of another width)."""
    lines = []
    for k, n in enumerate(counts):
        vectors = [[float(k), float(j), 0.5] for j in range(n)]
        if odd and k == len(counts) // 2 and vectors:
            vectors[-1] = vectors[-1] + [1.0]
        lines.append(line(f"e{k}", embeddings_body(vectors, b64=b64)))
    data = jsonl(lines)

    def parse() -> tuple[pl.DataFrame, pl.DataFrame]:
        return parse_output(data, endpoint="/v1/embeddings", batch_id="b", embedding_dim=dim)

    with _slices(slices):
        got = parse()
        in_place = _parse._vectors_in_place
        _parse._vectors_in_place = lambda *args: None  # type: ignore[assignment]
        try:
            want = parse()
        finally:
            _parse._vectors_in_place = in_place
    _assert_same(got, want)
    if not odd:
        assert len(got[0]) == sum(counts)
        assert got[1]["custom_id"].to_list() == [f"e{k}" for k, n in enumerate(counts) if not n]


def test_vectors_in_place_are_not_copied() -> None:
    """The ok frame's vectors stay in the chunks DuckDB gave them in (no copy into one)."""
    lines = [
        line(f"e{k}", embeddings_body([[float(k), 1.0, 0.5]] * (k % 3 + 1))) for k in range(60)
    ]
    with _slices(3):
        ok, failed = parse_output(jsonl(lines), endpoint="/v1/embeddings", batch_id="b")
    assert failed.is_empty()
    assert ok["embedding"].n_chunks() > 1  # as DuckDB gave them: never gathered into one
    assert len(ok) == sum(k % 3 + 1 for k in range(60))
    assert ok.filter(pl.col("index") == 0)["prompt_tokens"].to_list() == [8] * 60
    assert ok.filter(pl.col("index") > 0)["prompt_tokens"].null_count() == len(ok) - 60


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files(), rows=st.integers(1, 5), slices=st.integers(1, 3))
def test_results_in_small_arrow_batches_give_the_same_frames(
    data: bytes, rows: int, slices: int
) -> None:
    """DuckDB's results come in Arrow batches sized by the input's bytes per row; a frame
    of many small chunks (as wide rows give) is the frame of one chunk."""
    want = _chat_frames(data)
    with _slices(slices, _RESULT_BATCH_BYTES=1, _VECTOR_ROWS=rows):
        got = _chat_frames(data)
    _assert_same(got, want)
