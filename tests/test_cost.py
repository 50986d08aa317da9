"""Cost: estimates before upload, price tables, the max_cost gate, cost so far."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import batchframe as bf
from batchframe._cli import main
from batchframe._cost import PRICE_TABLES, load_prices, refresh_prices

POLL = 0.02
#: Free input, expensive output: costs are then exactly output tokens x 1000 / 1M.
OUT_ONLY = {"gpt-4o-mini": {"input": 0.0, "output": 1000.0}}


def fixed_answer(tokens: int) -> Any:
    """An executor whose every answer writes ``tokens`` completion tokens."""

    def run(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
        }

    return run


def requests_for(n: int, *, max_tokens: int | None = 10, model: Any = "gpt-4o-mini") -> bf.Requests:
    df = pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "text": [f"some text {i}" for i in range(n)],
            "model": ["gpt-4o-mini" if i % 2 else "gpt-4.1-nano" for i in range(n)],
        }
    )
    params = {} if max_tokens is None else {"max_tokens": max_tokens}
    return bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body(model, user=pl.col("text"), **params),
        custom_id="id",
    )


def test_estimate_is_input_times_price_plus_an_output_range_per_model() -> None:
    req = requests_for(6, model=pl.col("model"))
    est = req.estimate_cost()
    assert est["model"].to_list() == ["gpt-4.1-nano", "gpt-4o-mini"]
    table = bf.price_table("openai")
    tokens = req.frame.group_by("model").agg(pl.col("est_tokens").sum()).sort("model")
    for row, (model, n_in) in zip(est.iter_rows(named=True), tokens.iter_rows(), strict=True):
        assert row["model"] == model and row["input_tokens"] == n_in and row["n_requests"] == 3
        assert row["max_output_tokens"] == 30
        p = table[model]
        assert row["min_usd"] == pytest.approx(n_in * p["input"] / 1e6)
        assert row["max_usd"] == pytest.approx((n_in * p["input"] + 30 * p["output"]) / 1e6)


def test_output_bound_is_read_from_every_spelling_and_unbounded_rows_are_counted() -> None:
    df = pl.DataFrame({"id": ["a", "b", "c"], "n": [5, 6, 7]})
    req = bf.build_requests(
        df,
        endpoint="/v1/responses",
        body=bf.responses_body("gpt-4o-mini", input="hi", max_output_tokens=pl.col("n")),
        custom_id="id",
    )
    assert req.estimate_cost()["max_output_tokens"].to_list() == [18]
    chat = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user="hi", max_completion_tokens=9),
        custom_id="id",
    )
    assert chat.estimate_cost()["max_output_tokens"].to_list() == [27]
    est = requests_for(3, max_tokens=None).estimate_cost()
    assert est["unbounded_requests"].to_list() == [3]
    assert est["max_usd"].to_list() == [None]  # no upper bound while a row has none
    assert est["min_usd"][0] > 0


def test_price_overrides_from_a_dict_or_a_file(tmp_path: Path) -> None:
    req = requests_for(4)
    est = req.estimate_cost(prices=OUT_ONLY)
    assert est["min_usd"].to_list() == [0.0]
    assert est["max_usd"].to_list() == [pytest.approx(40 * 1000 / 1e6)]
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"as_of": "2026-11-30", "prices": OUT_ONLY}))
    assert req.estimate_cost(prices=path)["max_usd"].to_list() == est["max_usd"].to_list()
    with pytest.raises(bf.ProviderError, match="USD per 1M tokens"):
        load_prices({"m": {"input": "cheap"}})


def test_price_tables_are_dated_per_provider() -> None:
    for name, (as_of, table) in PRICE_TABLES.items():
        assert len(as_of) == 10 and as_of[4] == "-", name
        assert all(p["input"] >= 0 for p in table.values())
    assert bf.price_table("azure")["gpt-4o-mini"] == bf.price_table("openai")["gpt-4o-mini"]
    assert "llama-3.1-8b-instant" in bf.price_table("groq")
    assert "llama-3.1-8b-instant" not in bf.price_table("openai")


def test_refresh_from_genai_prices_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("genai_prices")
    path = tmp_path / "openai.json"
    table = refresh_prices("openai", path)
    # The batch price is half the standard one (genai-prices lists gpt-4o-mini at 0.15 / 0.60).
    assert table["gpt-4o-mini"]["input"] == pytest.approx(0.075)
    assert table["gpt-4o-mini"]["output"] == pytest.approx(0.30)
    doc = json.loads(path.read_text())
    assert doc["prices"]["gpt-4o-mini"] == table["gpt-4o-mini"]
    assert bf.price_table("openai", prices=path)["gpt-4o-mini"] == table["gpt-4o-mini"]


def test_a_job_estimated_above_max_cost_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    req = requests_for(6)
    with pytest.raises(bf.CostLimitError, match="nothing was uploaded") as info:
        bf.BatchJob.create(req, tmp_path / "job", max_cost=0.05, prices=OUT_ONLY)
    assert info.value.next_cost == pytest.approx(60 * 1000 / 1e6)
    assert not os.path.exists(tmp_path / "job")


def test_max_cost_pauses_at_the_right_shard_and_raising_it_resumes(tmp_path: Path) -> None:
    # No max_tokens: each shard is estimated at its input ($0 here), and each answer
    # writes 10 tokens ($0.01 per row, $0.04 per 4-row shard). With a $0.10 cap, one
    # batch at a time: after shards 0-2 ($0.12 > $0.10) nothing more is submitted.
    req = requests_for(24, max_tokens=None)
    root = tmp_path / "job"
    with bf.LocalBatchServer(executor=fixed_answer(10)) as server:
        with bf.BatchJob.create(
            req,
            root,
            client=server.client(),
            limits=bf.BatchLimits(max_requests=4),
            max_in_flight=1,
            max_cost=0.10,
            prices=OUT_ONLY,
        ) as job:
            with pytest.raises(bf.CostLimitError, match="paused by max_cost") as info:
                job.wait(poll_interval=POLL)
            assert info.value.spent == pytest.approx(0.12)
            status = job.status()
            assert job.collect(partial=True).ok.height == 12  # the paid rows are kept
        assert len(server.batches()) == 3
        assert status["batch_id"].null_count() == 3
        assert status["cost_usd"].drop_nulls().to_list() == [pytest.approx(0.04)] * 3
        # Another process, another day: the pause is in the manifest; a higher cap resumes.
        results = bf.run(
            req.frame.select("custom_id")
            .rename({"custom_id": "id"})
            .with_columns(
                text=pl.format("some text {}", pl.col("id").str.slice(1)),
                model=pl.lit("x"),
            ),
            root,
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
            custom_id="id",
            client=server.client(),
            poll_interval=POLL,
            max_cost=1.0,
        )
        assert results.ok.height == 24
        assert len(server.batches()) == 6
        with bf.BatchJob.open(root) as job:
            assert job.status()["cost_usd"].sum() == pytest.approx(0.24)
            assert "cost_paused" not in job._m.options


def test_a_lowered_cap_pauses_before_the_first_batch(tmp_path: Path) -> None:
    req = requests_for(8)
    with (
        bf.LocalBatchServer(executor=fixed_answer(10)) as server,
        bf.BatchJob.create(
            req,
            tmp_path / "job",
            client=server.client(),
            limits=bf.BatchLimits(max_requests=4),
            max_cost=1.0,
            prices=OUT_ONLY,
        ) as job,
    ):
        job.configure(max_cost=0.05)  # the worst case is $0.08
        with pytest.raises(bf.CostLimitError, match=r"may cost up to \$0.0800"):
            job.submit()
        assert server.batches() == [] and server.files() == []
        job.configure(max_cost=0.08)
        job.wait(poll_interval=POLL)
        assert job.collect().ok.height == 8
        assert job.status()["cost_usd"].sum() == pytest.approx(0.08)


def test_usage_shows_the_cost_per_model(tmp_path: Path) -> None:
    with bf.LocalBatchServer(executor=fixed_answer(10)) as server:
        results = bf.run(
            pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"]}),
            tmp_path / "job",
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=10),
            custom_id="id",
            client=server.client(),
            poll_interval=POLL,
            prices=OUT_ONLY,
        )
    # The job's own prices by default (from the root alone too); others on demand.
    assert results.usage()["cost_usd"].to_list() == [pytest.approx(0.02)]
    again = bf.read_results(tmp_path / "job")
    assert again.usage()["cost_usd"].to_list() == [pytest.approx(0.02)]
    default = bf.price_table("openai")["gpt-4o-mini"]["output"]
    assert results.usage(prices=bf.price_table("openai"))["cost_usd"].to_list() == [
        pytest.approx(20 * default / 1e6)
    ]


def test_prepare_prints_the_expected_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"]}).write_csv(src)
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "{{text}}"}],
            "max_tokens": 100,
        }
    )
    prices = tmp_path / "p.json"
    prices.write_text(json.dumps(OUT_ONLY))
    code = main(["prepare", str(src), "--body", body, "--custom-id", "id", "--prices", str(prices)])
    assert code == 0
    out = capsys.readouterr().out
    assert "expected cost: $0.0000 to $0.2000" in out
    code = main(
        ["submit", str(src), str(tmp_path / "job"), "--body", body, "--custom-id", "id",
         "--prices", str(prices), "--max-cost", "0.1", "--base-url", "http://127.0.0.1:9/v1"]
    )  # fmt: skip
    assert code == 2
    assert "max_cost" in capsys.readouterr().err


def test_a_streamed_input_is_costed_chunk_by_chunk(constructor: Any) -> None:
    df = pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(30)],
            "text": [f"text number {i}" for i in range(30)],
            "model": ["gpt-4o-mini" if i % 3 else "gpt-4.1-nano" for i in range(30)],
            "n": [i % 7 + 1 for i in range(30)],
        }
    )
    kwargs: dict[str, Any] = {
        "endpoint": "/v1/chat/completions",
        "body": bf.chat_body(pl.col("model"), user=pl.col("text"), max_tokens=pl.col("n")),
        "custom_id": "id",
        "tokenizer": "estimate",
    }
    want = bf.build_requests(df, **kwargs).estimate_cost()
    req = bf.build_requests(constructor(df), **kwargs)
    streamed = req.streamed
    got = req.estimate_cost()
    assert got.equals(want)
    assert got["max_output_tokens"].sum() == df["n"].sum()
    assert req.streamed == streamed  # a streamed input was not read into memory


def test_a_bound_written_in_the_prompt_text_is_not_read_as_one() -> None:
    df = pl.DataFrame({"id": ["a", "b"], "text": ['{"max_tokens":999}', 'say "max_tokens":7,']})
    bounded = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=3),
        custom_id="id",
    )
    assert bounded.estimate_cost()["max_output_tokens"].to_list() == [6]
    unbounded = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
    )
    assert unbounded.estimate_cost()["unbounded_requests"].to_list() == [2]
