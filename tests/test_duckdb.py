from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest
from test_results_lines import (
    chat_body,
    embeddings_body,
    http_error_line,
    jsonl,
    line,
    moderation_body,
    moderation_result,
    non_http_line,
)

from batchframe._duckdb import duckdb_type, write_duckdb
from batchframe._results import BatchResults, parse_errors, parse_output
from batchframe.exceptions import ResultsError

CHAT = "/v1/chat/completions"
LABEL = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["label", "tags"],
    "additionalProperties": False,
}


def results(
    out: list[bytes],
    err: list[bytes] = (),
    *,
    batch: str = "batch_1",
    attempts: int = 1,  # type: ignore[assignment]
) -> BatchResults:
    ok, failed = parse_output(
        jsonl(out), endpoint=CHAT, batch_id=batch, json_schema=LABEL, attempts=attempts
    )
    failed = pl.concat(
        [failed, parse_errors(jsonl(list(err)), endpoint=CHAT, batch_id=batch, attempts=attempts)]
    )
    batches = pl.DataFrame(
        {"batch_id": [batch, None], "status": ["completed", "pending"], "completed": [len(out), 0]}
    )
    return BatchResults(ok, failed, CHAT, batches=batches)


def answer(label: str, *tags: str) -> str:
    return orjson.dumps({"label": label, "tags": list(tags)}).decode()


def first_run() -> BatchResults:
    return results(
        [
            line("r1", chat_body(answer("positive", "a"))),
            line("r2", chat_body(answer("negative"))),
            line("r3", chat_body(answer("positive", "a", "b"))),
            line("r4", chat_body("oops")),
        ],
        [
            http_error_line("r5", 500, None, "x", "server_error"),
            non_http_line("r6", "batch_expired"),
        ],
    )


def counts(con: duckdb.DuckDBPyConnection, table: str = "reviews") -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
        for t in (table, f"{table}_failed", f"{table}_batches")
    )


def test_tables_keys_and_types(tmp_path: Path) -> None:
    db = tmp_path / "reviews.duckdb"
    first_run().to_duckdb(db, table="reviews")
    con = duckdb.connect(str(db))
    assert counts(con) == (3, 3, 1)  # the batch without an id is not written
    pk = dict(
        con.execute(
            "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    )
    assert pk == {
        "reviews": ["custom_id"],
        "reviews_failed": ["custom_id"],
        "reviews_batches": ["batch_id"],
    }
    types = dict(
        con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'reviews'"
        ).fetchall()
    )
    assert types["parsed"] == "STRUCT(\"label\" ENUM('positive', 'negative'), tags VARCHAR[])"
    assert (
        types["tool_calls"]
        == 'STRUCT(id VARCHAR, "type" VARCHAR, "function" STRUCT("name" VARCHAR, arguments VARCHAR))[]'
    )
    assert types["status_code"] == "INTEGER" and types["prompt_tokens"] == "BIGINT"
    # Analysts query structs and lists directly.
    assert con.execute(
        "SELECT parsed.label, count(*), sum(len(parsed.tags)) FROM reviews GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("positive", 2, 3), ("negative", 1, 0)]
    assert con.execute(
        "SELECT custom_id, stage, retryable FROM reviews_failed ORDER BY 1"
    ).fetchall() == [
        ("r4", "parse", False),
        ("r5", "request", True),
        ("r6", "expired", True),
    ]


def test_writing_twice_changes_nothing() -> None:
    con = duckdb.connect()
    res = first_run()
    res.to_duckdb(con, table="reviews")
    before = [
        con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
        for t in ("reviews", "reviews_failed")
    ]
    res.to_duckdb(con, table="reviews")
    after = [
        con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
        for t in ("reviews", "reviews_failed")
    ]
    assert before == after
    assert counts(con) == (3, 3, 1)


def test_later_success_leaves_failed_and_later_failure_does_not_override() -> None:
    con = duckdb.connect()
    first_run().to_duckdb(con, table="reviews")
    retry = results(
        [line("r5", chat_body(answer("negative"))), line("r6", chat_body(answer("positive")))],
        [http_error_line("r1", 400)],  # r1 already succeeded: this must not demote it
        batch="batch_2",
        attempts=2,
    )
    retry.to_duckdb(con, table="reviews")
    assert counts(con) == (5, 1, 2)
    assert con.execute("SELECT custom_id FROM reviews_failed").fetchall() == [("r4",)]
    assert con.execute("SELECT batch_id FROM reviews WHERE custom_id = 'r1'").fetchone() == (
        "batch_1",
    )
    assert con.execute("SELECT batch_id FROM reviews WHERE custom_id = 'r5'").fetchone() == (
        "batch_2",
    )


def test_open_connection_is_left_open_and_caller_transaction_is_respected() -> None:
    con = duckdb.connect()
    con.begin()
    first_run().to_duckdb(con, table="t")
    con.rollback()
    assert con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 't%'"
    ).fetchone() == (0,)
    write_duckdb(first_run(), con, table="t")
    assert counts(con, "t") == (3, 3, 1)


def test_one_transaction_nothing_written_on_error() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE reviews_failed (custom_id VARCHAR PRIMARY KEY, other INTEGER)")
    with pytest.raises(
        ResultsError, match=r"table `reviews_failed` exists with a different schema"
    ):
        first_run().to_duckdb(con, table="reviews")
    assert con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'reviews'"
    ).fetchone() == (0,)


def test_schema_change_is_refused() -> None:
    con = duckdb.connect()
    first_run().to_duckdb(con, table="reviews")
    ok, failed = parse_output(
        jsonl([line("x", chat_body())]), endpoint=CHAT, batch_id="b"
    )  # no `parsed`
    with pytest.raises(ResultsError, match=r"parsed: \(missing\)|parsed"):
        BatchResults(ok, failed, CHAT).to_duckdb(con, table="reviews")
    assert counts(con) == (3, 3, 1)


