"""Memory at scale: a driver's peak RSS must not grow with the job.

    python benchmarks/bench_scale.py --part results                     # 0.1M, 0.4M, 1.6M rows
    python benchmarks/bench_scale.py --part results --sizes 100000,400000

Results half (``results_case``): starts ``batchframe serve`` (echo executor) in its own
process, then per size

1. a setup process builds ``n`` short chat requests and creates the job (no network);
2. a *driver* process opens the job and runs ``job.wait()`` + ``job.to_duckdb(...)``
   (``collect().to_duckdb(...)`` on versions without ``BatchJob.to_duckdb``), and reports
   its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) and its RSS after imports.

One JSON line is printed per case, and one with the slope of the driver's peak RSS per
million rows (least squares over the sizes). Targets (issue 10): at most 100 MB per
million rows, and at most 400 MB at 100k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_SIZES = (100_000, 400_000, 1_600_000)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- results half ------------------------------------------------------------------------
def _setup(n: int, root: str) -> None:
    """Child process: build ``n`` chat requests and create the job at ``root``."""
    import polars as pl

    import batchframe as bf

    df = pl.DataFrame({"id": [f"r{i}" for i in range(n)]}).with_columns(
        text=pl.format("Review {}: the product arrived on time and works.", pl.col("id"))
    )
    requests = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=5),
        custom_id="id",
    )
    bf.BatchJob.create(requests, root, client=None).close()


def _drive(root: str, database: str, base_url: str) -> None:
    """Child process: open the job, wait, write DuckDB; print a JSON line of memory."""
    import openai

    import batchframe as bf

    after_imports = _rss_mb()
    client = openai.OpenAI(base_url=base_url, api_key="local", max_retries=0)
    t0 = time.perf_counter()
    with bf.BatchJob.open(root, client=client) as job:
        job.wait(poll_interval=0.5, progress=False)
        t_wait = time.perf_counter() - t0
        peak_wait = _peak_mb()
        if hasattr(job, "to_duckdb"):
            job.to_duckdb(database, table="results")
        else:  # the version before issue 10
            job.collect().to_duckdb(database, table="results")
    t_total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "after_imports_mb": round(after_imports, 1),
                "peak_wait_mb": round(peak_wait, 1),
                "peak_mb": round(_peak_mb(), 1),
                "wait_s": round(t_wait, 2),
                "total_s": round(t_total, 2),
            }
        ),
        flush=True,
    )


def _child(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return out.stdout


def results_case(n: int, base_url: str, workdir: Path) -> dict[str, Any]:
    """One size of the results half: setup, then a driver doing wait() + to_duckdb."""
    import duckdb

    root = workdir / f"job-{n}"
    database = workdir / f"results-{n}.duckdb"
    shutil.rmtree(root, ignore_errors=True)
    database.unlink(missing_ok=True)
    t0 = time.perf_counter()
    _child("--_setup", str(n), str(root))
    t_setup = time.perf_counter() - t0
    lines = _child("--_drive", str(root), str(database), base_url).strip().splitlines()
    driver = json.loads(lines[-1])
    with duckdb.connect(str(database), read_only=True) as con:
        (rows,) = con.execute(
            "SELECT (SELECT count(*) FROM results) + (SELECT count(*) FROM results_failed)"
        ).fetchone() or (0,)
    if rows != n:
        msg = f"DuckDB holds {rows} rows for a job of {n}"
        raise AssertionError(msg)
    result = {"part": "results", "rows": n, "setup_s": round(t_setup, 2), **driver}
    shutil.rmtree(root, ignore_errors=True)
    database.unlink(missing_ok=True)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve() -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchframe", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"at (http://\S+)", line)
        if m:
            return proc, m.group(1)
    msg = "batchframe serve did not start"
    raise RuntimeError(msg)


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares MB per million rows."""
    if len(points) < 2:
        return None
    xs = [x / 1e6 for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def run_results(sizes: list[int]) -> None:
    """Every size of the results half against one ``batchframe serve`` process."""
    proc, base_url = _serve()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            points = []
            for n in sizes:
                case = results_case(n, base_url, Path(tmp))
                case["load"] = os.getloadavg()[0]
                print(json.dumps(case), flush=True)
                points.append((n, case["peak_mb"]))
            slope = _slope(points)
            print(
                json.dumps(
                    {
                        "part": "results",
                        "summary": "driver peak RSS",
                        "sizes": sizes,
                        "peak_mb": [p for _, p in points],
                        "slope_mb_per_million": None if slope is None else round(slope, 1),
                    }
                ),
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_setup":
        _setup(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_drive":
        _drive(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["results"], default="results")
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in DEFAULT_SIZES),
        help="comma-separated row counts (default: %(default)s)",
    )
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    if args.part == "results":
        run_results(sizes)


if __name__ == "__main__":
    main()
