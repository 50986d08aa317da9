"""Parsing a file in pieces (as a job does) gives the frames of parsing it in one call.

A job reads each output file with :func:`batchframe._retry.read_chunks` and parses
the pieces one by one; small inputs run as a prepared statement per thread
(:mod:`batchframe._duckdb_json`), a whole file as a query planned for it. Both must
give the same rows, in the same order, with the same dtypes.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from polars.testing import assert_frame_equal
from test_parse_fast import _files

from batchframe import _duckdb_json
from batchframe._results import parse_errors, parse_output
from batchframe._retry import _concat, read_chunks
from batchframe._storage import Storage

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
