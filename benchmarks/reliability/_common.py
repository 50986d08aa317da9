"""Shared pieces of the reliability scripts: a server in its own process, a driver child.

* :class:`ServerProcess` runs a ``LocalBatchServer`` in a child process (so a killed
  driver never takes the server down with it), optionally answering 500 during an
  outage window or losing the answers of the next create/upload calls.
* ``DRIVER`` is the job-driving child: it creates or opens a job, submits, waits and
  writes DuckDB, and can kill itself (SIGKILL) at a chosen stage.
* :func:`audit` checks a finished job against the server: batches per shard attempt,
  duplicate batches that ran, lost and duplicated rows, stray temporary files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER = textwrap.dedent(
    """
    import json, sys, time
    import batchframe as bf
    from batchframe._server._echo import echo

    cfg = json.loads(sys.argv[1])
    executor = "echo"
    if cfg.get("outage"):
        start = [None]

        def executor(endpoint, body):
            now = time.monotonic()
            if start[0] is None:
                start[0] = now
            if now - start[0] < cfg["outage"]:
                return 500, {"error": {"message": "The server had an error while processing "
                    "your request.", "type": "server_error", "param": None, "code": "server_error"}}
            return echo(endpoint, body)

    server = bf.LocalBatchServer(executor, **cfg.get("server", {}))
    for method, path, status, times in cfg.get("lose", []):
        server.fail_next(method, path, status=status, times=times, after=True)
    print(server.base_url, flush=True)
    sys.stdin.read()
    server.close()
    """
)

DRIVER = textwrap.dedent(
    """
    import json, os, random, signal, sys, threading, time
    from contextlib import contextmanager

    import polars as pl
    import batchframe as bf
    from batchframe import _api, _engine, _fence, _storage

    cfg = json.loads(sys.argv[1])
    rng = random.Random(cfg.get("seed", 0))
    mode = cfg.get("mode", "none")
    _engine._INTENT_GRACE = 0.3


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    if cfg.get("no_fence"):  # the code before fencing, for the baseline figures
        _fence.Fence.check = lambda self: None
        _engine.JobEngine._maybe_scan = lambda self, **k: None
    if mode in ("before_create", "after_create", "retry_create"):
        orig_create = _api.BatchAPI.create_batch
        left = [rng.randint(1, 3)]

        def create(self, *a, **k):
            retry = k.get("metadata", {}).get("batchframe_attempt", "0") != "0"
            if mode == "retry_create" and not retry:
                return orig_create(self, *a, **k)
            left[0] -= 1
            if left[0] == 0 and mode == "before_create":
                die()
            b = orig_create(self, *a, **k)
            if left[0] == 0:
                die()
            return b

        _api.BatchAPI.create_batch = create
    elif mode == "after_upload":
        orig_upload = _api.BatchAPI.upload

        def upload(self, *a, **k):
            file_id = orig_upload(self, *a, **k)
            if rng.random() < 0.5:
                die()
            return file_id

        _api.BatchAPI.upload = upload
    elif mode == "during_download":
        orig_open_write = _storage.Storage.open_write

        @contextmanager
        def open_write(self, rel):
            with orig_open_write(self, rel) as f:
                if rel.startswith(("outputs/", "errors/")) and rng.random() < 0.4:
                    f.write(b'{"partial": ')
                    f.flush()
                    die()
                yield f

        _storage.Storage.open_write = open_write
    elif mode == "during_save":
        orig_write = _storage.Storage.write_bytes

        def write_bytes(self, rel, data):
            if rel == "manifest.json" and rng.random() < 0.1:
                with _storage.Storage.open_write(self, rel) as f:
                    f.write(bytes(data)[: len(data) // 2])
                    f.flush()
                    die()
            return orig_write(self, rel, data)

        _storage.Storage.write_bytes = write_bytes

    n = cfg["rows"]
    df = pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"t {i}" for i in range(n)]})
    req = bf.build_requests(
        df, endpoint="/v1/chat/completions", body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )
    client = _api.make_client(cfg["base_url"], api_key="x")
    root = cfg["root"]
    options = dict(cfg.get("options", {}))
    if cfg.get("backoff"):
        options["retry_backoff"] = bf.RetryBackoff(**cfg["backoff"])
    if cfg.get("take_over_after"):  # a second driver: wait until the first is mid-way
        manifest = os.path.join(root, "manifest.json")
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                with open(manifest, "rb") as f:
                    if f.read().count(b'"batch_id": "batch_') >= cfg["take_over_after"]:
                        break
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        if cfg.get("delete_lock"):
            try:
                os.remove(os.path.join(root, "lock.json"))
            except FileNotFoundError:
                pass
    if os.path.exists(os.path.join(root, "manifest.json")):
        try:
            job = bf.BatchJob.open(root, client=client, break_lock=cfg.get("break_lock", False))
        except bf.JobLockedError as exc:
            print("refused", str(exc).replace("\\n", " "), flush=True)
            sys.exit(3)
    else:
        job = bf.BatchJob.create(
            req, root, client=client, limits=bf.BatchLimits(max_requests=cfg["shard"]), **options
        )
    print("opened", job.job_id, flush=True)
    try:
        while True:
            try:
                job.submit()
                job.wait(poll_interval=cfg.get("poll", 0.02), progress=False)
                break
            except bf.APIError:
                time.sleep(0.05)  # the API kept failing: the state is saved, try again
    except bf.JobLockedError as exc:
        print("displaced", str(exc).replace("\\n", " "), flush=True)
        sys.exit(3)
    if mode == "during_duckdb":
        threading.Timer(rng.uniform(0.0, 0.3), die).start()
    job.to_duckdb(os.path.join(root, "results.duckdb"), table="rows")
    job.close()
    print("done", flush=True)
    """
)


class ServerProcess:
    """A ``LocalBatchServer`` in a child process; ``base_url`` once started."""

    def __init__(
        self,
        *,
        outage: float | None = None,
        lose: list[tuple[str, str, int, int]] | None = None,
        **server: Any,
    ) -> None:
        cfg = {"server": server, "outage": outage, "lose": lose or []}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.close()
            msg = "the server process did not start"
            raise RuntimeError(msg)

    def client(self) -> Any:
        """An ``openai`` client for the server (no SDK retries)."""
        from batchframe._api import make_client

        return make_client(self.base_url, api_key="x")

    def batches(self, job_id: str) -> list[Any]:
        """Every batch tagged for ``job_id`` (retrying injected API errors patiently)."""
        from batchframe._api import BatchAPI, RetryPolicy

        api = BatchAPI(
            self.client(), retry=RetryPolicy(max_tries=200, backoff=0.01, max_backoff=0.05)
        )
        return api.find_batches({"batchframe_job": job_id})

    def close(self) -> None:
        """Stop the server process."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_driver(
    cfg: dict[str, Any], *, kill_after: float | None = None, timeout: float = 300.0
) -> tuple[int, str, str]:
    """Run the driver child with ``cfg``; SIGKILL it after ``kill_after`` s if given."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def start_driver(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    """Start the driver child without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Audit:
    """What a finished job looks like from the server and from its root."""

    shard_attempts: int
    batches: int
    max_per_attempt: int
    duplicates: int
    duplicates_ran: int
    lost: int
    duplicated_rows: int
    ok: int
    failed: int
    stray_files: int
    duckdb_rows: int | None
    recorded_duplicates: int

    def clean(self) -> bool:
        """No duplicate batch ran, no row lost or duplicated, DuckDB holds every ok row."""
        return (
            self.duplicates_ran == 0
            and self.lost == 0
            and self.duplicated_rows == 0
            and (self.duckdb_rows is None or self.duckdb_rows == self.ok)
        )


