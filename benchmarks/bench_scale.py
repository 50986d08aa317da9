"""Memory at scale: a driver's peak RSS must not grow with the job.

    python benchmarks/bench_scale.py --part build                       # 1M, 4M, 10M rows
    python benchmarks/bench_scale.py --part build --sizes 1000000,4000000 --rounds 3
    python benchmarks/bench_scale.py --part results                     # 0.1M, 0.4M, 1.6M rows
    python benchmarks/bench_scale.py --part results --sizes 100000,400000
    python benchmarks/bench_scale.py --part results --sizes 6000,24000 --answer-bytes 8000
    python benchmarks/bench_scale.py --part results --sizes 2500,40000 --embedding-dims 3072

Build half (``build_case``): per size, a child process writes a Parquet file of ``n``
chat rows (bench_build.py's prompts, 100k-row row groups); another child runs
``bf.build_requests(pl.scan_parquet(path), ...)`` + ``write(dir)`` and reports its peak
RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) and time. At the first size the in-memory
path (``pl.read_parquet`` then the same build and write) runs too, interleaved with the
streamed one for ``--rounds`` rounds, and the ratio of their median throughputs is
printed. Targets (issue 10): peak RSS at 10M rows at most 1.5 GB, at most 60 MB more
per million rows, and streaming at least 90 % of the in-memory throughput.

Results half (``results_case``): starts ``batchframe serve`` (echo executor) in its own
process, then per size

1. a setup process builds ``n`` short chat requests and creates the job (no network);
2. a *driver* process opens the job and runs ``job.wait()`` + ``job.to_duckdb(...)``
   (``collect().to_duckdb(...)`` on versions without ``BatchJob.to_duckdb``), and reports
   its own peak RSS (``VmHWM``, see ``_peak_mb``) and its RSS after imports.

One JSON line is printed per case, and one with the slope of the driver's peak RSS per
million rows (least squares over the sizes). Targets (issue 10): at most 100 MB per
million rows, and at most 400 MB at 100k rows. ``--answer-bytes N`` makes the answers
long (the echo executor repeats an N-byte prompt): a shard's output then grows with N,
and so does the driver's peak, since a shard's rows are parsed and published whole.
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
BUILD_SIZES = (1_000_000, 4_000_000, 10_000_000)


def _status_mb(*fields: str) -> dict[str, float]:
    """Fields of ``/proc/self/status`` (``VmRSS``, ``RssAnon``, ...) in MB."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":", 1)[0]
            if name in fields:
                found[name] = int(line.split()[1]) / 1024
    return found


def _rss_mb() -> float:
    return _status_mb("VmRSS").get("VmRSS", 0.0)


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM).

    Not ``getrusage``: on Linux a child's ``ru_maxrss`` keeps the RSS of the process it
    was forked from, across exec, so a child of a large parent would report the parent's.
    """
    peak = _status_mb("VmHWM").get("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- results half ------------------------------------------------------------------------
def _setup(n: int, root: str, answer_bytes: int = 0, embedding_dims: int = 0) -> None:
    """Child process: build ``n`` chat requests and create the job at ``root``.

    ``answer_bytes``: 0 for short answers (5 tokens); else prompts of about that many
    bytes and no ``max_tokens``, which the echo executor answers with the prompt itself.
    ``embedding_dims``: embeddings requests instead, one input each, vectors of that
    many floats (~11 bytes each in the output file).
    """
    import polars as pl

    import batchframe as bf

    if embedding_dims:
        df = pl.DataFrame({"id": [f"r{i}" for i in range(n)]})
        df = df.with_columns(text=pl.format("Review {}: it works.", pl.col("id")))
        body = bf.embeddings_body(
            "text-embedding-3-large", input=pl.col("text"), dimensions=embedding_dims
        )
        requests = bf.build_requests(df, endpoint="/v1/embeddings", body=body, custom_id="id")
        bf.BatchJob.create(requests, root, client=None).close()
        return
    if answer_bytes:
        filler = "lorem ipsum dolor " * max(1, answer_bytes // 18)
        text = pl.format("Review {}: ", pl.col("id")) + pl.lit(filler)
        body = bf.chat_body("gpt-4o-mini", user=pl.col("text"))
    else:
        text = pl.format("Review {}: the product arrived on time and works.", pl.col("id"))
        body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=5)
    df = pl.DataFrame({"id": [f"r{i}" for i in range(n)]}).with_columns(text=text)
    requests = bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
    bf.BatchJob.create(requests, root, client=None).close()


def _rss_parts() -> tuple[float, float]:
    """This process's resident anonymous and file-backed memory, in MB."""
    parts = _status_mb("RssAnon", "RssFile")
    return parts.get("RssAnon", 0.0), parts.get("RssFile", 0.0)


