"""Fitting the ecosystem: join keys, one status vocabulary, Arrow hand-off, strict raw
schemas, and the notebook view of a job (summary and timeline)."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pyarrow as pa
import pytest

import batchframe as bf
from batchframe._manifest import ShardAttempt
from batchframe._structured import strictify
from batchframe._timeline import Timeline, record_phases

REVIEWS = pl.DataFrame(
    {"review_id": [101, 102, 103, 104], "text": ["good", "bad", "fine", "great"]}
)


def _run(root: Path, custom_id: str | pl.Expr = "review_id") -> bf.BatchResults:
    with bf.LocalBatchServer() as server:
        return bf.run(
            REVIEWS,
            str(root),
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
            custom_id=custom_id,
            client=server.client(),
            poll_interval=0.02,
            progress=False,
        )


# -- join ------------------------------------------------------------------------------


def test_join_defaults_to_the_custom_id_column(tmp_path: Path) -> None:
    results = _run(tmp_path / "j")
    assert results.custom_id_column == "review_id"
    joined = results.join(REVIEWS)  # no on=: the job knows its custom_id column
    assert joined["review_id"].to_list() == [101, 102, 103, 104]
    assert joined["content"].null_count() == 0
    # Reading the root again (another process) knows it too.
    again = bf.read_results(str(tmp_path / "j"))
    assert again.join(REVIEWS.lazy()).collect().equals(joined)
    # An expression as custom_id names no column: on= stays needed, and the error says so.
    by_expr = _run(tmp_path / "e", custom_id=pl.col("review_id").cast(pl.String) + "-x")
    assert by_expr.custom_id_column is None
    with pytest.raises(bf.ColumnNotFoundError, match="pass `on=`"):
        by_expr.join(REVIEWS)


# -- one status vocabulary -------------------------------------------------------------


def test_status_and_duckdb_batches_use_the_same_names(tmp_path: Path) -> None:
    root = tmp_path / "v"
    results = _run(root)
    with bf.BatchJob.open(str(root)) as job:
        status = job.status()
    db = str(tmp_path / "v.duckdb")
    results.to_duckdb(db, table="reviews")
    with duckdb.connect(db, read_only=True) as con:
        cols = [r[0] for r in con.execute("DESCRIBE reviews_batches").fetchall()]
        row = con.execute("SELECT status, total, completed, failed FROM reviews_batches").fetchall()
    assert {"status", "total", "completed", "failed"} <= set(cols) & set(status.columns)
    assert not [c for c in cols if c.startswith("request_")]
    assert row == [tuple(status.select("status", "total", "completed", "failed").row(0))]


def test_old_batches_table_is_renamed_in_place(tmp_path: Path) -> None:
    results = _run(tmp_path / "o")
    db = str(tmp_path / "old.duckdb")
    results.to_duckdb(db, table="t")
    with duckdb.connect(db) as con:  # as batchframe 0.1 wrote it
        for new in ("total", "completed", "failed"):
            con.execute(f"ALTER TABLE t_batches RENAME COLUMN {new} TO request_{new}")
    results.to_duckdb(db, table="t")
    with duckdb.connect(db, read_only=True) as con:
        cols = [r[0] for r in con.execute("DESCRIBE t_batches").fetchall()]
        n = con.execute("SELECT count(*), sum(completed) FROM t_batches").fetchone()
    assert "completed" in cols and "request_completed" not in cols
    assert n == (1, 4)


# -- Arrow -----------------------------------------------------------------------------


def test_results_hand_arrow_to_any_consumer_without_copying(tmp_path: Path) -> None:
    results = _run(tmp_path / "a")
    table = results.to_arrow()
    assert isinstance(table, pa.Table) and table.num_rows == 4
    assert pa.table(results).to_pylist() == table.to_pylist()  # __arrow_c_stream__
    assert pl.DataFrame(results.to_arrow("failed")).height == 0
    assert results.to_arrow("batches").num_rows == 1
    # The numbers are the frame's own buffers, not a copy.
    ours = results.ok["total_tokens"].to_arrow().buffers()[1]
    theirs = table.column("total_tokens").chunks[0].buffers()[1]
    assert ours is not None and theirs is not None and ours.address == theirs.address
    with pytest.raises(ValueError, match="part must be one of"):
        results.to_arrow("nope")
    # DuckDB reads the object directly through the Arrow stream.
    assert duckdb.sql("SELECT count(*) FROM results").fetchall() == [(4,)]


# -- strict raw schemas ----------------------------------------------------------------


def test_raw_schema_with_a_property_named_properties_is_left_intact() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "string"},
            "type": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "properties": {}}},
        },
    }
    strict = strictify(schema)
    assert set(strict["properties"]) == {"properties", "type", "items"}  # no keywords added
    assert strict["properties"]["properties"] == {"type": "string"}
    assert strict["required"] == ["properties", "type", "items"]
    assert strict["additionalProperties"] is False
    assert strict["properties"]["items"]["items"]["additionalProperties"] is False
    assert "required" not in schema and "additionalProperties" not in schema  # copied
    req = bf.build_requests(
        REVIEWS,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), response_format=schema),
        custom_id="review_id",
    )
    sent = orjson.loads(req.frame["body"][0])["response_format"]["json_schema"]["schema"]
    assert sent == strict


# -- the notebook view -----------------------------------------------------------------


def test_notebook_view_shows_what_a_person_reads(tmp_path: Path) -> None:
    root = tmp_path / "n"
    _run(root)
    with bf.BatchJob.open(str(root)) as job:
        page = job._repr_html_()
    for label in ("status", "rows", "progress", "cost so far", "ETA", "batches"):
        assert f"<th>{label}</th>" in page
    assert "4 ok, 0 failed, 0 pending of 4" in page and "100%" in page
    assert re.search(r"cost so far</th><td>(\$0\.\d{4}|&lt; \$0\.0001)<", page)  # priced from usage
    assert "input_file_id" not in page  # the people's columns, not all twenty
    assert "last_error" in page and "settled_at" in page


def _attempt(**kw: object) -> ShardAttempt:
    base: dict[str, object] = {"shard": 0, "attempt": 0, "path": "p", "sha256": "x"}
    return ShardAttempt(**{**base, "n_requests": 1, **kw})  # type: ignore[arg-type]


def test_timeline_phases_follow_the_batch_object() -> None:
    r = _attempt(created_at=100.0, submitted_at=102.5, status="completed", settled_at=131.0)
    r.batch_timestamps = {"in_progress_at": 110, "finalizing_at": 125, "completed_at": 129}
    assert record_phases(r, now=200.0) == [
        ("waiting", 100.0, 102.5),
        ("validating", 102.5, 110.0),
        ("in_progress", 110.0, 125.0),
        ("finalizing", 125.0, 129.0),
        ("completed", 129.0, 131.0),
    ]
    # Whole-second timestamps before the submission never draw backwards; a batch still
    # running ends at "now".
    live = _attempt(created_at=100.0, submitted_at=100.7, status="in_progress")
    live.batch_timestamps = {"in_progress_at": 100}
    assert record_phases(live, now=105.0) == [
        ("waiting", 100.0, 100.7),
        ("validating", 100.7, 100.7),
        ("in_progress", 100.7, 105.0),
    ]


def test_timeline_of_a_real_job_draws_validating_and_in_progress(tmp_path: Path) -> None:
    req = bf.build_requests(
        REVIEWS,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="review_id",
    )
    with (
        bf.LocalBatchServer(validation_seconds=1.1, requests_per_second=2) as server,
        bf.BatchJob.create(req, str(tmp_path / "t"), client=server.client()) as job,
    ):
        job.wait(poll_interval=0.1, progress=False)
        timeline = job.timeline()
    assert isinstance(timeline, Timeline) and repr(timeline) == "<Timeline of 1 shard attempt(s)>"
    svg = ET.fromstring(timeline.to_svg())
    titles = [el.text or "" for el in svg.iter("{http://www.w3.org/2000/svg}title")]
    phases = [t.split(": ")[1].split(" ")[0] for t in titles]
    assert phases[:3] == ["waiting", "validating", "in_progress"] and phases[-1] == "completed"


def test_import_batchframe_loads_no_engine_or_client() -> None:
    """`import batchframe` stays light: pyarrow, DuckDB, openai and fsspec load on first use.

    (pyarrow alone is ~60 MB of RSS and numpy with it; see `benchmarks/bench_startup.py`.)
    """
    code = (
        "import sys, batchframe\n"
        "print(','.join(m for m in ('pyarrow', 'duckdb', 'openai', 'fsspec', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
