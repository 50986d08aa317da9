"""Kill campaign: SIGKILL a job's driver at random moments; count files left on the provider.

Runs one job on a LocalBatchServer; a child process drives it (``BatchJob.open`` +
``wait``) and is killed at a random moment, or right after an upload returns (before
the manifest records it), ``--kills`` times in all. Then a last process finishes the
job. Printed: how many uploaded files no manifest recorded right after the kills
(what a crash leaves), and how many files of the job remain on the server once it
is settled (the target is 0), plus batches per shard attempt (must be 1).

    python benchmarks/bench_orphans.py --kills 40
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import polars as pl

import batchframe as bf
from batchframe import _engine
from batchframe._manifest import Manifest
from batchframe._storage import Storage

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import batchframe as bf
    from batchframe import _api, _engine
    from batchframe._api import make_client

    base_url, root, mode = sys.argv[1:4]
    _engine._INTENT_GRACE = 0.3
    if mode == "after_upload":
        orig = _api.BatchAPI.upload

        def upload(self, *a, **k):
            file_id = orig(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
            return file_id

        _api.BatchAPI.upload = upload
    with bf.BatchJob.open(root, client=make_client(base_url, api_key="local")) as job:
        print("ready", flush=True)
        job.wait(poll_interval=0.02)
    print("done", flush=True)
    """
)


def unrecorded(server: bf.LocalBatchServer, root: Path, job_id: str) -> int:
    m = Manifest.load(Storage(str(root)))
    held = {
        fid
        for r in m.records
        for fid in (r.input_file_id, r.output_file_id, r.error_file_id)
        if fid
    }
    return sum(
        1 for f in server.files() if f["filename"].startswith(job_id) and f["id"] not in held
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    _engine._INTENT_GRACE = 0.3
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp())
    script = tmp / "child.py"
    script.write_text(CHILD)
    df = pl.DataFrame({"id": [f"r{i}" for i in range(args.rows)], "text": ["hello"] * args.rows})
    req = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=4),
        custom_id="id",
    )
    kills = stray_max = stray_sum = 0
    jobs = 0
    t0 = time.perf_counter()
    with bf.LocalBatchServer(requests_per_second=300, validation_seconds=0.05, seed=2) as server:
        while kills < args.kills:
            jobs += 1
            root = tmp / f"job{jobs}"
            with bf.BatchJob.create(
                req, root, client=server.client(), limits=bf.BatchLimits(max_requests=20)
            ) as job:
                job_id = job.job_id
            for _ in range(8):
                mode = rng.choice(["random", "after_upload"])
                proc = subprocess.Popen(
                    [sys.executable, str(script), server.base_url, str(root), mode],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                assert proc.stdout is not None
                proc.stdout.readline()  # "ready": imported, the job opened
                time.sleep(rng.uniform(0.0, 1.0))
                proc.kill()
                out, err = proc.communicate(timeout=300)
                if proc.returncode not in (0, -9):
                    raise SystemExit(err.decode()[-3000:])
                if proc.returncode == -9:
                    kills += 1
                    n = unrecorded(server, root, job_id)
                    stray_sum += n
                    stray_max = max(stray_max, n)
                if b"done" in out or kills >= args.kills:
                    break
            with bf.BatchJob.open(root, client=server.client()) as job:
                job.wait(poll_interval=0.02)
                res = job.collect()
            assert res.ok.height + res.failed.height == args.rows
        per_attempt = Counter(
            (
                b["metadata"]["batchframe_job"],
                b["metadata"]["batchframe_shard"],
                b["metadata"]["batchframe_attempt"],
            )
            for b in server.batches_created()
        )
        left = len(server.files())
    print(
        f"{kills} kills over {jobs} job(s) in {time.perf_counter() - t0:.0f} s (load {os.getloadavg()[0]:.1f}): "
        f"files uploaded but recorded nowhere right after a kill: {stray_sum} in all (max {stray_max} at once); "
        f"files left on the server once every job settled: {left} (target 0); "
        f"most batches per shard attempt: {max(per_attempt.values())} (must be 1)"
    )


if __name__ == "__main__":
    main()
