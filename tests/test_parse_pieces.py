"""Parsing a file in pieces (as a job does) gives the frames of parsing it in one call.

A job reads each output file with :func:`batchframe._retry.read_chunks` and parses
the pieces through one prepared statement per file (``parse_output_file``), or one by
one where that path does not apply; small inputs run as a prepared statement per thread
(:mod:`batchframe._duckdb_json`), a whole file as a query planned for it. All must
give the same rows, in the same order, with the same dtypes.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from polars.testing import assert_frame_equal
from test_parse_fast import _files
from test_results_cut import _dump, _strings, output_line
from test_results_lines import chat_body, embeddings_body, line

from batchframe import _duckdb_json
from batchframe._parse import each_piece, parse_output_file
from batchframe._results import parse_errors, parse_output
from batchframe._retry import _concat, read_chunks
from batchframe._storage import Storage
from batchframe.exceptions import ResultsError

CHAT = "/v1/chat/completions"


def _in_pieces(data: bytes, size: int, *, errors: bool = False) -> tuple[pl.DataFrame, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "out.jsonl").write_bytes(data)
        pieces = list(read_chunks(Storage(tmp), "out.jsonl", size))
    assert b"".join(pieces).strip() == data.strip()
    if errors:
        failed = [parse_errors(p, endpoint=CHAT, batch_id="b") for p in pieces or [b""]]
        return (pl.concat(failed),)
    parts = [parse_output(p, endpoint=CHAT, batch_id="b", model="m") for p in pieces]
    if not parts:
        return parse_output(b"", endpoint=CHAT, batch_id="b", model="m")
    return _concat([ok for ok, _ in parts]), pl.concat([f for _, f in parts])


@pytest.mark.slow  # over 30 s on a busy 2-core machine: CI runs it
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files(), size=st.integers(1, 6000))
def test_pieces_give_the_frames_of_one_call(data: bytes, size: int) -> None:
    ok, failed = parse_output(data, endpoint=CHAT, batch_id="b", model="m")
    ok_p, failed_p = _in_pieces(data, size)
    assert_frame_equal(ok_p, ok)
    assert_frame_equal(failed_p, failed)
    (errors_p,) = _in_pieces(data, size, errors=True)
    assert_frame_equal(errors_p, parse_errors(data, endpoint=CHAT, batch_id="b"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files())
def test_the_prepared_and_the_planned_query_agree(data: bytes) -> None:
    """The same input through the prepared statement and through a planned query."""
    ok, failed = parse_output(data, endpoint=CHAT, batch_id="b")
    limit = _duckdb_json._PREPARED_MAX_BYTES
    _duckdb_json._PREPARED_MAX_BYTES = -1  # every input planned per call
    try:
        ok_planned, failed_planned = parse_output(data, endpoint=CHAT, batch_id="b")
    finally:
        _duckdb_json._PREPARED_MAX_BYTES = limit
    assert_frame_equal(ok, ok_planned)
    assert_frame_equal(failed, failed_planned)


def test_threads_each_parse_with_their_own_statements() -> None:
    lines = b"".join(
        b'{"id":"r%d","custom_id":"c%d","response":{"status_code":200,"request_id":"q",'
        b'"body":{"model":"m","choices":[{"message":{"content":"x%d"}}]}},"error":null}\n'
        % (k, k, k)
        for k in range(200)
    )
    want = parse_output(lines, endpoint=CHAT, batch_id="b")[0]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert_frame_equal(parse_output(lines, endpoint=CHAT, batch_id="b")[0], want)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- one statement per file (`parse_output_file`, the job's path) ---------------------------


def _pieces_of(data: bytes, size: int) -> tuple[list[bytes], Callable[[], Iterator[bytes]]]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "out.jsonl").write_bytes(data)
        pieces = list(read_chunks(Storage(tmp), "out.jsonl", size))
    return pieces, lambda: iter(pieces)


_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
    "additionalProperties": False,
}
#: Bodies in the API's layout that parse, fail the request, fail the shape checks or
#: fail structured output (content that is not JSON, or JSON of another schema).
_CONTENTS = st.one_of(
    _strings,
    st.sampled_from(['{"label": "x"}', '{"label": 3}', "{not json", '{"label": "\\u00e9"}']),
)


@st.composite
def _api_files(draw: Any) -> bytes:
    """Files in the layout OpenAI writes: every line cut, some rows failed."""
    out = []
    for k, (content, status, broken, how) in enumerate(
        draw(
            st.lists(
                st.tuples(
                    _CONTENTS,
                    st.sampled_from([200, 200, 200, 404, 500]),
                    st.sampled_from([None, None, None, "content", "usage", "choices"]),
                    st.sampled_from(["orjson", "spaced"]),
                ),
                max_size=40,
            )
        )
    ):
        body = chat_body(content)
        if broken == "content":
            body["choices"][0]["message"]["content"] = 7  # a number where text is declared
        elif broken == "usage":
            body["usage"] = "many"
        elif broken == "choices":
            body["choices"] = {"0": body["choices"][0]}
        if status != 200:
            body = {"error": {"code": "oops", "message": content, "type": "server_error"}}
        obj = output_line(f"c{k}", body)
        obj["response"]["status_code"] = status
        out.append(_dump(obj, how))
        if draw(st.booleans()):
            out.append(b"")
    return b"\n".join(out) + b"\n"


def _file_kw(schema: bool) -> dict[str, Any]:
    return {"endpoint": CHAT, "batch_id": "b", "model": "m", "attempts": 2} | (
        {"json_schema": _SCHEMA} if schema else {}
    )


def _per_piece(pieces: list[bytes], kw: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    parts = [parse_output(p, **kw) for p in pieces]
    if not parts:
        return parse_output(b"", **kw)
    return _concat([ok for ok, _ in parts]), pl.concat([f for _, f in parts])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_api_files(), size=st.integers(1, 3000), schema=st.booleans())
def test_one_statement_per_file_gives_the_frames_of_each_piece(
    data: bytes, size: int, schema: bool
) -> None:
    """API-layout files (which take the one-statement path), with failed rows of all kinds."""
    pieces, again = _pieces_of(data, size)
    assert _duckdb_json.read_file(again(), endpoint=CHAT) is not None  # the path under test
    kw = _file_kw(schema)
    ok, failed = parse_output_file(again, **kw)
    want_ok, want_failed = _per_piece(pieces, kw)
    assert_frame_equal(ok, want_ok)
    assert_frame_equal(failed, want_failed)
    whole_ok, whole_failed = parse_output(data, **kw)
    assert_frame_equal(ok, whole_ok)
    assert_frame_equal(failed, whole_failed)
    assert failed["line"].null_count() == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_files(), size=st.integers(1, 3000))
def test_one_statement_per_file_falls_back_to_pieces(data: bytes, size: int) -> None:
    """Any layout: lines the cut does not take send the file back to piece by piece."""
    pieces, again = _pieces_of(data, size)
    kw = _file_kw(False)
    ok, failed = parse_output_file(again, **kw)
    want_ok, want_failed = _per_piece(pieces, kw)
    assert_frame_equal(ok, want_ok)
    assert_frame_equal(failed, want_failed)


def test_a_damaged_piece_raises_as_piece_by_piece_does() -> None:
    """The error names the line in the file, whichever piece holds it."""
    good = _dump(output_line("a", chat_body("x")), "orjson")
    data = good + b"\n\n" + good.replace(b'"a"', b'"b"') + b"\n" + good[:40] + b"\n"
    pieces, again = _pieces_of(data, len(good) + 1)
    assert len(pieces) == 3
    with pytest.raises(ResultsError, match=r"^line 4 is not valid JSON"):
        parse_output_file(again, **_file_kw(False))
    with pytest.raises(ResultsError, match=r"^line 4 is not valid JSON"):
        parse_output(data, **_file_kw(False))  # as one call on the whole file says
    with pytest.raises(ResultsError, match=r"^line 4 is not valid JSON"):  # error files
        list(each_piece(pieces, lambda d: parse_errors(d, endpoint=CHAT, batch_id="b")))
    no_id = good.replace(b'"custom_id":"a"', b'"custom_id":""')
    for size in (10**6, len(good) + 1):
        _, again = _pieces_of(good + b"\n" + no_id + b"\n", size)
        with pytest.raises(ResultsError, match=r"^line 2 has no `custom_id`"):
            parse_output_file(again, **_file_kw(False))


EMB = "/v1/embeddings"


@st.composite
def _embedding_files(draw: Any) -> bytes:
    """Embedding output lines: vectors of 3 floats (some of 2, none), 4xx lines."""
    b64 = draw(st.booleans())
    out = []
    vector = st.lists(st.floats(-1, 1, width=32), min_size=3, max_size=3)
    for k, (kind, vectors) in enumerate(
        draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["ok", "ok", "ok", "odd", "none", "404"]),
                    st.lists(vector, min_size=1, max_size=3),
                ),
                max_size=30,
            )
        )
    ):
        if kind == "404":
            out.append(line(f"e{k}", {"error": {"code": "x", "message": "no"}}, status=404))
            continue
        if kind == "odd":
            vectors = [*vectors, [0.5, 0.25]]
        out.append(line(f"e{k}", embeddings_body([] if kind == "none" else vectors, b64=b64)))
    return b"\n".join(out) + b"\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_embedding_files(), size=st.integers(1, 3000))
def test_embeddings_one_statement_per_file(data: bytes, size: int) -> None:
    """Embeddings (lines parsed whole) through one statement: the frames of each piece."""
    pieces, again = _pieces_of(data, size)
    # The encoding is looked for in the first 4 pieces; base64 vectors first seen later
    # (16 MB of answers without one, at a job's piece size) send the file piece by piece.
    first = next((k for k, p in enumerate(pieces) if b'"embedding"' in p), None)
    if first is None or first < 4 or b'"embedding":"' not in data:
        assert _duckdb_json.read_file(again(), endpoint=EMB) is not None
    kw = {"endpoint": EMB, "batch_id": "b", "embedding_dim": 3, "attempts": 1}
    ok, failed = parse_output_file(again, **kw)
    want_ok, want_failed = _per_piece(pieces, kw)
    assert_frame_equal(ok, want_ok)
    assert_frame_equal(failed, want_failed)
    whole_ok, whole_failed = parse_output(data, **kw)
    assert_frame_equal(ok, whole_ok)
    assert_frame_equal(failed, whole_failed)


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt (which pytest would take as the user's)."""


@pytest.mark.parametrize("error", [OSError("connection reset"), _Interrupt()])
def test_an_error_reading_the_pieces_is_raised(error: BaseException) -> None:
    """A storage error while DuckDB pulls the pieces reaches the caller, not a partial file."""
    good = _dump(output_line("a", chat_body("x")), "orjson") + b"\n"

    def pieces() -> Iterator[bytes]:
        yield good
        yield good.replace(b'"a"', b'"b"')
        raise error

    with pytest.raises(type(error)):
        parse_output_file(pieces, **_file_kw(False))
