"""Two drivers on one root: a second one takes over while the first is still alive.

Driver A creates a 20-shard job and drives it (``max_in_flight`` keeps it submitting
for a while). Once A has created a few batches, driver B takes the root over, either
with ``break_lock=True`` or after ``lock.json`` was deleted, and both run to the end.
Before fencing (``--no-fence`` reproduces it: the lock check and duplicate scan off),
A never noticed: 18-20 of 20 shards got two batches. With the fence, A stops with
``JobLockedError`` before its next create or save, and any batch it created in the
instant between its last check and the takeover is found by B's duplicate scan and
cancelled before it runs.

Every figure is read back from the server (a separate process) and the job root:
batches per shard attempt, duplicate batches and how many of them ran, lost and
duplicated rows.

Run: ``python benchmarks/reliability/two_drivers.py [--trials 4] [--shards 20] [--no-fence]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ServerProcess, audit, load, run_driver, start_driver


def trial(
    root: Path, takeover: str, *, shards: int, no_fence: bool, seed: int
) -> dict[str, object]:
    """One displaced-holder scenario; return its figures."""
    rows = shards * 10
    with ServerProcess(requests_per_second=20, validation_seconds=0.2, seed=seed) as server:
        base = {
            "base_url": server.base_url,
            "root": str(root),
            "rows": rows,
            "shard": 10,
            "poll": 0.02,
            "no_fence": no_fence,
            "options": {"max_in_flight": 4},
        }
        a = start_driver({**base, "seed": seed})
        # B starts at once (its imports take a while) and takes over once A has created
        # a few batches, i.e. while A is mid-way through the job.
        code_b, out_b, err_b = run_driver(
            {
                **base,
                "seed": seed + 1,
                "take_over_after": 3,
                "break_lock": takeover == "break_lock",
                "delete_lock": takeover == "delete",
            }
        )
        out_a, err_a = a.communicate(timeout=300)
        if code_b not in (0, 3) or a.returncode not in (0, 3):
            print(err_a[-2000:], err_b[-2000:], file=sys.stderr)
            msg = f"a driver failed: A={a.returncode} B={code_b}"
            raise RuntimeError(msg)
        finished = [n for n, out in (("A", out_a), ("B", out_b)) if "done" in out]
        if not finished:  # both stopped: finish as a user would
            code, _, err = run_driver({**base, "seed": seed + 2})
            if code != 0:
                raise RuntimeError(err[-2000:])
        found = audit(server, str(root), rows)
    return {
        "takeover": takeover,
        "A": "displaced" if a.returncode == 3 else "finished",
        "B": "refused" if code_b == 3 else "finished",
        "shard attempts": found.shard_attempts,
        "batches": found.batches,
        "max batches/attempt": found.max_per_attempt,
        "duplicates": found.duplicates,
        "duplicates that ran": found.duplicates_ran,
        "recorded": found.recorded_duplicates,
        "lost rows": found.lost,
        "duplicated rows": found.duplicated_rows,
        "ok": found.ok,
    }


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Run the trials and print one line per trial and a total."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per takeover kind")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--no-fence", action="store_true", help="baseline: fence switched off")
    args = parser.parse_args(argv)
    print(f"two drivers on one root: {args.shards} shards, {load()}")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.trials):
            for takeover in ("break_lock", "delete"):
                root = Path(tmp) / f"{takeover}{i}"
                fig = trial(
                    root, takeover, shards=args.shards, no_fence=args.no_fence, seed=100 + i
                )
                out.append(fig)
                print("  " + ", ".join(f"{k}: {v}" for k, v in fig.items()), flush=True)
    ran = sum(int(f["duplicates that ran"]) for f in out)  # type: ignore[call-overload]
    dups = sum(int(f["duplicates"]) for f in out)  # type: ignore[call-overload]
    lost = sum(int(f["lost rows"]) for f in out)  # type: ignore[call-overload]
    print(
        f"total over {len(out)} trials: {dups} duplicate batch(es), {ran} of them ran, "
        f"{lost} lost row(s){' (fence OFF)' if args.no_fence else ''}"
    )
    return out


if __name__ == "__main__":
    main()
