"""Files of long lines (embeddings) are split without copying, into the CSV reader's lines.

:func:`batchframe._lines.read_text_lines` reads a file whose first line is long with
``_lines._long_lines``: each line an Arrow string view into the file's bytes. These
tests hold it to the CSV reader it stands in for (kept in ``test_parse_fast`` as the
reference): the same lines, line numbers, CRLF and blank-line handling, the same
frames out of ``parse_output``, and a fall back to the CSV reader wherever it cannot
give exactly that.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from polars.testing import assert_frame_equal
from test_parse_fast import _reference_lines
from test_results_lines import embeddings_body, jsonl, line

from batchframe import _lines
from batchframe._lines import read_text_lines
from batchframe._results import parse_output
from batchframe.exceptions import ResultsError

EMB = "/v1/embeddings"
#: pyarrow 18 (the oldest supported) builds no string views: the CSV reader reads all.
VIEWS = _lines._views_from_buffers()
needs_views = pytest.mark.skipif(not VIEWS, reason="pyarrow < 19 builds no string views")


@contextmanager
def _csv_reader_only() -> Iterator[None]:
    """Every file read by the CSV reader (the long-line reader never applies)."""
    saved = _lines._LONG_LINE
    _lines._LONG_LINE = 2**62
    try:
        yield
    finally:
        _lines._LONG_LINE = saved


def _embedding_file(n: int, dim: int = 1536, seed: int = 0, crlf: bool = False) -> bytes:
    rnd = random.Random(seed)
    lines = [
        line(f"e-{i}", embeddings_body([[rnd.uniform(-1, 1) for _ in range(dim)]]))
        for i in range(n)
    ]
    return jsonl(lines, crlf=crlf)


# -- the lines ---------------------------------------------------------------------------

_LONG = st.integers(4096, 9000).map(lambda k: "{" + "x" * (k - 2) + "}")
_PIECES = st.sampled_from(
    [
        *('{"a": "é ✓"}' + " " * 5000, '{"b": 1}' + "\t" * 10, "  {x}\t", "   ", "\t"),
        *("\x0b", "\x0c", "", "\r", "{\r1}", "x" * 5000, " " * 20 + "{y}", "{" + "z" * 12),
    ]
)
_ENDINGS = st.sampled_from(["\n", "\r\n", "\r\r\n", "\n"])


@st.composite
def _files(draw: st.DrawFn) -> bytes:
    """A long first line, then long, short, blank and odd lines with mixed endings."""
    parts = [draw(_LONG)]
    for _ in range(draw(st.integers(0, 12))):
        parts.append(draw(_ENDINGS))
        parts.append(draw(st.one_of(_LONG, _PIECES)))
    if draw(st.booleans()):
        parts.append(draw(_ENDINGS))
    return "".join(parts).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files())
def test_long_lines_are_the_csv_readers_lines(data: bytes) -> None:
    want = _reference_lines(data).select("_ordinal", "_lineno", "line")
    long = _lines._long_lines(data)
    texts = [t[:-1] if t.endswith(b"\r") else t for t in data.split(b"\n")]
    short_line = any(t.strip() and len(t) <= 12 for t in texts)
    segments = data.count(b"\n") + (not data.endswith(b"\n"))
    too_many = segments > len(data) // _lines._LONG_AVERAGE + 1
    assert (long is None) == (short_line or too_many or not VIEWS)  # the only reasons here
    if long is not None:
        assert_frame_equal(long, want)
    assert_frame_equal(read_text_lines(data, cut=False), want)


@needs_views
def test_the_lines_are_views_into_the_files_bytes() -> None:
    data = _embedding_file(3, crlf=True)
    lines = read_text_lines(data, cut=False)
    assert lines["line"].to_list() == data.decode().split("\r\n")[:3]
    arrow = lines["line"].to_arrow(compat_level=pl.CompatLevel.newest())
    assert arrow.type == pa.string_view()
    # The text buffer is the file's own memory: nothing was copied.
    assert arrow.buffers()[2].address == pa.py_buffer(data).address


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"a":1}\n' + b"{" + b"x" * 5000 + b"}\n", "a short first line"),
        (b"\xef\xbb\xbf{" + b"x" * 5000 + b"}\n", "a BOM"),
        (b"{" + b"x" * 5000 + b"}\n{}\n", "a line of 12 bytes or fewer"),
        (b"{" + b"x" * 5000 + b"}\n" + b'{"a":1}\n' * 2000, "short lines on average"),
        (b"{" + b"x" * 5000 + b"\xff}\n", "bytes that are not UTF-8"),
    ],
)
def test_the_csv_reader_reads_what_the_long_line_reader_cannot(data: bytes, why: str) -> None:
    assert _lines._long_lines(data) is None, why
    if b"\xff" in data:
        with pytest.raises(pl.exceptions.PolarsError):
            read_text_lines(data, cut=False)
    else:
        assert_frame_equal(
            read_text_lines(data, cut=False),
            _reference_lines(data).select("_ordinal", "_lineno", "line"),
        )


# -- whole parses --------------------------------------------------------------------------


@pytest.mark.parametrize("crlf", [False, True])
def test_embeddings_parse_to_the_same_frames_either_way(crlf: bool) -> None:
    data = _embedding_file(6, seed=1, crlf=crlf)
    # A failed request, a blank line and a damaged body in the middle of the file.
    pieces = data.split(b"\r\n" if crlf else b"\n")
    pieces[2] = line("e-2", {"error": {"message": "no", "code": "x"}}, status=400).ljust(5000)
    pieces[3] = b"   \t"
    pieces[4] = line("e-4", {**embeddings_body([[0.5] * 1536]), "data": [[0.5] * 1536]})
    data = (b"\r\n" if crlf else b"\n").join(pieces)
    assert (_lines._long_lines(data) is not None) == VIEWS
    got = parse_output(data, endpoint=EMB, batch_id="b")
    with _csv_reader_only():
        want = parse_output(data, endpoint=EMB, batch_id="b")
    assert_frame_equal(got[0], want[0])
    assert_frame_equal(got[1], want[1])
    assert got[0]["custom_id"].to_list() == ["e-0", "e-1", "e-5"]
    failed = dict(zip(got[1]["custom_id"], got[1]["line"], strict=True))
    assert failed == {"e-2": pieces[2].decode(), "e-4": pieces[4].decode()}
    assert got[0]["embedding"].dtype == pl.Array(pl.Float32, 1536)


def test_a_line_that_is_not_json_is_named_either_way() -> None:
    data = _embedding_file(3, seed=2)
    pieces = data.split(b"\n")
    pieces[1] = pieces[1][:-40]  # cut short, as in a truncated download
    data = b"\n".join(pieces)
    with pytest.raises(ResultsError, match="line 2") as got:
        parse_output(data, endpoint=EMB, batch_id="b")
    with _csv_reader_only(), pytest.raises(ResultsError) as want:
        parse_output(data, endpoint=EMB, batch_id="b")
    assert str(got.value) == str(want.value)


def test_a_control_character_is_refused_by_the_json_engine() -> None:
    data = _embedding_file(2, seed=3)
    at = data.index(b"\n") - 2
    data = data[:at] + b"\x1f" + data[at:]
    with pytest.raises(ResultsError, match="line 1"):
        parse_output(data, endpoint=EMB, batch_id="b")


def test_the_vectors_are_the_numbers_written() -> None:
    rnd = random.Random(4)
    vectors = [[rnd.uniform(-1, 1) for _ in range(1536)] for _ in range(4)]
    data = jsonl([line(f"v-{i}", embeddings_body([v])) for i, v in enumerate(vectors)])
    ok, failed = parse_output(data, endpoint=EMB, batch_id="b")
    assert failed.is_empty()
    got = ok["embedding"].to_list()
    for g, v in zip(got, vectors, strict=True):
        assert g == pytest.approx(v, rel=1e-6)
    assert orjson.loads(ok["body"][0])["model"] == "text-embedding-3-small"


def test_a_failed_line_does_not_keep_the_whole_file_in_memory() -> None:
    data = _embedding_file(40, seed=5)
    data = data.replace(b'"status_code":200', b'"status_code":500', 1)
    ok, failed = parse_output(data, endpoint=EMB, batch_id="b")
    assert failed["custom_id"].to_list() == ["e-0"] and len(ok) == 39
    text = failed["line"].to_arrow(compat_level=pl.CompatLevel.newest())
    held = sum(b.size for b in text.buffers()[2:] if b is not None)
    assert held < 2 * len(failed["line"][0]) < len(data) // 10
