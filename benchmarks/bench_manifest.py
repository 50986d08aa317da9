"""What a manifest save costs the driver, by the number of shard attempts in the job.

    python benchmarks/bench_manifest.py                    # 200, 1,000 and 3,000 attempts
    python benchmarks/bench_manifest.py --sizes 500,5000

A driver saves its manifest after every change it sees (a batch moved on, a file was
downloaded, a shard settled): the number of saves grows with the job, and each save
reads every record, so the cost of one save is what keeps a long job's driver CPU
linear. A job of 10M chat rows has ~200 shards and ~600 attempts with retries; 50M
rows, ~1,000 shards.

For each size, prints one JSON line: the time of a save that writes (one record
changed, as a poll makes it), of a save with nothing new (skipped), and of one record's
plain-dict form, against ``dataclasses.asdict`` of the same record (what it was before
2026-12-02, measured in the same run: ``vs_asdict``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

from batchframe._manifest import Manifest, ShardAttempt
from batchframe._storage import Storage


def _records(n: int) -> list[ShardAttempt]:
    """``n`` settled attempts, each with what a finished batch leaves in the manifest."""
    return [
        ShardAttempt(
            shard=i,
            attempt=0,
            path=f"shards/{i:05d}.jsonl",
            sha256=f"{i:064x}",
            n_requests=50_000,
            n_bytes=180_000_000,
            est_tokens=1_500_000,
            model="gpt-4o-mini",
            status="completed",
            input_file_id=f"file-in{i}",
            batch_id=f"batch_{i:024x}",
            output_file_id=f"file-out{i}",
            output_path=f"outputs/{i:05d}.a0.jsonl",
            output_downloaded=True,
            total=50_000,
            completed=50_000,
            usage={
                "input_tokens": 1_400_000,
                "output_tokens": 250_000,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 1_650_000,
            },
            batch_timestamps={
                "in_progress_at": 1_764_600_000 + i,
                "finalizing_at": 1_764_603_000 + i,
                "completed_at": 1_764_603_600 + i,
            },
            n_ok=49_990,
            n_final_failed=0,
            n_retried=10,
        )
        for i in range(n)
    ]


def _per_call(fn: object, repeat: int) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def case(n: int, folder: str) -> dict[str, object]:
    records = _records(n)
    manifest = Manifest(
        job_id="bfj_bench",
        endpoint="/v1/chat/completions",
        fingerprint="0" * 64,
        n_requests=50_000 * n,
        limits={},
        options={},
        json_schema=None,
        records=records,
    )
    storage = Storage(folder)
    manifest.save(storage)
    repeat = max(3, 3_000 // n)
    tick = iter(range(10**9))

    def changed_save() -> None:
        records[next(tick) % n].completed -= 1  # what a poll records
        manifest.save(storage)

    save_s = _per_call(changed_save, repeat)
    skip_s = _per_call(lambda: manifest.save(storage), repeat)
    one = records[0]
    ours = _per_call(one.to_dict, 2_000)
    theirs = _per_call(lambda: dataclasses.asdict(one), 2_000)
    if one.to_dict() != dataclasses.asdict(one):
        raise AssertionError("to_dict differs from dataclasses.asdict")
    return {
        "attempts": n,
        "manifest_kb": round(len(storage.read_bytes("manifest.json")) / 1e3, 1),
        "save_ms": round(save_s * 1e3, 2),
        "unchanged_save_ms": round(skip_s * 1e3, 2),
        "record_to_dict_us": round(ours * 1e6, 2),
        "asdict_us": round(theirs * 1e6, 2),
        "vs_asdict": round(theirs / ours, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000,3000", help="comma-separated attempts")
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-manifest-") as folder:
            print(json.dumps(case(n, folder)), flush=True)


if __name__ == "__main__":
    main()
