"""Start-up time: ``import batchframe`` and the CLI against ``import polars``, in one run.

Each command runs in a fresh interpreter (``subprocess``), ``--rounds`` times, interleaved,
and the median wall time is reported (and the median CPU time of the child, which a busy
machine inflates less):

* ``python -c "import polars"`` (the baseline: batchframe cannot start faster than it);
* ``python -c "import batchframe"``;
* ``batchframe --help``;
* ``batchframe status ROOT --offline`` on a small settled job (no network; also no
  ``OPENAI_*`` variable in the environment).

Targets (issue 14): ``import batchframe`` at most 0.3 s more than ``import polars``;
``--help`` plus offline ``status`` under 1 s in total.

Run: ``python benchmarks/bench_startup.py [--rounds 7]``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import orjson
import polars as pl

import batchframe as bf


def make_job(root: str) -> None:
    """A small settled job at ``root`` (3 shards), run on the local server."""
    df = pl.DataFrame({"id": [f"r{i}" for i in range(30)], "text": ["good"] * 30})
    req = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
    )
    with (
        bf.LocalBatchServer() as server,
        bf.BatchJob.create(
            req, root, client=server.client(), limits=bf.BatchLimits(max_requests=10)
        ) as job,
    ):
        job.wait(poll_interval=0.02, progress=False)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, of the child) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        msg = f"{argv} failed: {done.stderr.decode()[-500:]}"
        raise SystemExit(msg)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    py = sys.executable
    cli = [py, "-m", "batchframe"]
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "job")
        make_job(root)
        commands = {
            "import_polars": [py, "-c", "import polars"],
            "import_batchframe": [py, "-c", "import batchframe"],
            "cli_help": [*cli, "--help"],
            "cli_status_offline": [*cli, "status", root, "--offline"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # warm the file cache once
            timed(argv, env)
        for _ in range(args.rounds):
            for name, argv in commands.items():
                wall, cpu = timed(argv, env)
                times[name].append(wall)
                cpus[name].append(cpu)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    cpu_med = {name: statistics.median(ts) for name, ts in cpus.items()}
    extra = med["import_batchframe"] - med["import_polars"]
    cli_total = med["cli_help"] + med["cli_status_offline"]
    print(
        orjson.dumps(
            {
                "rounds": args.rounds,
                "load_1min": round(os.getloadavg()[0], 2),
                "median_s": {k: round(v, 3) for k, v in med.items()},
                "median_cpu_s": {k: round(v, 3) for k, v in cpu_med.items()},
                "import_extra_over_polars_s": round(extra, 3),
                "import_ratio_vs_polars": round(med["import_batchframe"] / med["import_polars"], 2),
                "help_plus_status_s": round(cli_total, 3),
                "target_import_extra_le_0_3_s": extra <= 0.3,
                "target_help_plus_status_lt_1_s": cli_total < 1.0,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
