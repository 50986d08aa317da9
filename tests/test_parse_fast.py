"""The fast paths of reading output files give exactly what the general ones give.

- Reading a file in pieces of whole lines on several threads
  (:func:`batchframe._lines.split_at_lines`) gives the frame of reading it whole: same
  lines, line numbers, ordinals, cuts, and the same errors.
- The byte-offset cut of :func:`batchframe._lines.cut_body` gives the ``_span`` and
  ``_head`` of the character-offset cut it replaced (kept here as the reference).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from polars.testing import assert_frame_equal
from test_results_cut import _dump, _strings, _with_extra, output_line
from test_results_lines import chat_body, embeddings_body, http_error_line, jsonl, line

from batchframe import _lines
from batchframe._duckdb_json import read_lines
from batchframe._lines import read_text_lines, split_at_lines
from batchframe._results import parse_errors, parse_output
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


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files(), pieces=st.integers(1, 7))
def test_pieces_and_the_byte_cut_give_the_reference_lines(data: bytes, pieces: int) -> None:
    want = _reference_lines(data)
    got = read_text_lines(data, pieces=pieces)
    assert_frame_equal(got, want.select(got.columns), check_dtypes=False)
    assert got.schema == read_text_lines(data, pieces=1).schema


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files(), pieces=st.integers(2, 6))
def test_parsed_lines_do_not_depend_on_pieces(data: bytes, pieces: int) -> None:
    assert_frame_equal(
        read_lines(data, endpoint=CHAT, pieces=pieces), read_lines(data, endpoint=CHAT, pieces=1)
    )
    assert_frame_equal(
        read_lines(data, endpoint=CHAT, typed=False, pieces=pieces),
        read_lines(data, endpoint=CHAT, typed=False, pieces=1),
    )


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\n", b"\r\n", b" ", b"x", b"{}", BOM, b"\xc3\xa9"])).map(
        b"".join
    ),
    parts=st.integers(1, 8),
)
def test_split_points_end_a_non_blank_line(data: bytes, parts: int) -> None:
    ranges = split_at_lines(data, parts)
    assert 1 <= len(ranges) <= parts
    assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]
    assert (ranges[0][0], ranges[-1][1]) == (0, len(data))
    for start, end in ranges[:-1]:
        piece = data[start:end]
        assert piece.endswith(b"\n")
        assert piece.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].strip()
        assert not data.startswith(BOM, end)


# -- a file large enough to be split by default -------------------------------------------


def _big_file() -> bytes:
    rows = []
    for k in range(12_000):
        body = chat_body(f"answer {k} é " + "x" * (k % 700))
        if k % 997 == 5:
            rows.append(http_error_line(f"r{k}"))
        elif k % 1001 == 7:
            rows.append(orjson.dumps({"custom_id": f"r{k}", **output_line(f"r{k}", body)}))
        else:
            rows.append(line(f"r{k}", body))
        if k % 500 == 0:
            rows.append(b"  ")
    return jsonl(rows, crlf=True)


def test_a_large_file_read_in_pieces_parses_as_read_whole() -> None:
    data = _big_file()
    assert len(data) > 2 * _lines._MIN_PIECE_BYTES
    assert len(split_at_lines(data, 2)) == 2
    assert_frame_equal(read_text_lines(data), read_text_lines(data, pieces=1))
    assert_frame_equal(read_lines(data, endpoint=CHAT), read_lines(data, endpoint=CHAT, pieces=1))
    ok, failed = parse_output(data, endpoint=CHAT, batch_id="b")
    assert len(ok) + len(failed) == 12_000
    assert ok["custom_id"].head(3).to_list() == ["r0", "r1", "r2"]
    assert failed["custom_id"].to_list() == [f"r{k}" for k in range(12_000) if k % 997 == 5]


def test_embeddings_read_in_pieces_parse_as_read_whole() -> None:
    rows = [line(f"e{k}", embeddings_body([[0.5] * 400])) for k in range(3000)]
    data = jsonl(rows)
    endpoint = "/v1/embeddings"
    assert_frame_equal(
        read_lines(data, endpoint=endpoint, pieces=3),
        read_lines(data, endpoint=endpoint, pieces=1),
    )
    ok, failed = parse_output(data, endpoint=endpoint, batch_id="b")
    assert (len(ok), len(failed)) == (3000, 0)


# -- errors are those of reading the file whole ------------------------------------------


def _outcome(data: bytes, pieces: int) -> pl.DataFrame | str:
    try:
        return read_lines(data, endpoint=CHAT, pieces=pieces)
    except ResultsError as exc:
        return f"ResultsError: {exc}"


@pytest.mark.parametrize(
    "bad",
    [b'{"custom_id": "x", "response": ', b"\xff\xfe", b"\x1f", BOM + b"{}", b"[1]", b"{}"],
    ids=["truncated", "not-utf8", "unit-separator", "bom-in-the-middle", "array", "no-id"],
)
@pytest.mark.parametrize("pieces", [2, 3, 5])
def test_a_bad_line_in_any_piece_gives_the_same_outcome(bad: bytes, pieces: int) -> None:
    rows = [line(f"r{k}", chat_body("x")) for k in range(40)]
    rows[29] = bad
    data = jsonl(rows)
    whole, split = _outcome(data, 1), _outcome(data, pieces)
    if isinstance(whole, str):
        assert split == whole
    else:
        assert isinstance(split, pl.DataFrame)
        assert_frame_equal(split, whole)
    with pytest.raises(ResultsError, match="line 30"):
        parse_output(data, endpoint=CHAT, batch_id="b")


def test_error_files_in_pieces() -> None:
    rows = [http_error_line(f"r{k}") for k in range(50)]
    data = jsonl(rows)
    assert_frame_equal(
        read_lines(data, endpoint=CHAT, typed=False, pieces=4),
        read_lines(data, endpoint=CHAT, typed=False, pieces=1),
    )
    failed = parse_errors(data, endpoint=CHAT, batch_id="b")
    assert failed["custom_id"].to_list() == [f"r{k}" for k in range(50)]
