"""Streamed inputs: the same shards as in memory, whole-input checks, nothing left behind."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import batchframe as bf
from batchframe import _calibrate, _stream

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)


def _reader(df: pl.DataFrame, rows_per_batch: int) -> pa.RecordBatchReader:
    table = df.to_arrow()
    return pa.RecordBatchReader.from_batches(
        table.schema, table.to_batches(max_chunksize=rows_per_batch)
    )


def _files(written: pl.DataFrame) -> list[tuple[int, bytes]]:
    out = []
    for shard, path in written.select("shard", "path").iter_rows():
        out.append((shard, Path(path).read_bytes()))
    return out


@pytest.fixture
def local_server() -> Any:
    with bf.LocalBatchServer() as server:
        yield server


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make a pass read a few rows at a time, so chunk boundaries fall everywhere."""

    def set_rows(n: int) -> None:
        monkeypatch.setattr(_stream, "CHUNK_ROWS", n)
        # "auto" token counts: sample blocks of 9 rows at rows 0, 9, 18, 36: chunks and
        # blocks cross in every way.
        monkeypatch.setattr(_calibrate, "CALIBRATION_ROWS", 9)

    return set_rows


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(st.tuples(st.sampled_from(["m1", "m2", "m3"]), TEXT), min_size=0, max_size=60),
    chunk=st.integers(1, 25),
    batch=st.integers(1, 25),
    max_requests=st.integers(1, 20),
    max_bytes=st.integers(400, 3_000),
    max_tokens=st.one_of(st.none(), st.integers(60, 400)),
    ids=st.sampled_from(["int", "text", "content"]),
    tokenizer=st.sampled_from(["estimate", "auto"]),
)
def test_streamed_and_in_memory_builds_write_identical_shards(
    tmp_path_factory,
    small_chunks,
    rows,
    chunk,
    batch,
    max_requests,
    max_bytes,
    max_tokens,
    ids,
    tokenizer,
):
    small_chunks(chunk)
    df = pl.DataFrame(
        {
            "id": list(range(len(rows))),
            "model": [r[0] for r in rows],
            "text": [r[1] for r in rows],
        },
        schema={"id": pl.Int64, "model": pl.String, "text": pl.String},
    )
    if ids == "text":
        df = df.with_columns(pl.format('id "{}"', pl.col("id")).alias("id"))
    custom_id = None if ids == "content" else "id"
    body = bf.chat_body(pl.col("model"), user=pl.col("text"), system="Say it.")
    limits = bf.BatchLimits(max_requests=max_requests, max_bytes=max_bytes, max_tokens=max_tokens)

    def build(frame: Any) -> bf.Requests:
        return bf.build_requests(
            frame,
            endpoint="/v1/chat/completions",
            body=body,
            custom_id=custom_id,
            tokenizer=tokenizer,  # "auto": calibrated on the first rows, alike in both
        )

    memory = build(df)
    try:
        expected = memory.write(tmp_path_factory.mktemp("mem"), limits=limits)
    except bf.InputError:
        # Only a row that fits no shard alone is refused; streamed builds refuse it too.
        for source in (df.lazy(), _reader(df, batch)):
            with pytest.raises(bf.InputError):
                build(source).write(tmp_path_factory.mktemp("refused"), limits=limits)
        return
    for source in (df.lazy(), _reader(df, batch), ds.dataset(df.to_arrow())):
        streamed = build(source)
        assert streamed.streamed
        got = streamed.write(tmp_path_factory.mktemp("stream"), limits=limits)
        assert got.drop("path").equals(expected.drop("path"))
        assert _files(got) == _files(expected)
        assert streamed.fingerprint == memory.fingerprint
        assert len(streamed) == len(memory) == len(rows)
        assert streamed.n_bytes == memory.n_bytes
        assert streamed.est_tokens == memory.est_tokens


def test_duplicate_ids_far_apart_are_refused_and_nothing_is_left(tmp_path, small_chunks):
    small_chunks(1_000)
    n = 20_000
    ids = [f"doc-{i}" for i in range(n)]
    ids[-1] = ids[3]  # the last row repeats the 4th, 19 chunks later
    df = pl.DataFrame({"id": ids, "text": ["hello"] * n})
    req = bf.build_requests(
        df.lazy(),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
        tokenizer="estimate",
    )
    root = tmp_path / "job"
    with pytest.raises(
        bf.DuplicateCustomIdError, match=r"\['doc-3'\] at row\(s\) \[3, 19999\]"
    ) as e:
        bf.BatchJob.create(req, root, limits=bf.BatchLimits(max_requests=1_500), client=None)
    assert e.value.rows == [3, n - 1]
    # Shards of the rows before the duplicate were written, then removed with the refusal.
    left = [p for p in root.rglob("*") if p.is_file()]
    assert left == []


