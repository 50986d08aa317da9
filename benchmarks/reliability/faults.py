"""Fault matrix: one job per fault configuration, audited against the server.

The server runs in its own process; each configuration injects one kind of fault (or a
mix), a driver child runs the job at default settings (calling ``wait()`` again when the
API kept failing, as the error message says), and the job is audited: final ok and
failed rows, lost and duplicated rows, batches per shard attempt, duplicate batches
that ran, wall time.

Faults: API calls answered 429/500 before they take effect (30/60/90 %), lost answers
of ``batches.create`` and ``files.create`` (the call takes effect, the client sees a
500), per-line 500s (20/50 %), batches expiring with part of their lines done, a 6-s
outage of the model (every line 500; also with the retry policy of before: retried
at once, three tries), and a mix.

Run: ``python benchmarks/reliability/faults.py [--rows 60] [--shard 10]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ServerProcess, audit, load, run_driver

CONFIGS: dict[str, dict[str, Any]] = {
    "none": {},
    "api errors 30%": {"api_error_rate": 0.3},
    "api errors 60%": {"api_error_rate": 0.6},
    "api errors 90%": {"api_error_rate": 0.9},
    "lost create answers x3": {"lose": [("POST", "/v1/batches", 500, 3)]},
    "lost upload answers x3": {"lose": [("POST", "/v1/files", 500, 3)]},
    "line failures 20%": {"failure_rate": 0.2},
    "line failures 50%": {"failure_rate": 0.5},
    "expiry (window 0.4 s)": {"completion_window_seconds": 0.4, "requests_per_second": 40},
    "outage 6 s (every line 500)": {"outage": 6.0},
    "outage 6 s, before: no backoff, 3 tries": {
        "outage": 6.0,
        "driver": {"backoff": {"initial": 0.0}, "options": {"max_attempts": 3}},
    },
    "mix: api 30% + lines 20% + lost creates": {
        "api_error_rate": 0.3,
        "failure_rate": 0.2,
        "lose": [("POST", "/v1/batches", 500, 2)],
    },
}


def run_config(
    name: str, server_cfg: dict[str, Any], rows: int, shard: int, tmp: str
) -> dict[str, Any]:
    """One job under one fault configuration; its figures."""
    root = Path(tmp) / name.replace(" ", "_").replace("%", "pc").replace("/", "_")
    started = time.monotonic()
    server_cfg = dict(server_cfg)
    driver = server_cfg.pop("driver", {})
    with ServerProcess(seed=7, retry_after_seconds=0.01, **server_cfg) as server:
        code, _, err = run_driver(
            {
                "base_url": server.base_url,
                "root": str(root),
                "rows": rows,
                "shard": shard,
                **driver,
            }
        )
        if code != 0:
            msg = f"{name}: the driver failed: {err[-3000:]}"
            raise RuntimeError(msg)
        seconds = time.monotonic() - started
        found = audit(server, str(root), rows)
    return {
        "fault": name,
        "ok": found.ok,
        "failed": found.failed,
        "lost": found.lost,
        "duplicated": found.duplicated_rows,
        "batches/attempt": found.max_per_attempt,
        "dup ran": found.duplicates_ran,
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every configuration (or those named) and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--shard", type=int, default=10)
    parser.add_argument("--only", nargs="*", default=None, help="configuration names")
    args = parser.parse_args(argv)
    print(f"fault matrix: {args.rows} rows in shards of {args.shard}, defaults, {load()}")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CONFIGS.items():
            if args.only is not None and name not in args.only:
                continue
            fig = run_config(name, cfg, args.rows, args.shard, tmp)
            out.append(fig)
            print("  " + " | ".join(f"{k}: {v}" for k, v in fig.items()), flush=True)
    bad = [
        f for f in out if f["lost"] or f["duplicated"] or f["dup ran"] or f["batches/attempt"] > 1
    ]
    print(f"{len(out)} configurations; {len(bad)} with a lost/duplicated row or batch")
    return out


if __name__ == "__main__":
    main()
