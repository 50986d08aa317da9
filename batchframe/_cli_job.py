"""Jobs seen from the command line: read-only snapshots, summaries and the wait loop.

``status`` and ``collect`` read ``manifest.json`` and the downloaded files without
taking the job's lock and without any network call, so they work from another process
or machine (given the same root) while a ``wait`` elsewhere drives the job.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson
import polars as pl

from batchframe._manifest import (
    LOCK_FILE,
    REMOTE_LIVE,
    STATUSES,
    Manifest,
    ShardAttempt,
    row_counts,
)
from batchframe._progress import Progress
from batchframe._publish import READ_WINDOW, Published, ok_frame_schema, publish
from batchframe._report import STATUS_COLUMNS, format_seconds, job_facts, status_frame
from batchframe._schedule import Deadline, PollBackoff
from batchframe._storage import Storage
from batchframe.exceptions import JobNotSettledError

if TYPE_CHECKING:
    from batchframe._api import BatchAPI
    from batchframe._job import BatchJob

__all__ = [
    "STATUS_COLUMNS",
    "JobSnapshot",
    "progress_line",
    "read_job",
    "watch",
]

_ORDER = {s: i for i, s in enumerate(STATUSES)}

ProgressMode = Literal["bar", "lines", "none"]


def batch_counts(statuses: Iterable[str]) -> str:
    """``"in_progress=2 completed=4"``: shard attempts per status, in lifecycle order."""
    counts = Counter(statuses)
    return " ".join(f"{s}={n}" for s, n in sorted(counts.items(), key=lambda kv: _ORDER[kv[0]]))


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job's state as read from its root, with no lock and no network."""

    storage: Storage
    manifest: Manifest
    lock: Mapping[str, Any] | None
    #: When the numbers were last refreshed from the provider (``None``: never, here).
    polled_at: float | None = None
    #: Why the numbers were not polled (``--offline``, no client, an API error).
    not_polled: str | None = None

    def poll(self, api: BatchAPI) -> JobSnapshot:
        """The snapshot with every batch in flight refreshed from the provider.

        Read-only: the records are updated in memory and nothing is saved (the process
        driving the job, if any, saves its own view; ``batchframe wait`` downloads).
        An API error leaves the saved numbers, with the reason in ``not_polled``.
        """
        from batchframe.exceptions import APIError

        live = [r for r in self.records if r.batch_id is not None and r.status in REMOTE_LIVE]
        try:
            for r in live:
                assert r.batch_id is not None
                r.apply(api.retrieve_batch(r.batch_id))
        except (APIError, OSError) as exc:
            return replace(self, not_polled=f"polling failed ({exc})")
        return replace(self, polled_at=time.time(), not_polled=None)

    @property
    def records(self) -> list[ShardAttempt]:
        """Every shard attempt."""
        return self.manifest.records

    @property
    def is_settled(self) -> bool:
        """Whether every row is in a final state."""
        return all(r.is_settled for r in self.records)

    def status(self) -> pl.DataFrame:
        """The frame of ``BatchJob.status()``."""
        return status_frame(self.records)

    def summary(self) -> list[str]:
        """Lines describing the job: id, endpoint, rows, state, lock holder."""
        m = self.manifest
        shards = len({r.shard for r in self.records})
        created = datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        facts = job_facts(m, self.records, time.time())
        lines = [
            f"job {m.job_id} at {self.storage.root_url} (created {created} UTC)",
            f"{m.endpoint}: {m.n_requests:,} rows in {shards} shard(s), "
            f"{len(self.records)} shard attempt(s)",
            *facts.lines(),
        ]
        lines.append(self.freshness())
        dups = [d for r in self.records for d in r.duplicates]
        if dups:
            ran = sum(1 for d in dups if d.get("completed"))
            lines.append(
                f"{len(dups)} duplicate batch(es) found for shard attempts that had one "
                f"already ({ran} had run requests); kept the recorded batch of each, "
                "cancelled the rest where they had not run: see `--wide` (duplicate_batch_ids)"
            )
        if self.lock is not None:
            since = datetime.fromtimestamp(float(self.lock.get("started", 0)), UTC)
            lines.append(
                f"driven by process {self.lock.get('pid')} on host {self.lock.get('host')} "
                f"since {since:%Y-%m-%d %H:%M:%S} UTC"
            )
        return lines

    def freshness(self) -> str:
        """When the numbers shown were last refreshed, and from where."""
        if self.polled_at is not None:
            at = datetime.fromtimestamp(self.polled_at, UTC)
            return f"numbers polled from the provider at {at:%Y-%m-%d %H:%M:%S} UTC"
        saved = datetime.fromtimestamp(self.manifest.updated_at, UTC)
        ago = format_seconds(time.time() - self.manifest.updated_at)
        live = any(r.batch_id is not None and r.status in REMOTE_LIVE for r in self.records)
        if live:
            why = f"; not polled: {self.not_polled}" if self.not_polled else ""
        else:
            why = "; final" if self.is_settled else "; no batch in flight to poll"
        return f"numbers as the job saved them at {saved:%Y-%m-%d %H:%M:%S} UTC ({ago} ago){why}"

    def require_settled(self, *, partial: bool) -> None:
        """Raise ``JobNotSettledError`` (with the CLI's advice) unless settled or partial."""
        if not partial and not self.is_settled:
            open_ = [r for r in self.records if not r.is_settled]
            msg = (
                f"job {self.manifest.job_id} has {len(open_)} shard attempt(s) not settled "
                f"yet; run `batchframe wait {self.storage.root_url}` first, or pass --partial "
                "for the rows finished so far"
            )
            raise JobNotSettledError(msg)

    def counts(self, *, partial: bool) -> tuple[int, int]:
        """Ok and failed rows of the settled attempts (from the manifest, no reading)."""
        ok, failed, _ = row_counts(r for r in self.records if r.is_settled)
        return ok, failed

    def published(self, *, partial: bool) -> Published:
        """The published files of the job, publishing what is missing first."""
        self.require_settled(partial=partial)
        with ThreadPoolExecutor(max_workers=READ_WINDOW, thread_name_prefix="batchframe") as pool:
            return publish(self.storage, self.manifest, executor=pool, partial=partial)

    def failure_table(self, published: Published) -> pl.DataFrame:
        """Failed rows by stage, error code and retryable, one file at a time."""
        parts = [
            f.read(self.storage, ["stage", "error_code", "retryable", "error_message"])
            .group_by("stage", "error_code", "retryable", maintain_order=True)
            .agg(rows=pl.len(), example=pl.col("error_message").first())
            for f in published.failed
        ]
        if not parts:
            return pl.DataFrame()
        return (
            pl.concat(parts)
            .group_by("stage", "error_code", "retryable", maintain_order=True)
            .agg(pl.col("rows").sum(), pl.col("example").first())
            .sort("rows", descending=True, maintain_order=True)
        )

    def usage(self, published: Published) -> pl.DataFrame:
        """``BatchResults.usage()`` of the published files, summed one file at a time."""
        from batchframe._results import BatchResults
        from batchframe._schemas import FAILED_SCHEMA

        empty_ok = pl.DataFrame(schema=ok_frame_schema(self.manifest, None))
        empty_failed = pl.DataFrame(schema=FAILED_SCHEMA)
        endpoint = self.manifest.endpoint
        parts = [
            BatchResults(f.read(self.storage), empty_failed, endpoint).usage() for f in published.ok
        ]
        parts += [
            BatchResults(empty_ok, f.read(self.storage), endpoint).usage() for f in published.failed
        ]
        if not parts:
            return BatchResults(empty_ok, empty_failed, endpoint).usage()
        frame = pl.concat(parts)
        sums = [c for c in frame.columns if c not in ("model", "cost_usd")]
        return (
            frame.group_by("model")
            .agg(
                *(pl.col(c).sum() for c in sums),
                pl.when(pl.col("cost_usd").is_null().all())
                .then(None)
                .otherwise(pl.col("cost_usd").sum())
                .alias("cost_usd"),
            )
            .filter(pl.col("requests") > 0)
            .sort("model", nulls_last=True)
        )


