"""``batchframe demo``: the whole flow on the local server, with retries, in seconds."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import pytest

from batchframe._cli import main
from batchframe._demo import report, run_demo, sample_reviews


def test_sample_reviews_are_deterministic() -> None:
    a, b = sample_reviews(50), sample_reviews(50)
    assert a.equals(b)
    assert a.columns == ["review_id", "product", "text"]
    assert a["review_id"].is_unique().all()


def test_run_demo_accounts_for_every_row(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = run_demo(rows=600, root=str(tmp_path), out=out)
    assert summary["ok"] + summary["failed"] == 600
    assert summary["shards"] == 6
    assert summary["batches"] >= 6
    assert summary["retried"] > 0  # injected server errors were retried in their own batches
    assert summary["status"]["attempt"].max() >= 1
    assert "rows done" in out.getvalue()  # plain progress lines: `out` is not a terminal
    with duckdb.connect(summary["duckdb"], read_only=True) as con:
        ok = con.sql("SELECT count(*) FROM reviews").fetchall()[0][0]
        failed = con.sql("SELECT count(*) FROM reviews_failed").fetchall()[0][0]
    assert ok + failed == 600
    labels = set(summary["result"]["label"].to_list())
    assert labels <= {"positive", "negative", "neutral"}
    assert summary["result"]["avg_confidence"].max() <= 1
    text = report(summary)
    assert "600 reviews -> 6 shards" in text and "| shard | attempt |" in text
    assert "batchframe status" in text


def test_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rows", "120", "--root", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "120 reviews -> 6 shards" in out
    assert "SELECT parsed.label" in out and "rows done" not in out
    assert (tmp_path / "reviews.duckdb").exists()
    assert main(["demo", "--rows", "0"]) == 2
