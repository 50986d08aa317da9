"""Throughput of LocalBatchServer for one 50,000-line chat batch: upload, execute, download.

Plain script: ``python benchmarks/bench_server.py [n_lines]``. Prints MB/s and lines/s.
"""

from __future__ import annotations

import sys
import time

import orjson

from batchframe import LocalBatchServer


def make_file(n: int) -> bytes:
    lines = []
    for i in range(n):
        body = {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "system",
                    "content": "Label the sentiment: positive, negative or neutral.",
                },
                {
                    "role": "user",
                    "content": f"Review {i}: the product arrived on time and works as described.",
                },
            ],
            "max_tokens": 5,
        }
        line = {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
        lines.append(orjson.dumps(line))
    return b"\n".join(lines) + b"\n"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    data = make_file(n)
    mb = len(data) / 1e6
    print(f"input: {n:,} lines, {mb:.1f} MB")
    with LocalBatchServer() as server:
        client = server.client()
        t0 = time.perf_counter()
        uploaded = client.files.create(file=("bench.jsonl", data), purpose="batch")
        t_upload = time.perf_counter() - t0
        print(f"upload:   {t_upload:6.2f} s  {mb / t_upload:8.1f} MB/s")

        t0 = time.perf_counter()
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
            batch = client.batches.retrieve(batch.id)
        t_exec = time.perf_counter() - t0
        assert batch.status == "completed", batch
        assert batch.output_file_id is not None
        print(f"execute:  {t_exec:6.2f} s  {n / t_exec:8.0f} lines/s  ({batch.request_counts})")

        t0 = time.perf_counter()
        size = 0
        count = 0
        with client.files.with_streaming_response.content(batch.output_file_id) as response:
            for chunk in response.iter_bytes(1 << 20):
                size += len(chunk)
                count += chunk.count(b"\n")
        t_down = time.perf_counter() - t0
        assert count == n, count
        print(
            f"download: {t_down:6.2f} s  {size / 1e6 / t_down:8.1f} MB/s  ({size / 1e6:.1f} MB output)"
        )
        print(f"total:    {t_upload + t_exec + t_down:6.2f} s")

        m = n // 10
        lines = [
            orjson.dumps(
                {
                    "custom_id": f"e{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": f"review {i}"},
                }
            )
            for i in range(m)
        ]
        t0 = time.perf_counter()
        emb_file = client.files.create(file=("emb.jsonl", b"\n".join(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=emb_file.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        server.wait_idle()
        batch = client.batches.retrieve(batch.id)
        t_emb = time.perf_counter() - t0
        assert batch.status == "completed", batch
        out_mb = client.files.retrieve(batch.output_file_id or "").bytes / 1e6
        print(
            f"embeddings (1536 dims): {m:,} inputs in {t_emb:.2f} s, {m / t_emb:,.0f} inputs/s, "
            f"{out_mb:.0f} MB output"
        )


if __name__ == "__main__":
    main()
