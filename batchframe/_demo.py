"""``batchframe demo``: the whole flow on the built-in local server, in seconds."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

import batchframe as bf

PRODUCTS = ["kettle", "headphones", "desk lamp", "backpack", "blender", "keyboard"]
OPENERS = ["Honestly,", "Well,", "After a month:", "Update:", "", "Short version:"]
VERDICTS = [
    "it works perfectly and I would buy it again",
    'the box said "premium" but it broke in a week',
    "it does the job, nothing more",
    "arrived late and the support team never answered",
    "great value — très bien, 很好",
    "the manual was confusing\nbut setup took five minutes",
]


class Sentiment(BaseModel):
    """The structured answer the demo asks for."""

    label: Literal["positive", "negative", "neutral"]
    confidence: float


def sample_reviews(n: int, seed: int = 7) -> pl.DataFrame:
    """A deterministic table of product reviews: review_id, product, text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        product = rng.choice(PRODUCTS)
        text = f"{rng.choice(OPENERS)} the {product}: {rng.choice(VERDICTS)}.".strip()
        rows.append({"review_id": 10_000 + i, "product": product, "text": text})
    return pl.DataFrame(rows)


def run_demo(
    *, rows: int = 3_000, root: str | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Run the demo; return a summary dict (also printed by the CLI)."""
    workdir = Path(root) if root else Path(tempfile.mkdtemp(prefix="batchframe-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    df = sample_reviews(rows)
    requests = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body(
            "gpt-4o-mini",
            system="Label the sentiment of this product review.",
            user=pl.col("text"),
            response_format=Sentiment,
            max_tokens=50,
        ),
        custom_id="review_id",
    )
    limits = bf.BatchLimits(max_requests=max(1, rows // 6))
    with bf.LocalBatchServer(failure_rate=0.01, requests_per_second=4_000, seed=1) as server:
        job = bf.BatchJob.create(
            requests, str(workdir / "job"), limits=limits, client=server.client()
        )
        job.submit()
        job.wait(poll_interval=0.2, progress=progress)
        results = job.collect()
    db = workdir / "reviews.duckdb"
    results.to_duckdb(str(db), table="reviews")
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        query = (
            "SELECT parsed.label AS label, count(*) AS n, round(avg(parsed.confidence), 2) "
            "AS avg_confidence FROM reviews GROUP BY 1 ORDER BY n DESC"
        )
        table = con.sql(query).pl()
    return {
        "rows": rows,
        "shards": job.status()["shard"].n_unique(),
        "ok": results.ok.height,
        "failed": results.failed.height,
        "root": str(workdir / "job"),
        "duckdb": str(db),
        "query": query,
        "result": table,
    }


def main(argv: list[str]) -> int:
    """Entry point of ``batchframe demo``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="batchframe demo",
        description="Run build -> shard -> submit -> wait -> collect -> DuckDB on the local server.",
    )
    parser.add_argument("--rows", type=int, default=3_000, help="rows in the sample table")
    parser.add_argument("--root", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    summary = run_demo(rows=args.rows, root=args.root, progress=False if args.no_progress else None)
    out = sys.stdout
    out.write(
        f"\n{summary['rows']:,} reviews in {summary['shards']} shards: "
        f"{summary['ok']:,} ok, {summary['failed']:,} failed "
        "(failed rows were retried; anything left is explained in reviews_failed)\n"
        f"job root: {summary['root']}\nDuckDB:   {summary['duckdb']}\n\n"
        f"{summary['query']}\n{summary['result']}\n"
    )
    return 0
