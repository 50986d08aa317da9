from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_results_lines import (
    chat_body,
    embeddings_body,
    http_error_line,
    jsonl,
    line,
    non_http_line,
)

import batchframe as bf
from batchframe._results import BatchResults, parse_errors, parse_output
from batchframe._schemas import FAILED_SCHEMA, ok_schema
from batchframe.exceptions import ColumnNotFoundError, ResultsError

CHAT = "/v1/chat/completions"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
    "additionalProperties": False,
}


def chat_results(**kw: Any) -> BatchResults:
    out = jsonl(
        [
            line("r1", chat_body('{"label": "positive"}')),
            line("r3", chat_body('{"label": "negative"}', model="gpt-4o-2024-08-06")),
            line("r4", chat_body("not json")),
        ]
    )
    err = jsonl([http_error_line("r2", 400), non_http_line("r5", "batch_expired")])
    ok, failed = parse_output(out, endpoint=CHAT, batch_id="batch_1", json_schema=SCHEMA)
    failed = pl.concat([failed, parse_errors(err, endpoint=CHAT, batch_id="batch_1")])
    return BatchResults(ok, failed, CHAT, **kw)


def test_exported() -> None:
    assert bf.BatchResults is BatchResults
    assert "BatchResults" in bf.__all__


def test_attributes_and_repr() -> None:
    results = chat_results()
    assert results.endpoint == CHAT
    assert results.batches is None
    assert results.ok["custom_id"].to_list() == ["r1", "r3"]
    assert results.failed.schema == FAILED_SCHEMA
    assert repr(results) == (
        "BatchResults(endpoint='/v1/chat/completions', ok=2, "
        "failed=3 [expired: 1, parse: 1, request: 1])"
    )
    html = results._repr_html_()
    assert "<td>failed: parse</td><td>1</td>" in html and "<td>ok</td><td>2</td>" in html
    batches = pl.DataFrame({"batch_id": ["batch_1"], "status": ["completed"]})
    assert repr(chat_results(batches=batches)).endswith("batches=1)")


def test_batches_need_a_batch_id() -> None:
    with pytest.raises(ResultsError, match="batch_id"):
        chat_results(batches=pl.DataFrame({"id": ["batch_1"]}))


# -- join ---------------------------------------------------------------------------------


def test_join_keeps_input_order_and_columns(constructor: Callable[[pl.DataFrame], Any]) -> None:
    frame = pl.DataFrame(
        {
            "review_id": ["r5", "r1", "r2", "r3", "r4", "r9"],
            "text": list("abcdef"),
            "model": ["x"] * 6,
        }
    )
    out = chat_results().join(constructor(frame), on="review_id")
    if isinstance(out, pl.LazyFrame):
        out = out.collect()
    assert out.columns[:3] == ["review_id", "text", "model"]
    assert "model_result" in out.columns  # clashing result columns get a suffix
    assert out.select("review_id", "text", "parsed", "stage", "error_code").rows() == [
        ("r5", "a", None, "expired", "batch_expired"),
        ("r1", "b", {"label": "positive"}, None, None),
        ("r2", "c", None, "request", "context_length_exceeded"),
        ("r3", "d", {"label": "negative"}, None, None),
        ("r4", "e", None, "parse", "invalid_json"),
        ("r9", "f", None, None, None),
    ]


def test_join_returns_the_kind_it_was_given() -> None:
    frame = pl.DataFrame({"custom_id": ["r1"]})
    results = chat_results()
    assert isinstance(results.join(frame.lazy()), pl.LazyFrame)
    assert isinstance(results.join(frame), pl.DataFrame)
    assert isinstance(results.join(frame.to_arrow()), pl.DataFrame)


def test_join_casts_integer_ids() -> None:
    ok, failed = parse_output(jsonl([line("7", chat_body())]), endpoint=CHAT, batch_id="b")
    out = BatchResults(ok, failed, CHAT).join(pl.DataFrame({"id": [7, 8]}), on="id")
    assert out["content"].to_list() == ["positive", None]
    assert out["id"].dtype == pl.Int64


def test_join_missing_column_hints() -> None:
    with pytest.raises(ColumnNotFoundError, match=r"available columns are \['text'\]"):
        chat_results().join(pl.DataFrame({"text": ["a"]}))


def test_join_embeddings_repeats_rows_per_vector() -> None:
    ok, failed = parse_output(
        jsonl([line("a", embeddings_body([[1.0, 2.0], [3.0, 4.0]]))]),
        endpoint="/v1/embeddings",
        batch_id="b",
    )
    out = BatchResults(ok, failed, "/v1/embeddings").join(pl.DataFrame({"custom_id": ["a", "z"]}))
    assert out.select("custom_id", "index").rows() == [("a", 0), ("a", 1), ("z", None)]


# -- usage --------------------------------------------------------------------------------