class _PartsSampler:
    """Highest ``RssAnon`` and ``RssFile`` seen, sampled every 5 ms in a thread.

    The kernel keeps a high-water mark of the whole RSS only (``VmHWM``). Its
    file-backed part is the pages of the shared libraries (Polars, DuckDB, Arrow) this
    process touched, and on Linux 6.x it depends on the page cache too: a library just
    written by ``pip install`` sits in large folios and maps in bigger pieces than one
    read back from disk (measured: 188 against 122 MB at 100k rows, the same code).
    ``RssAnon`` is the process's own memory.
    """

    def __init__(self) -> None:
        import threading

        self.anon = self.file = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            anon, file = _rss_parts()
            self.anon, self.file = max(self.anon, anon), max(self.file, file)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_anon_mb": round(self.anon, 1), "peak_file_mb": round(self.file, 1)}


def _drive(root: str, database: str, base_url: str) -> None:
    """Child process: open the job, wait, write DuckDB; print a JSON line of memory."""
    import openai

    import batchframe as bf

    after_imports = _rss_mb()
    sampler = _PartsSampler()
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
    parts = sampler.stop()
    print(
        json.dumps(
            {
                "after_imports_mb": round(after_imports, 1),
                "peak_wait_mb": round(peak_wait, 1),
                "peak_mb": round(_peak_mb(), 1),
                **parts,
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


def results_case(
    n: int, base_url: str, workdir: Path, answer_bytes: int = 0, embedding_dims: int = 0
) -> dict[str, Any]:
    """One size of the results half: setup, then a driver doing wait() + to_duckdb."""
    import duckdb

    root = workdir / f"job-{n}"
    database = workdir / f"results-{n}.duckdb"
    shutil.rmtree(root, ignore_errors=True)
    database.unlink(missing_ok=True)
    t0 = time.perf_counter()
    _child("--_setup", str(n), str(root), str(answer_bytes), str(embedding_dims))
    t_setup = time.perf_counter() - t0
    lines = _child("--_drive", str(root), str(database), base_url).strip().splitlines()
    outputs = sum(p.stat().st_size for p in (root / "outputs").iterdir())
    shards = sum(1 for _ in (root / "shards").iterdir())
    driver = json.loads(lines[-1])
    with duckdb.connect(str(database), read_only=True) as con:
        (rows,) = con.execute(
            "SELECT (SELECT count(*) FROM results) + (SELECT count(*) FROM results_failed)"
        ).fetchone() or (0,)
    if rows != n:
        msg = f"DuckDB holds {rows} rows for a job of {n}"
        raise AssertionError(msg)
    result = {
        "part": "results",
        "rows": n,
        "answer_bytes": answer_bytes or None,
        "embedding_dims": embedding_dims or None,
        "shards": shards,
        "output_mb": round(outputs / 1e6, 1),
        "setup_s": round(t_setup, 2),
        **driver,
    }
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
    """Least-squares MB per million rows (None for fewer than two distinct sizes)."""
    if len({x for x, _ in points}) < 2:
        return None
    xs = [x / 1e6 for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def _summary(
    part: str, what: str, sizes: list[int], points: list[tuple[int, float]], **extra: Any
) -> None:
    """Print the JSON line that closes a part: peaks per size and their slope."""
    slope = _slope(points)
    line = {
        "part": part,
        "summary": what,
        "sizes": sizes,
        "peak_mb": [p for _, p in points],
        "slope_mb_per_million": None if slope is None else round(slope, 1),
        **extra,
    }
    print(json.dumps(line), flush=True)


def run_results(sizes: list[int], answer_bytes: int = 0, embedding_dims: int = 0) -> None:
    """Every size of the results half against one ``batchframe serve`` process."""
    proc, base_url = _serve()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            points, by_output = [], []
            for n in sizes:
                case = results_case(n, base_url, Path(tmp), answer_bytes, embedding_dims)
                case["load"] = os.getloadavg()[0]
                print(json.dumps(case), flush=True)
                points.append((n, case["peak_mb"]))
                by_output.append((int(case["output_mb"] * 1e6), case["peak_mb"]))
            per_output = _slope(by_output)  # MB of peak per MB of output files
            _summary(
                "results",
                "driver peak RSS",
                sizes,
                points,
                mb_per_output_mb=None if per_output is None else round(per_output, 2),
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- build half --------------------------------------------------------------------------
def _make_input(n: int, path: str) -> None:
    """Child process: ``n`` chat rows (id, text) as Parquet, written 1M rows at a time."""
    import polars as pl
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_build import make_texts

    base = pl.Series("text", make_texts(min(n, 1_000_000)))
    with pq.ParquetWriter(path, pl.DataFrame({"id": [0], "text": ["x"]}).to_arrow().schema) as w:
        for start in range(0, n, len(base)):
            k = min(len(base), n - start)
            part = pl.DataFrame(
                {"id": pl.int_range(start, start + k, eager=True), "text": base[:k]}
            )
            w.write_table(part.to_arrow(), row_group_size=100_000)


def _build(mode: str, path: str, out: str) -> None:
    """Child process: build + write from ``path``; print a JSON line of time and memory."""
    import polars as pl

    import batchframe as bf

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_build import SYSTEM

    t0 = time.perf_counter()
    source = pl.scan_parquet(path) if mode == "stream" else pl.read_parquet(path)
    requests = bf.build_requests(
        source,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", system=SYSTEM, user=pl.col("text"), max_tokens=5),
        custom_id="id",
        tokenizer="estimate",
    )
    written = requests.write(out)
    seconds = time.perf_counter() - t0
    mb = int(written["n_bytes"].sum()) / 1e6
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": round(seconds, 3),
                "jsonl_mb": round(mb, 1),
                "mb_per_s": round(mb / seconds, 1),
                "shards": written.height,
                "peak_mb": round(_peak_mb(), 1),
            }
        ),
        flush=True,
    )


def build_case(n: int, mode: str, source: Path, workdir: Path) -> dict[str, Any]:
    """One build + write of ``n`` rows in a fresh process (``mode``: stream or memory)."""
    out = workdir / "shards"
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    line = _child("--_build", mode, str(source), str(out)).strip().splitlines()[-1]
    shutil.rmtree(out, ignore_errors=True)
    return {"part": "build", "rows": n, **json.loads(line), "load": os.getloadavg()[0]}


def run_build(sizes: list[int], rounds: int) -> None:
    """Every size of the build half; both paths interleaved at the first size."""
    import statistics

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        points = []
        ratio = None
        for i, n in enumerate(sizes):
            source = work / f"input-{n}.parquet"
            _child("--_make", str(n), str(source))
            runs: dict[str, list[dict[str, Any]]] = {"stream": [], "memory": []}
            for _ in range(rounds if i == 0 else 1):
                for mode in ("memory", "stream") if i == 0 else ("stream",):
                    case = build_case(n, mode, source, work)
                    print(json.dumps(case), flush=True)
                    runs[mode].append(case)
            points.append((n, max(c["peak_mb"] for c in runs["stream"])))
            if runs["memory"]:
                ratio = statistics.median(c["mb_per_s"] for c in runs["stream"]) / (
                    statistics.median(c["mb_per_s"] for c in runs["memory"])
                )
            source.unlink()
        _summary(
            "build",
            "streamed build + write from pl.scan_parquet, peak RSS",
            sizes,
            points,
            stream_vs_memory_throughput=None if ratio is None else round(ratio, 3),
        )


#: Child-process entry points: ``bench_scale.py --_name args...``.
_CHILDREN: dict[str, Any] = {
    "--_make": lambda n, path: _make_input(int(n), path),
    "--_build": _build,
    "--_setup": lambda n, root, answer_bytes="0", dims="0": _setup(
        int(n), root, int(answer_bytes), int(dims)
    ),
    "--_drive": _drive,
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in _CHILDREN:
        _CHILDREN[sys.argv[1]](*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["build", "results"], default="results")
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated row counts (default: 1M,4M,10M for build, 0.1M,0.4M,1.6M for results)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="build: rounds at the first size")
    parser.add_argument(
        "--answer-bytes",
        type=int,
        default=0,
        help="results: answers of about this many bytes (default: 5 tokens); shows how a "
        "shard's output size moves the driver's peak",
    )
    parser.add_argument(
        "--embedding-dims",
        type=int,
        default=0,
        help="results: an embeddings job instead, vectors of this many floats "
        "(3072: a shard's output is ~35 KB a row)",
    )
    args = parser.parse_args()
    default = BUILD_SIZES if args.part == "build" else DEFAULT_SIZES
    spec = args.sizes or ",".join(str(n) for n in default)
    sizes = [int(s.replace("_", "")) for s in spec.split(",")]
    if args.part == "results":
        run_results(sizes, args.answer_bytes, args.embedding_dims)
    else:
        run_build(sizes, max(1, args.rounds))


if __name__ == "__main__":
    main()
