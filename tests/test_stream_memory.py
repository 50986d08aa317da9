"""A streamed build keeps its memory flat as the input grows (peak RSS of child processes).

Small chunks (4 MiB) make a 40k-row input already many chunks long, so a quadrupled input
must not raise the peak; the in-memory path over the same files shows the same check
would catch a build that holds the job (it grows by about the size of the JSONL).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

CHILD = """
import json, sys
import polars as pl
import batchframe as bf
from batchframe import _source
_source.CHUNK_BYTES = 4 << 20
mode, path, out = sys.argv[1:4]
source = pl.scan_parquet(path) if mode == "stream" else pl.read_parquet(path)
requests = bf.build_requests(
    source,
    endpoint="/v1/chat/completions",
    body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=5),
    custom_id="id",
    tokenizer="estimate",
)
written = requests.write(out)

def peak_mb():
    # VmHWM, not getrusage: a child's ru_maxrss keeps the RSS of the (pytest) process it
    # was forked from, across exec, which would hide the child's own peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

print(json.dumps({
    "peak_mb": peak_mb(),
    "rows": int(written["n_requests"].sum()),
    "mb": int(written["n_bytes"].sum()) / 1e6,
}))
"""


def _input(path: Path, n: int) -> Path:
    words = "the parcel arrived late but the support team was kind and quick to help "
    pl.DataFrame({"id": range(n)}).with_columns(
        text=pl.format("{} {}", pl.col("id"), pl.lit(words * 28))  # ~2 KB per row
    ).write_parquet(path, row_group_size=10_000)
    return path


def _peak(mode: str, source: Path, out: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streamed_build_peak_memory_does_not_grow_with_the_input(tmp_path):
    small = _input(tmp_path / "small.parquet", 40_000)
    large = _input(tmp_path / "large.parquet", 160_000)
    stream_small = _peak("stream", small, tmp_path / "s1")
    stream_large = _peak("stream", large, tmp_path / "s2")
    memory_small = _peak("memory", small, tmp_path / "m1")
    memory_large = _peak("memory", large, tmp_path / "m2")
    assert stream_large["rows"] == 160_000 and stream_small["rows"] == 40_000
    extra_mb = stream_large["mb"] - stream_small["mb"]  # JSONL the larger input adds
    assert extra_mb > 200
    # The in-memory path holds the lines: it grows by at least the extra JSONL.
    assert memory_large["peak_mb"] - memory_small["peak_mb"] > 0.8 * extra_mb
    # The streamed path does not: a few chunks and 8 bytes per row.
    growth = stream_large["peak_mb"] - stream_small["peak_mb"]
    assert growth < 60, (stream_small, stream_large)
