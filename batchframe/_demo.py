"""``batchframe demo``: the whole flow on the built-in local server, in seconds."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, TextIO

import polars as pl
from pydantic import BaseModel, Field

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
QUERY = """\
SELECT parsed.label AS label,
       count(*) AS reviews,
       round(avg(parsed.confidence), 2) AS avg_confidence,
       sum(completion_tokens) AS output_tokens
FROM reviews
GROUP BY label
ORDER BY reviews DESC"""


class Sentiment(BaseModel):
    """The structured answer the demo asks for."""

    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)


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
    *,
    rows: int = 3_000,
    root: str | None = None,
    progress: bool | None = None,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Run the demo; return a summary dict (the CLI prints it).

    Parameters
    ----------
    rows
        Rows in the sample table.
    root
        Working directory (default: a new temporary directory).
    progress
        ``True``: a progress bar; ``False``: nothing; ``None``: a bar on a terminal, one
        line per change otherwise (written to ``out``).
    out
        Where progress lines go (default ``sys.stdout``).
    """
    from batchframe._cli_job import ProgressMode, watch

    out = out or sys.stdout
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
    # Small shards so that several batches run side by side (the API allows 50,000).
    limits = bf.BatchLimits(max_requests=max(1, rows // 6))
    mode: ProgressMode
    if progress is None:
        mode = "bar" if out.isatty() else "lines"
    else:
        mode = "bar" if progress else "none"
    # 2 % of requests fail with a server error, as real batches sometimes do: batchframe
    # resubmits those rows in retry batches (up to 3 attempts per row).
    with bf.LocalBatchServer(failure_rate=0.02, requests_per_second=4_000, seed=1) as server:
        job = bf.BatchJob.create(
            requests, str(workdir / "job"), limits=limits, client=server.client()
        )
        with job:
            job.submit()
            watch(job, timeout=None, poll_interval=0.1, mode=mode, out=out)
            results = job.collect()
            status = job.status()
            retried = job.counts().retried
    db = workdir / "reviews.duckdb"
    results.to_duckdb(str(db), table="reviews")
    from batchframe._duckdb import query

    table = query(str(db), QUERY)
    return {
        "rows": rows,
        "shards": status["shard"].n_unique(),
        "batches": status["batch_id"].drop_nulls().n_unique(),
        "retried": retried,
        "ok": results.ok.height,
        "failed": results.failed.height,
        "status": status,
        "root": str(workdir / "job"),
        "duckdb": str(db),
        "query": QUERY,
        "result": table,
    }


def report(summary: dict[str, Any]) -> str:
    """The text ``batchframe demo`` prints for a :func:`run_demo` summary."""
    from batchframe._cli_io import text_table

    status = summary["status"].select(
        "shard", "attempt", "status", "batch_id", "n_requests", "completed", "failed"
    )
    retried = summary["retried"]
    lines = [
        "",
        f"{summary['rows']:,} reviews -> {summary['shards']} shards -> "
        f"{summary['batches']} batches: {summary['ok']:,} ok, {summary['failed']:,} failed",
        (
            f"{retried:,} rows hit an injected server error and were retried in their own "
            "batches (attempts 1, 2)"
            if retried
            else "no row hit an injected server error this time"
        )
        + "; a row that still fails is kept, with the reason, in table reviews_failed",
        "",
        text_table(status),
        "",
        f"job root: {summary['root']}",
        f"DuckDB:   {summary['duckdb']}",
        "",
        summary["query"] + ";",
        text_table(summary["result"]),
        "",
        "next:",
        f"  batchframe status {summary['root']}",
        f"  batchframe collect {summary['root']} --parquet reviews.parquet",
        "  batchframe --help",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Entry point of ``batchframe demo``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="batchframe demo",
        description="Run build -> shard -> submit -> wait (with retries) -> collect -> DuckDB "
        "on the built-in local Batch API server. No API key, no network.",
    )
    parser.add_argument("--rows", type=int, default=3_000, help="rows in the sample table")
    parser.add_argument("--root", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    sys.stdout.write(
        f"batchframe demo: {args.rows:,} product reviews -> /v1/chat/completions with a "
        "pydantic schema, on the local Batch API server\n"
    )
    sys.stdout.flush()
    summary = run_demo(rows=args.rows, root=args.root, progress=False if args.no_progress else None)
    sys.stdout.write(report(summary))
    return 0