def test_duplicate_keys_are_refused() -> None:
    ok, failed = parse_output(
        jsonl([line("a", chat_body()), line("a", chat_body())]), endpoint=CHAT, batch_id="b"
    )
    with pytest.raises(ResultsError, match="repeat a key"):
        BatchResults(ok, failed, CHAT).to_duckdb(duckdb.connect(), table="t")


def test_embeddings_array_column_and_composite_key() -> None:
    data = jsonl(
        [
            line("a", embeddings_body([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
            line("b", embeddings_body([[0.0, 0.0, 1.0]])),
        ]
    )
    ok, failed = parse_output(data, endpoint="/v1/embeddings", batch_id="b")
    con = duckdb.connect()
    res = BatchResults(ok, failed, "/v1/embeddings")
    res.to_duckdb(con, table="emb")
    res.to_duckdb(con, table="emb")
    assert con.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'emb' AND column_name = 'embedding'"
    ).fetchone() == ("FLOAT[3]",)
    pk = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE table_name = 'emb' AND constraint_type = 'PRIMARY KEY'"
    ).fetchone()
    assert pk == (["custom_id", "index"],)
    rows = con.execute(
        'SELECT custom_id, "index", array_cosine_similarity(embedding, [1.0, 0.0, 0.0]::FLOAT[3]) FROM emb ORDER BY 1, 2'
    ).fetchall()
    assert rows == [("a", 0, 1.0), ("a", 1, 0.0), ("b", 0, 0.0)]


def test_moderation_struct_fields_with_slashes() -> None:
    data = jsonl([line("m", moderation_body(moderation_result(("self-harm/intent",))))])
    ok, failed = parse_output(data, endpoint="/v1/moderations", batch_id="b")
    con = duckdb.connect()
    BatchResults(ok, failed, "/v1/moderations").to_duckdb(con, table="mod")
    assert con.execute(
        "SELECT flagged, categories['self-harm/intent'], category_scores['self-harm/intent'] FROM mod"
    ).fetchone() == (True, True, 0.9)


@pytest.mark.parametrize(
    ("dtype", "sql"),
    [
        (pl.String, "VARCHAR"),
        (pl.Int32(), "INTEGER"),
        (pl.Float32, "FLOAT"),
        (pl.Datetime("us", "UTC"), "TIMESTAMP WITH TIME ZONE"),
        (pl.Datetime("us"), "TIMESTAMP"),
        (pl.Enum(["a", "it's"]), "ENUM('a', 'it''s')"),
        (pl.Array(pl.Float32, 4), "FLOAT[4]"),
        (pl.List(pl.Struct({"a b": pl.Boolean})), 'STRUCT("a b" BOOLEAN)[]'),
    ],
)
def test_duckdb_type(dtype: pl.DataType, sql: str) -> None:
    assert duckdb_type(dtype) == sql


def test_unsupported_dtype() -> None:
    with pytest.raises(ResultsError, match="no DuckDB type"):
        duckdb_type(pl.Object())


def test_batches_with_all_null_columns_fit_an_existing_table() -> None:
    con = duckdb.connect()
    ok, failed = parse_output(b"", endpoint=CHAT, batch_id="b")
    first = pl.DataFrame({"batch_id": ["b1"], "completed_at": [1_700_000_000]})
    later = pl.DataFrame({"batch_id": ["b2"], "completed_at": [None]})
    BatchResults(ok, failed, CHAT, batches=first).to_duckdb(con, table="t")
    BatchResults(ok, failed, CHAT, batches=later).to_duckdb(con, table="t")
    assert con.execute("SELECT * FROM t_batches ORDER BY 1").fetchall() == [
        ("b1", 1_700_000_000),
        ("b2", None),
    ]


def test_key_index_bigger_than_the_memory_limit(tmp_path: Path, monkeypatch) -> None:
    """A table whose key index outgrows DuckDB's memory_limit is still written.

    Inside one transaction nothing is checkpointed, so the whole index stays in memory
    (10M chat rows needed ~700 MB against the 192 MB limit). Here the same at a small
    scale: 400,000 keys under a 24 MB limit, written and then written again (the old
    rows go through the copy in slices), with the tables swapped in atomically.
    """
    import batchframe._duckdb as bfduck

    monkeypatch.setattr(bfduck, "DUCKDB_MEMORY_LIMIT", "24MB")
    monkeypatch.setattr(bfduck, "CHECKPOINT_ROWS", 50_000)
    n = 400_000
    ok = pl.DataFrame(
        {"custom_id": [f"request-{i:09d}" for i in range(n)], "value": range(n)},
        schema={"custom_id": pl.String, "value": pl.Int64},
    )
    failed = pl.DataFrame(schema={"custom_id": pl.String, "error": pl.String})
    chunks = [ok.slice(k, 40_000) for k in range(0, n, 40_000)]
    part = bfduck.Part(ok.schema, ["custom_id"], lambda: iter(chunks))
    path = tmp_path / "big.duckdb"
    for _ in range(2):  # the second write replaces every row by key: the same table
        bfduck.upsert_parts(
            path, table="t", ok=part, failed=bfduck.Part.of(failed, ["custom_id"]), batches=None
        )
        with duckdb.connect(str(path), read_only=True) as con:
            assert con.execute("SELECT count(*), count(DISTINCT custom_id) FROM t").fetchone() == (
                n,
                n,
            )
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            }
            assert tables == {"t", "t_failed"}  # no staging table left behind
            assert _primary_key(con, "t") == ["custom_id"]


def _primary_key(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    rows = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'",
        [table],
    ).fetchall()
    return [c for r in rows for c in r[0]]
