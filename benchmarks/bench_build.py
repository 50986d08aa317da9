"""Build and write 1M chat requests; compare against per-row json.dumps and orjson loops.

Usage: python benchmarks/bench_build.py [--rows 1000000] [--tokenizer estimate|exact|auto]

Prints MB/s for batchframe (build_requests + write) and for both baselines writing the
same bytes, the ratios, and peak RSS. Every run checks that the three outputs are
byte-identical after parsing (same JSON per line).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec
import orjson
import polars as pl

import batchframe as bf

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "service",
    "was",
    "great",
    "terrible",
    "food",
    "delivery",
    "late",
    "arrived",
    "broken",
    "works",
    "perfectly",
    "would",
    "buy",
    "again",
    "not",
    "recommend",
]
SPICE = ['she said "wow"', "line\nbreak", "café", "naïve", "日本語", "emoji 😀", "back\\slash"]
SYSTEM = "Label the sentiment: positive, negative or neutral."


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 60))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(SPICE))
        out.append(" ".join(words))
    return out


def line_obj(i: int, text: str) -> dict[str, object]:
    return {
        "custom_id": str(i),
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": text},
            ],
            "max_tokens": 5,
        },
    }


def sink(path: Path, target: str) -> Any:
    return io.BytesIO() if target == "memory" else open(path, "wb")


def loop_json(texts: list[str], path: Path, target: str) -> bytes:
    with sink(path, target) as f:
        for i, t in enumerate(texts):
            line = json.dumps(line_obj(i, t), ensure_ascii=False, separators=(",", ":"))
            f.write(line.encode() + b"\n")
        return f.getvalue() if target == "memory" else b""


def loop_orjson(texts: list[str], path: Path, target: str) -> bytes:
    with sink(path, target) as f:
        for i, t in enumerate(texts):
            f.write(orjson.dumps(line_obj(i, t)) + b"\n")
        return f.getvalue() if target == "memory" else b""


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tokenizer", default="estimate")
    ap.add_argument(
        "--target",
        choices=["disk", "memory"],
        default="disk",
        help="disk: a temp dir; memory: fsspec memory:// and BytesIO (no disk in the way)",
    )
    args = ap.parse_args()
    texts = make_texts(args.rows)
    df = pl.DataFrame({"id": range(args.rows), "text": texts})
    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))
    try:
        base_rss = peak_mb()
        os.sync()  # each timed phase starts with no dirty pages queued for the disk
        t0 = time.perf_counter()
        req = bf.build_requests(
            df,
            endpoint="/v1/chat/completions",
            body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), system=SYSTEM, max_tokens=5),
            custom_id="id",
            tokenizer=args.tokenizer,
        )
        t1 = time.perf_counter()
        root = "memory://bench_build" if args.target == "memory" else tmp / "bf"
        written = req.write(root)
        t2 = time.perf_counter()
        bf_rss = peak_mb()
        total = int(written["n_bytes"].sum())
        mb = total / 1e6

        os.sync()
        t3 = time.perf_counter()
        loop_orjson(texts, tmp / "orjson.jsonl", args.target)
        t4 = time.perf_counter()
        os.sync()
        t4b = time.perf_counter()
        ref_bytes = loop_json(texts, tmp / "json.jsonl", args.target)
        t5 = time.perf_counter()

        # Same requests: every shard line parses to the baseline's object.
        if args.target == "memory":
            fs = fsspec.filesystem("memory")
            ref = ref_bytes.splitlines()
            got = b"".join(fs.cat_file(p) for p in written["path"]).splitlines()
            fs.rm("/bench_build", recursive=True)
        else:
            ref = (tmp / "json.jsonl").read_bytes().splitlines()
            got = b"".join(Path(p).read_bytes() for p in written["path"]).splitlines()
        assert len(ref) == len(got) == args.rows
        for k in random.Random(1).sample(range(args.rows), min(2000, args.rows)):
            assert json.loads(ref[k]) == json.loads(got[k]), k
        assert len(got[0]) + 1 == int(req.frame["n_bytes"][0])

        bf_s, oj_s, js_s = t2 - t0, t4 - t3, t5 - t4b
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "target": args.target,
                    "MB": round(mb, 1),
                    "shards": written.height,
                    "tokenizer": req.tokenizer,
                    "batchframe_build_s": round(t1 - t0, 2),
                    "batchframe_write_s": round(t2 - t1, 2),
                    "batchframe_MBps": round(mb / bf_s, 1),
                    "orjson_loop_MBps": round(mb / oj_s, 1),
                    "json_loop_MBps": round(mb / js_s, 1),
                    "ratio_vs_orjson": round(oj_s / bf_s, 2),
                    "ratio_vs_json": round(js_s / bf_s, 2),
                    "input_frame_MB": round(df.estimated_size() / 1e6, 1),
                    "requests_frame_MB": round(req.frame.estimated_size() / 1e6, 1),
                    "peak_rss_MB_before": round(base_rss, 1),
                    "peak_rss_MB_after_batchframe": round(bf_rss, 1),
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