def audit(server: ServerProcess, root: str, n_rows: int) -> Audit:
    """Compare the job at ``root`` with the server's batches and its own results."""
    import batchframe as bf

    results = bf.read_results(root)
    with bf.BatchJob.open(root) as job:
        job_id = job.job_id
        status = job.status()
    remote = server.batches(job_id)
    per_key: Counter[tuple[str, str, str]] = Counter()
    ran_by_key: Counter[tuple[str, str, str]] = Counter()
    for b in remote:
        m = b.metadata or {}
        key = (m["batchframe_shard"], m["batchframe_attempt"], m.get("batchframe_submission", "0"))
        per_key[key] += 1
        done = b.request_counts.completed + b.request_counts.failed if b.request_counts else 0
        if done:
            ran_by_key[key] += 1
    duplicates = sum(n - 1 for n in per_key.values() if n > 1)
    duplicates_ran = sum(n - 1 for n in ran_by_key.values() if n > 1)
    ok_ids = results.ok["custom_id"].to_list()
    failed_ids = results.failed["custom_id"].to_list()
    every = set(ok_ids) | set(failed_ids)
    lost = n_rows - len(every & {f"r{i}" for i in range(n_rows)})
    duplicated = len(ok_ids) + len(failed_ids) - len(every)
    stray = sum(1 for p in Path(root).rglob("*") if p.name.startswith(".tmp"))
    db = Path(root) / "results.duckdb"
    duckdb_rows = None
    if db.exists():
        import duckdb

        with duckdb.connect(str(db), read_only=True) as con:
            duckdb_rows = int(con.sql("SELECT count(*) FROM rows").fetchall()[0][0])
    recorded = int(status["duplicate_batch_ids"].str.split(",").list.len().sum() or 0)
    return Audit(
        shard_attempts=len(per_key),
        batches=len(remote),
        max_per_attempt=max(per_key.values(), default=0),
        duplicates=duplicates,
        duplicates_ran=duplicates_ran,
        lost=lost,
        duplicated_rows=duplicated,
        ok=len(set(ok_ids)),
        failed=len(set(failed_ids)),
        stray_files=stray,
        duckdb_rows=duckdb_rows,
        recorded_duplicates=recorded,
    )


def load() -> str:
    """The machine's load average, to print with timing-sensitive figures."""
    import os

    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"
