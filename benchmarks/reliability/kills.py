"""Kill campaign: SIGKILL the driving process at every stage, resume, audit.

The server runs in its own process (a LocalBatchServer with 15 % per-line failures, so
retries happen, and batches that take a moment). Each trial drives one job with a
driver child that is killed, again and again, at a stage drawn at random:

* ``random``: at a random moment (by the parent, SIGKILL after 0.3-2 s);
* ``before_create`` / ``after_create``: with the intent saved but no batch, or with a
  batch the manifest does not know;
* ``retry_create``: the same, for a retry attempt's batch;
* ``after_upload``: with an uploaded file the manifest does not know;
* ``during_download``: halfway through writing an output or error file;
* ``during_save``: halfway through writing ``manifest.json``;
* ``during_duckdb``: while ``job.to_duckdb`` writes the results table.

After the kills of a trial a last driver finishes the job (as a user would, with no
``break_lock``), and the trial is audited against the server and the root: batches per
shard attempt (must be 1), duplicate batches that ran, lost and duplicated rows, DuckDB
rows against ok rows, stray temporary files.

Run: ``python benchmarks/reliability/kills.py [--trials 30] [--kills 4] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ServerProcess, audit, load, run_driver

MODES = [
    "random",
    "before_create",
    "after_create",
    "retry_create",
    "after_upload",
    "during_download",
    "during_save",
    "during_duckdb",
]


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the campaign; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--kills", type=int, default=4, help="driver runs per trial")
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--shard", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    kills: Counter[str] = Counter()
    runs: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    worst = 0
    unclean: list[str] = []
    started = time.monotonic()
    print(f"kill campaign: {args.trials} trials x {args.kills} driver runs, {load()}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(
            failure_rate=0.15, requests_per_second=300, validation_seconds=0.05, seed=args.seed
        ) as server,
    ):
        for trial in range(args.trials):
            root = Path(tmp) / f"trial{trial}"
            base = {
                "base_url": server.base_url,
                "root": str(root),
                "rows": args.rows,
                "shard": args.shard,
                "poll": 0.02,
                # Retries at once (the outage backoff is measured in faults.py).
                "backoff": {"initial": 0.05, "max_delay": 0.2},
            }
            for _ in range(args.kills):
                mode = rng.choice(MODES)
                runs[mode] += 1
                cfg = {**base, "mode": mode, "seed": rng.randrange(10**6)}
                kill_after = rng.uniform(0.3, 2.0) if mode == "random" else None
                code, out, err = run_driver(cfg, kill_after=kill_after)
                if code not in (0, -9):
                    msg = f"driver failed ({mode}, exit {code}): {err[-3000:]}"
                    raise RuntimeError(msg)
                if code == -9:
                    kills[mode] += 1
                if "done" in out:
                    break
            code, out, err = run_driver({**base, "mode": "none"})
            if code != 0:
                msg = f"the finishing driver failed: {err[-3000:]}"
                raise RuntimeError(msg)
            found = audit(server, str(root), args.rows)
            worst = max(worst, found.max_per_attempt)
            totals["shard attempts"] += found.shard_attempts
            totals["batches"] += found.batches
            totals["duplicate batches"] += found.duplicates
            totals["duplicates that ran"] += found.duplicates_ran
            totals["lost rows"] += found.lost
            totals["duplicated rows"] += found.duplicated_rows
            totals["stray files"] += found.stray_files
            totals["ok rows"] += found.ok
            totals["failed rows"] += found.failed
            if found.duckdb_rows != found.ok:
                totals["duckdb mismatches"] += 1
            if not found.clean():
                unclean.append(f"trial {trial}: {found}")
    figures: dict[str, object] = {
        "kills": sum(kills.values()),
        "kills by stage": dict(sorted(kills.items())),
        "driver runs by stage": dict(sorted(runs.items())),
        "trials": args.trials,
        "max batches per shard attempt": worst,
        **dict(totals),
        "unclean trials": len(unclean),
        "seconds": round(time.monotonic() - started, 1),
    }
    for k, v in figures.items():
        print(f"  {k}: {v}")
    for line in unclean:
        print("  UNCLEAN", line)
    return figures


if __name__ == "__main__":
    main()
