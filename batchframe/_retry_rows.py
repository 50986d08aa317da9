"""Run failed rows again on demand: :meth:`BatchJob.retry` and ``batchframe retry``.

The engine retries retryable failures by itself while the attempt budget lasts (see
:mod:`batchframe._retry`). This module covers what is left once a job settled: rows
that ran out of attempts, rows of a cancelled job, rows that failed with a code worth
another try. The chosen rows of each shard are copied, byte for byte, from the shard's
first file into a new attempt of that shard (``shards/00003.a3.jsonl``), numbered after
the shard's last attempt, so every guarantee of the engine's own retries holds:

* A row ends with the *latest* attempt of its shard that holds it (the published files
  of an attempt leave out the rows a later attempt holds), so after the retry settles
  every row is still in exactly one of ``ok`` / ``failed``.
* Crash-safe and idempotent: the files are written first, then one manifest save
  records every new attempt together with the moved rows' counts. A crash before the
  save leaves only files that the next call writes again, identically; after it, the
  rows are held by the new attempts and a second call finds nothing to retry.
* Submitting goes through the engine (write-ahead intent, tagged batches, adopted after
  a crash), so no shard attempt is ever created twice.

Attempts are counted per shard: a retried row's new attempt counts in ``max_attempts``
(it is not retried automatically beyond it) unless ``reset_attempts=True``, which gives
it ``max_attempts`` tries again from there.
"""

from __future__ import annotations

import logging
import math
import posixpath
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import polars as pl

from batchframe._manifest import ShardAttempt
from batchframe._publish import publish
from batchframe._retry import child_path, write_child
from batchframe.exceptions import ColumnNotFoundError, InputError

if TYPE_CHECKING:
    from batchframe._job import BatchJob

__all__ = ["DEFAULT_WHERE", "attempt_base", "retry_rows", "tries_used"]

_log = logging.getLogger("batchframe")

#: The rows :meth:`BatchJob.retry` picks by default: retryable failures and cancelled rows.
DEFAULT_WHERE = pl.col("retryable") | (pl.col("stage") == "cancelled")
#: ``manifest.options`` key: shard -> the attempt from which tries are counted again.
_BASE_KEY = "attempt_base"

RETRY_SCHEMA = pl.Schema(
    {
        "shard": pl.Int64(),
        "attempt": pl.Int64(),
        "n_requests": pl.Int64(),
        "path": pl.String(),
    }
)


def attempt_base(options: dict[str, Any], shard: int) -> int:
    """The attempt of ``shard`` from which tries count again (0 unless reset by a retry)."""
    bases = options.get(_BASE_KEY) or {}
    return int(bases.get(str(shard), 0))


def tries_used(options: dict[str, Any], r: ShardAttempt) -> int:
    """Tries of the rows of attempt ``r`` that count in ``max_attempts``."""
    base = attempt_base(options, r.shard)
    return r.attempt + 1 - (base if r.attempt >= base else 0)


def _choose(job: BatchJob, where: pl.Expr) -> list[tuple[ShardAttempt, list[str]]]:
    """Failed rows matching ``where``, by the settled attempt that holds them.

    Shards with an attempt still running are left out (their rows are not final yet).
    """
    m = job._m
    running = {r.shard for r in m.records if not r.is_settled}
    by_key = {r.key: r for r in m.records}
    published = publish(job._storage, m, executor=job._executor, partial=True)
    chosen: list[tuple[ShardAttempt, list[str]]] = []
    skipped = 0
    for f in published.failed:
        r = by_key[posixpath.basename(f.rel).removesuffix(".parquet")]
        frame = f.read(job._storage)
        try:
            ids = frame.filter(where)["custom_id"].to_list()
        except pl.exceptions.ColumnNotFoundError as exc:
            msg = (
                f"retry(where=...) names a column that failed rows do not have: {exc}; "
                f"the columns are {', '.join(frame.columns)}"
            )
            raise ColumnNotFoundError(msg, column=None) from exc
        except pl.exceptions.PolarsError as exc:
            msg = f"retry(where=...) cannot be evaluated on the failed rows: {exc}"
            raise InputError(msg) from exc
        if not ids:
            continue
        if r.shard in running:
            skipped += len(ids)
            continue
        chosen.append((r, ids))
    if skipped:
        _log.warning(
            "%d matching row(s) are in shards still running; retry them once the job settled",
            skipped,
        )
    return chosen


def retry_rows(job: BatchJob, where: pl.Expr | None, *, reset_attempts: bool) -> pl.DataFrame:
    """Write the chosen failed rows as new shard attempts and record them (see module doc).

    Returns
    -------
    pl.DataFrame
        One row per new attempt: ``shard``, ``attempt``, ``n_requests``, ``path``.
    """
    m = job._m
    chosen = _choose(job, DEFAULT_WHERE if where is None else where)
    if not chosen:
        return pl.DataFrame(schema=RETRY_SCHEMA)
    by_shard: dict[int, list[tuple[ShardAttempt, list[str]]]] = defaultdict(list)
    for r, ids in chosen:
        by_shard[r.shard].append((r, ids))
    new: list[ShardAttempt] = []
    for shard, parts in sorted(by_shard.items()):
        attempts = [r for r in m.records if r.shard == shard]
        first = min(attempts, key=lambda r: r.attempt)
        last = max(attempts, key=lambda r: r.attempt)
        number = last.attempt + 1
        wanted = {i for _, part in parts for i in part}
        # Attempt 0 holds every row of the shard verbatim: copy the lines from there.
        written = write_child(job._storage, first.path, child_path(shard, number), wanted)
        if written.n_requests != len(wanted):  # pragma: no cover - a damaged shard file
            msg = (
                f"shard {shard}: {len(wanted)} row(s) chosen but {written.n_requests} found in "
                f"{first.path}; nothing was recorded"
            )
            raise InputError(msg)
        share = written.n_bytes / max(first.n_bytes, 1)
        new.append(
            ShardAttempt(
                shard=shard,
                attempt=number,
                parent=last.key,
                path=written.path,
                sha256=written.sha256,
                n_requests=written.n_requests,
                n_bytes=written.n_bytes,
                est_tokens=math.ceil(first.est_tokens * share),
                n_inputs=math.ceil(first.n_inputs * share),
                model=first.model,
            )
        )
    # One save records the new attempts, the rows they take over, and the options.
    for r, ids in chosen:
        r.n_final_failed = max(0, (r.n_final_failed or 0) - len(ids))
        r.n_retried = (r.n_retried or 0) + len(ids)
    m.records.extend(new)
    if reset_attempts:
        bases = dict(m.options.get(_BASE_KEY) or {})
        bases.update({str(r.shard): r.attempt for r in new})
        m.options[_BASE_KEY] = bases
    m.cancel_requested = False
    job._save()
    for r in new:
        _log.info("retrying %d row(s) of shard %d as attempt %d", r.n_requests, r.shard, r.attempt)
    try:  # the moved rows leave their old attempts' published files now, not at settle
        publish(job._storage, m, executor=job._executor, partial=True)
    except Exception as exc:  # readers publish what is stale themselves
        _log.warning("could not republish the retried attempts: %s", exc)
    return pl.DataFrame(
        [(r.shard, r.attempt, r.n_requests, r.path) for r in new],
        schema=RETRY_SCHEMA,
        orient="row",
    )