def read_job(root: str, storage_options: Mapping[str, Any] | None = None) -> JobSnapshot:
    """Read the job at ``root`` (raises ``JobNotFoundError`` when there is none)."""
    storage = Storage(root, storage_options)
    manifest = Manifest.load(storage)
    lock: dict[str, Any] | None = None
    try:
        data = orjson.loads(storage.read_bytes(LOCK_FILE))
        lock = data if isinstance(data, dict) else None
    except (FileNotFoundError, orjson.JSONDecodeError):
        lock = None
    return JobSnapshot(storage, manifest, lock)


def progress_line(n_requests: int, ok: int, failed: int, statuses: str) -> str:
    """One plain progress line (without its time stamp), for output that is not a terminal."""
    return (
        f"{ok + failed:,}/{n_requests:,} rows done ({ok:,} ok, {failed:,} failed) "
        f"| batches: {statuses}"
    )


def watch(
    job: BatchJob,
    *,
    timeout: float | None,
    poll_interval: float | None,
    mode: ProgressMode,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Drive ``job`` like ``BatchJob.wait``, showing a bar, plain lines, or nothing.

    Each round polls the live batches, downloads finished files, schedules retries and
    submits what the queue admits. Lines are printed only when something changed.

    Raises
    ------
    JobTimeoutError
        ``timeout`` seconds passed before the job settled (its state is saved).
    """
    out = out or sys.stdout
    start = time.monotonic()
    deadline = Deadline(timeout)
    backoff = PollBackoff(interval=poll_interval)
    bar = Progress(job.n_requests, enabled=mode == "bar", description=job.job_id)
    last_line = ""
    last_statuses: list[str] = []
    try:
        while True:
            job.refresh()
            if not job.is_cancelled:
                job.submit()
            statuses = job.status()["status"].to_list()
            ok, failed, _ = job.counts()
            bar.update(ok=ok, failed=failed, statuses=statuses)
            if statuses != last_statuses:  # a batch was submitted or finished: poll soon
                backoff.reset()
                last_statuses = statuses
            if mode == "lines":
                line = progress_line(job.n_requests, ok, failed, batch_counts(statuses))
                if line != last_line:
                    out.write(f"[{time.monotonic() - start:7.1f}s] {line}\n")
                    out.flush()
                    last_line = line
            if job.is_settled:
                return
            msg = (
                f"job {job.job_id} is not settled after {timeout or 0:g} s; its state is "
                f"saved: run `batchframe wait {job.root}` to continue"
            )
            sleep(deadline.clamp(backoff.next(), msg))
    finally:
        bar.close()