def test_row_refusals_name_input_positions_across_chunks(tmp_path, small_chunks):
    small_chunks(7)
    df = pl.DataFrame({"id": range(50), "text": ["x"] * 50}).with_columns(
        pl.when(pl.col("id").is_in([23, 41])).then(None).otherwise(pl.col("text")).alias("text")
    )
    req = bf.build_requests(
        df.lazy(),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )
    with pytest.raises(bf.NullValueError, match=r"\[23\]") as e:
        req.write(tmp_path / "out")
    assert e.value.rows == [23]  # the first chunk holding a null is refused
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_invalid_utf8_in_a_reader_names_the_row(tmp_path):
    good = pa.array(["ok", "fine"], pa.string())
    bad = pa.Array.from_buffers(
        pa.string(),
        2,
        [
            None,
            pa.py_buffer(b"\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
            pa.py_buffer(b"a\xff"),
        ],
    )
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    batches = [
        pa.record_batch([pa.array([1, 2]), good], schema=schema),
        pa.record_batch([pa.array([3, 4]), bad], schema=schema),
    ]
    req = bf.build_requests(
        pa.RecordBatchReader.from_batches(schema, batches),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )
    with pytest.raises(bf.EncodingError, match=r"`text`.*row\(s\) \[3\]"):
        req.write(tmp_path / "out")


def test_a_reader_is_read_once_and_a_second_pass_says_so(tmp_path):
    df = pl.DataFrame({"id": range(10), "text": ["x"] * 10})
    req = bf.build_requests(
        _reader(df, 3),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )
    assert "not read yet" in repr(req)
    req.write(tmp_path / "a")
    assert len(req) == 10 and req.plan()["n_requests"].to_list() == [10]  # known from the pass
    with pytest.raises(bf.InputError, match="can be read once"):
        req.plan(bf.BatchLimits(max_requests=3))  # other limits need another pass


def test_frame_of_a_streamed_input_reads_it_into_memory_once():
    df = pl.DataFrame({"id": range(5), "text": list("abcde")})
    body = bf.chat_body("m", user=pl.col("text"))
    memory = bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
    streamed = bf.build_requests(
        _reader(df, 2), endpoint="/v1/chat/completions", body=body, custom_id="id"
    )
    assert streamed.frame.equals(memory.frame)
    assert not streamed.streamed
    assert streamed.plan(bf.BatchLimits(max_requests=2))["n_requests"].to_list() == [2, 2, 1]


def test_a_job_from_a_streamed_input_runs_and_resumes(tmp_path, local_server):
    df = pl.DataFrame({"id": range(300), "text": [f"row {i}" for i in range(300)]})
    path = tmp_path / "input.parquet"
    df.write_parquet(path)
    kwargs: dict[str, Any] = {
        "endpoint": "/v1/chat/completions",
        "body": bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        "custom_id": "id",
        "client": local_server.client(),
        "limits": bf.BatchLimits(max_requests=120),
        "poll_interval": 0.05,
    }
    results = bf.run(pl.scan_parquet(path), tmp_path / "job", **kwargs)
    assert results.ok.height == 300
    assert sorted(results.ok["custom_id"].cast(pl.Int64).to_list()) == list(range(300))
    # The same input, streamed again, is recognised as the same job (no new batch).
    n_batches = len(local_server.client().batches.list().data)
    again = bf.run(ds.dataset(path), tmp_path / "job", **kwargs)
    assert again.ok.height == 300
    assert len(local_server.client().batches.list().data) == n_batches
    # Other rows are refused as other requests, without writing anything.
    with pytest.raises(bf.JobExistsError, match="other requests"):
        bf.run(pl.scan_parquet(path).head(299), tmp_path / "job", **kwargs)


def test_hash_of_lines_is_the_fingerprint_definition():
    df = pl.DataFrame({"id": [1, 2], "text": ["a", "b"]})
    req = bf.build_requests(
        df.lazy(),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )
    lines = b"".join(
        (
            b'{"custom_id":"%d","method":"POST","url":"/v1/chat/completions",'
            b'"body":{"model":"m","messages":[{"role":"user","content":"%s"}]}}\n'
        )
        % (i, t)
        for i, t in ((1, b"a"), (2, b"b"))
    )
    expected = hashlib.sha256(b"batchframe-requests-v3\n" + lines + (2).to_bytes(8, "little"))
    assert req.fingerprint == expected.hexdigest()


def test_duckdb_relation_and_other_arrow_streams_are_inputs(tmp_path):
    import duckdb

    rel = duckdb.sql("SELECT i AS id, 'text ' || i AS text FROM range(25) t(i)")
    body = bf.chat_body("m", user=pl.col("text"))
    streamed = bf.build_requests(rel, endpoint="/v1/chat/completions", body=body, custom_id="id")
    assert streamed.streamed
    memory = bf.build_requests(rel.pl(), endpoint="/v1/chat/completions", body=body, custom_id="id")
    limits = bf.BatchLimits(max_requests=10)
    got = streamed.write(tmp_path / "a", limits=limits)
    expected = memory.write(tmp_path / "b", limits=limits)
    assert _files(got) == _files(expected)
    assert streamed.plan(limits).equals(memory.plan(limits))  # re-read: a fresh stream


def test_an_object_that_is_no_table_is_refused_naming_what_is_accepted():
    with pytest.raises(bf.InputError, match=r"__arrow_c_stream__.*got builtins\.list"):
        bf.build_requests(
            [{"id": 1, "text": "x"}],
            endpoint="/v1/chat/completions",
            body=bf.chat_body("m", user=pl.col("text")),
            custom_id="id",
        )


def test_a_streamed_embeddings_job_records_what_an_in_memory_one_does(tmp_path):
    import json

    df = pl.DataFrame(
        {
            "id": range(30),
            "model": ["e-small", "e-large"] * 15,
            "text": [f"doc {i}" for i in range(30)],
            "dims": [256, 1024] * 15,
        }
    )
    body = bf.embeddings_body(pl.col("model"), input=pl.col("text"), dimensions=pl.col("dims"))

    def manifest(frame: Any, name: str) -> dict[str, Any]:
        req = bf.build_requests(frame, endpoint="/v1/embeddings", body=body, custom_id="id")
        limits = bf.BatchLimits(max_requests=7)
        bf.BatchJob.create(req, tmp_path / name, limits=limits, client=None).close()
        return json.loads((tmp_path / name / "manifest.json").read_text())

    memory = manifest(df, "memory")
    streamed = manifest(_reader(df, 4), "streamed")
    assert (
        streamed["embedding_dims"] == memory["embedding_dims"] == {"e-small": 256, "e-large": 1024}
    )
    for key in ("n_requests", "fingerprint", "endpoint"):
        assert streamed[key] == memory[key]
    strip = ("created_at", "updated_at")
    assert [{k: v for k, v in r.items() if k not in strip} for r in streamed["records"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in memory["records"]
    ]


def test_polars_errors_on_the_input_become_batchframe_errors_naming_what_failed(tmp_path):
    import datetime as dt

    durations = pl.DataFrame({"id": [1, 2], "d": [dt.timedelta(seconds=1)] * 2})
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {"d": pl.col("d")},
    }
    for frame in (durations, durations.lazy()):
        with pytest.raises(bf.TemplateError, match=r"`metadata\.d` holds Duration.*total_seconds"):
            bf.build_requests(
                frame, endpoint="/v1/chat/completions", body=body, custom_id="id"
            ).plan()
    words = pl.DataFrame({"id": [1, 2], "t": ["a", "b"]})
    broken = words.lazy().with_columns(n=pl.col("t").cast(pl.Int64))  # fails when read
    for frame, cid in ((broken, "n"), (words, pl.col("t").cast(pl.Int64))):
        with pytest.raises(bf.EvaluationError, match=r"could not be read.*(Int64|i64)") as e:
            bf.build_requests(
                frame,
                endpoint="/v1/chat/completions",
                body=bf.chat_body("m", user=pl.col("t")),
                custom_id=cid,
            ).write(tmp_path / "out")
        assert isinstance(e.value.__cause__, pl.exceptions.PolarsError)
        assert isinstance(e.value, bf.InputError)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