def test_usage_per_model_with_default_prices() -> None:
    usage = chat_results().usage()
    assert usage.columns == [
        "model", "requests", "input_tokens", "cached_tokens", "output_tokens",
        "reasoning_tokens", "cost_usd",
    ]  # fmt: skip
    rows = {r["model"]: r for r in usage.iter_rows(named=True)}
    # r1 ok and r4 (paid, failed to parse) on gpt-4o-mini; r3 on gpt-4o.
    mini = rows["gpt-4o-mini-2024-07-18"]
    assert (
        mini["requests"],
        mini["input_tokens"],
        mini["cached_tokens"],
        mini["output_tokens"],
    ) == (2, 44, 12, 8)
    assert mini["reasoning_tokens"] == 4
    assert mini["cost_usd"] == pytest.approx(((44 - 12) * 0.075 + 12 * 0.0375 + 8 * 0.30) / 1e6)
    assert rows["gpt-4o-2024-08-06"]["cost_usd"] == pytest.approx(
        (16 * 1.25 + 6 * 0.625 + 4 * 5.0) / 1e6
    )


def test_usage_custom_prices_and_unknown_models() -> None:
    ok, failed = parse_output(
        jsonl([line("a", chat_body(model="my-finetune")), line("b", chat_body())]),
        endpoint=CHAT,
        batch_id="b",
    )
    results = BatchResults(ok, failed, CHAT)
    usage = results.usage()
    assert dict(usage.select("model", "cost_usd").iter_rows())["my-finetune"] is None
    usage = results.usage({"my-finetune": {"input": 1.0, "output": 2.0}})
    cost = dict(usage.select("model", "cost_usd").iter_rows())["my-finetune"]
    assert cost == pytest.approx((22 * 1.0 + 4 * 2.0) / 1e6)  # cached priced as input


def test_usage_embeddings_counts_each_request_once() -> None:
    data = jsonl(
        [line("a", embeddings_body([[1.0], [2.0], [3.0]])), line("b", embeddings_body([[1.0]]))]
    )
    ok, failed = parse_output(data, endpoint="/v1/embeddings", batch_id="b")
    usage = BatchResults(ok, failed, "/v1/embeddings").usage()
    assert usage.select("model", "requests", "input_tokens", "output_tokens").rows() == [
        ("text-embedding-3-small", 2, 16, 0)
    ]
    assert usage["cost_usd"][0] == pytest.approx(16 * 0.01 / 1e6)


def test_usage_of_empty_results() -> None:
    ok, failed = parse_output(b"", endpoint="/v1/moderations", batch_id="b")
    usage = BatchResults(ok, failed, "/v1/moderations").usage()
    assert usage.is_empty() and usage.schema["cost_usd"] == pl.Float64


# -- from_parts ---------------------------------------------------------------------------


def test_from_parts_later_success_wins_and_latest_failure_is_kept() -> None:
    ok1, failed1 = parse_output(
        jsonl(
            [
                line("a", chat_body("first")),
                http_error_line("b", 500, None, "x", "server_error"),
                line("c", {}, status=0),
            ]
        ),
        endpoint=CHAT,
        batch_id="batch_1",
        attempts=1,
    )
    ok2, failed2 = parse_output(
        jsonl(
            [
                line("a", chat_body("again")),
                line("b", chat_body("retried")),
                http_error_line("c", 400),
            ]
        ),
        endpoint=CHAT,
        batch_id="batch_2",
        attempts=2,
    )
    results = BatchResults.from_parts([ok1, ok2], [failed1, failed2], endpoint=CHAT)
    assert results.ok.select("custom_id", "content", "batch_id").rows() == [
        ("a", "first", "batch_1"),
        ("b", "retried", "batch_2"),
    ]
    assert results.failed.select("custom_id", "status_code", "attempts").rows() == [("c", 400, 2)]


def test_from_parts_restores_fixed_width_embeddings() -> None:
    empty, _ = parse_output(b"", endpoint="/v1/embeddings", batch_id="b")
    ok, failed = parse_output(
        jsonl([line("a", embeddings_body([[1.0, 2.0]]))]), endpoint="/v1/embeddings", batch_id="b"
    )
    results = BatchResults.from_parts([empty, ok], [failed], endpoint="/v1/embeddings")
    assert results.ok.schema["embedding"] == pl.Array(pl.Float32, 2)
    nothing = BatchResults.from_parts([], [], endpoint="/v1/embeddings")
    assert nothing.ok.schema == ok_schema("/v1/embeddings")


# -- parquet ------------------------------------------------------------------------------


def test_write_parquet(tmp_path: Path) -> None:
    batches = pl.DataFrame({"batch_id": ["batch_1"], "status": ["completed"], "completed": [3]})
    results = chat_results(batches=batches)
    paths = results.write_parquet(tmp_path / "out" / "reviews.parquet")
    assert {k: Path(v).name for k, v in paths.items()} == {
        "ok": "reviews.parquet",
        "failed": "reviews_failed.parquet",
        "batches": "reviews_batches.parquet",
    }
    assert_frame_equal(pl.read_parquet(paths["ok"]), results.ok)
    assert_frame_equal(pl.read_parquet(paths["failed"]), results.failed)
    assert_frame_equal(pl.read_parquet(paths["batches"]), batches)
    assert pl.read_parquet_metadata(paths["ok"])["batchframe.endpoint"] == CHAT


def test_write_parquet_to_fsspec_without_batches(memfs: Any) -> None:
    results = chat_results()
    paths = results.write_parquet("memory://res/run.parquet")
    assert set(paths) == {"ok", "failed"}
    assert memfs.exists("/res/run_failed.parquet") and not memfs.exists("/res/run_batches.parquet")
    with memfs.open("/res/run_failed.parquet", "rb") as f:
        assert_frame_equal(pl.read_parquet(f), results.failed)
