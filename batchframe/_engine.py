"""The machinery under ``BatchJob``: reconcile, submit, poll, download, settle.

Crash safety rests on three rules:

1. Every outside action (upload, create, poll, download) is followed by an atomic save
   of ``manifest.json`` before the next one starts. Saves coalesce only where no outside
   action lies between them (a create's result goes out with the next shard's intent;
   the downloads of a round go out with the settlements that follow them, which only
   parse and write files under the root), and a save that changes nothing but
   ``updated_at`` writes nothing (a poll that saw no change, on object stores a request
   saved). On object stores, where each save is a request, the uploads of a round
   (started together) are saved once, when all are in, and before any create; a crash
   before that save leaves files the next run adopts by name. Downloads are the one
   outside action whose record waits for a later step there: a crash before the
   settlement's save downloads the same files again, and nothing is created or paid for.
2. Before ``batches.create`` the record is saved as ``submitting`` (the intent), and the
   batch carries metadata tags (job id, shard, attempt, submission, shard sha256).
3. A record found ``submitting`` without a batch id is first looked up in
   ``batches.list`` by those tags and adopted if found; only then is it created again.

So a process killed at any moment, then resumed, neither creates a second batch for a
shard attempt nor loses one. Public methods live on :class:`batchframe.BatchJob`.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from typing import Any

import polars as pl

from batchframe._api import BatchAPI, RemoteBatch
from batchframe._cost import cost_gate
from batchframe._fence import Fence
from batchframe._files import (
    adopt_orphans,
    delete_settled,
    expires_after as upload_expiry,
    file_room,
    job_provider,
    stuck_at_file_cap,
    upload_name,
)
from batchframe._manifest import (
    REMOTE_LIVE,
    LockInfo,
    Manifest,
    ShardAttempt,
    batch_tags,
    find_tagged,
    row_counts,
)
from batchframe._publish import (
    cache_tag,
    finalize_outcome,
    map_bounded,
    publish,
    publish_outcome,
)
from batchframe._retry import (
    Outcome,
    child_path,
    is_token_limit_failure,
    record_outcome,
    shard_ids,
    write_child,
)
from batchframe._retry_rows import tries_used
from batchframe._schedule import (
    QueueBounds,
    RetryBackoff,
    admissible,
    in_flight_tokens,
    retry_after_hint,
)
from batchframe._storage import Storage, WriteConflict
from batchframe.exceptions import APIError, CostLimitError, JobLockedError

__all__ = ["JobEngine", "api_factory"]

_log = logging.getLogger("batchframe")

#: How long a fresh write-ahead intent is given to show up in ``batches.list`` before
#: the batch is created again (a create sent just before a crash may still land).
_INTENT_GRACE = 3.0
#: Tolerated clock difference when listing batches created since the job started.
_CLOCK_SKEW = 3600
#: Above this many live batches, one ``batches.list`` pass replaces per-batch polls.
_LIST_POLL_THRESHOLD = 20
#: Shard attempts parsed at once while settling (the parse itself uses every core):
#: one keeps the driver's peak memory at one shard's frames.
SETTLE_WINDOW = 1
#: Waiting shard files uploaded ahead of their turn in the queue.
_UPLOAD_AHEAD = 2
#: Seconds between scans of ``batches.list`` for duplicate batches (the backstop of the
#: lock's fence); a scan also runs when a job is resumed and when it settles.
_DUPLICATE_SCAN_INTERVAL = 60.0


def api_factory(client: Any) -> Callable[[], BatchAPI]:
    """Return a lazy :class:`BatchAPI` maker for ``client`` (``None``: from the environment)."""
    if isinstance(client, BatchAPI):
        return lambda: client
    holder: list[BatchAPI] = []

    def make() -> BatchAPI:
        if not holder:
            holder.append(BatchAPI(client))
        return holder[0]

    return make


class JobEngine:
    """State and internal steps of a job; see :class:`batchframe.BatchJob`."""

    def __init__(
        self,
        *,
        storage: Storage,
        manifest: Manifest,
        api: Callable[[], BatchAPI],
        lock: LockInfo | Fence,
        executor: Executor | None,
    ) -> None:
        self._storage = storage
        self._m = manifest
        self._api_factory = api
        self._fence = lock if isinstance(lock, Fence) else Fence(storage, lock)
        if self._fence.conditional:
            try:
                self._claim()
            except BaseException:
                self._fence.release()
                raise
        from batchframe._remote_api import job_executor

        self._executor, self._own_executor = job_executor(
            executor,
            lambda: ThreadPoolExecutor(
                max_workers=min(8, (os.cpu_count() or 2) * 2), thread_name_prefix="batchframe"
            ),
        )
        self._reconciled = False
        self._closed = False
        self._sleep: Callable[[float], None] = time.sleep
        #: The clock of retry delays (``not_before``); a test may compress it with _sleep.
        self._clock: Callable[[], float] = time.time
        self._last_scan: float | None = None
        self._settled_scan = False
        self._learned: dict[str | None, QueueBounds] = {
            (k or None): QueueBounds(v.get("lower"), v.get("upper"))
            for k, v in manifest.queue.items()
        }
        self._finalizer = weakref.finalize(self, self._fence.release)

    @property
    def _api(self) -> BatchAPI:
        return self._api_factory()

    def _save(self) -> None:
        """Save the manifest, first making sure this process still holds the lock.

        Where the storage honours conditional writes the save itself is the check: it
        is refused once another driver wrote the manifest (see :mod:`batchframe._fence`).
        """
        self._m.queue = {(k or ""): v.to_dict() for k, v in self._learned.items()}
        try:
            # The lock is checked when there is something to write: JobLockedError once
            # another driver took over.
            self._m.save(self._storage, before_write=self._fence.check)
        except WriteConflict as exc:
            raise self._fence.lost(exc) from exc

    def _claim(self) -> None:
        """Write the manifest with this driver's lock epoch, before any outside action.

        Conditional writes only (see :mod:`batchframe._fence`): from this write on, every
        manifest write of a driver this one took over from is refused. The write is
        conditioned on the version read under the lock; when a displaced driver wrote
        after that read, the manifest is read again (its intents are then reconciled
        as usual) and the claim retried.
        """
        for _ in range(5):
            self._m.lock_epoch = self._fence.epoch
            try:
                self._m.save(self._storage)
                return
            except WriteConflict as exc:
                self._fence.check(read=True)  # JobLockedError: displaced already
                _log.info("the manifest changed since it was read (%s); reading it again", exc)
                self._m = Manifest.load(self._storage)
        msg = (
            f"the manifest of the job at `{self._storage.root_url}` keeps changing while "
            "this process holds the lock; stop the other process writing it, then open the "
            "job again"
        )
        raise JobLockedError(msg)

    def _bounds(self, model: str | None) -> QueueBounds:
        return self._learned.setdefault(model, QueueBounds())

    def _map(self, fn: Callable[..., Any], items: list[Any]) -> list[tuple[Any, Future[Any]]]:
        return [(item, self._executor.submit(fn, item)) for item in items]

    # -- reconciliation -----------------------------------------------------------------
    def _list_job_batches(self) -> list[RemoteBatch]:
        return self._api.find_batches(
            {"batchframe_job": self._m.job_id}, created_after=int(self._m.created_at) - _CLOCK_SKEW
        )

    def _ensure_reconciled(self) -> None:
        intents = [r for r in self._m.records if r.status == "submitting" and r.batch_id is None]
        if self._reconciled and not intents:
            return
        ever = any(r.intent_at is not None for r in self._m.records)
        if not self._reconciled:
            self._adopt_orphan_files()
        if ever:
            self._reconcile(intents)
        self._reconciled = True

    def _reconcile(self, intents: list[ShardAttempt]) -> None:
        self._last_scan = time.monotonic()
        found = self._list_job_batches()
        unmatched = [r for r in intents if not find_tagged(found, r)]
        if unmatched:
            newest = max(r.intent_at or 0.0 for r in unmatched)
            wait = _INTENT_GRACE - (time.time() - newest)
            if wait > 0:
                _log.debug("waiting %.1f s for recent batch creations to become visible", wait)
                self._sleep(wait)
                found = self._list_job_batches()
        self._adopt(found)

    def _adopt(self, found: list[RemoteBatch]) -> None:
        for b in found:
            tags = batch_tags(b)
            if tags is None:
                continue
            r = self._m.record(tags[0], tags[1])
            if r is not None and self._known_duplicate(r, b):
                continue
            if r is None or b.id == r.batch_id or b.id in r.previous_batch_ids:
                if r is None:
                    _log.warning(
                        "batch %s is tagged for this job but for no known shard attempt", b.id
                    )
                continue
            same_lines = b.metadata.get("batchframe_sha256", r.sha256) == r.sha256
            if (
                r.batch_id is None
                and r.status in ("pending", "submitting", "uploaded")
                and tags[2] == r.submission
                and same_lines
            ):
                _log.info(
                    "adopting batch %s for shard attempt %s (created before a crash, or by "
                    "a driver this one took over from)",
                    b.id,
                    r.key,
                )
                if r.status == "pending":  # made by another driver, from its own upload
                    r.move("uploaded")
                    r.input_file_id = b.input_file_id
                if r.status == "uploaded":
                    r.move("submitting")
                r.batch_id = b.id
                r.submitted_at = r.submitted_at or time.time()
                r.apply(b)
                self._save()
                continue
            self._duplicate(r, b)

    def _known_duplicate(self, r: ShardAttempt, b: RemoteBatch) -> bool:
        """Refresh the entry of ``b`` if it is a known duplicate of ``r``; say whether it is."""
        for entry in r.duplicates:
            if entry["batch_id"] == b.id:
                if entry["status"] != b.status:
                    entry["status"] = b.status
                    entry["completed"] = b.request_counts.completed if b.request_counts else 0
                    self._save()
                return True
        return False

    def _duplicate(self, r: ShardAttempt, b: RemoteBatch) -> None:
        """A second batch for shard attempt ``r``: keep the recorded one, cancel this one."""
        action = "none (already finished)"
        status = b.status
        if not b.is_terminal:
            try:
                status = self._api.cancel_batch(b.id).status
                action = "cancelled"
            except APIError as exc:
                action = f"cancel failed: {exc}"
        completed = b.request_counts.completed if b.request_counts else 0
        _log.warning(
            "batch %s duplicates shard attempt %s (kept: %s; it was %s with %d request(s) "
            "completed); action: %s",
            b.id,
            r.key,
            r.batch_id,
            b.status,
            completed,
            action,
        )
        r.duplicates.append(
            {"batch_id": b.id, "status": status, "completed": completed, "action": action}
        )
        self._save()

    def _scan_duplicates(self) -> None:
        """Look for batches of this job that no record owns (the fence's backstop)."""
        self._last_scan = time.monotonic()
        self._adopt(self._list_job_batches())

    # -- submitting ---------------------------------------------------------------------
    def _tags_for(self, r: ShardAttempt) -> dict[str, str]:
        tags = dict(self._m.options.get("metadata") or {})
        tags.update(
            {
                "batchframe_job": self._m.job_id,
                "batchframe_shard": str(r.shard),
                "batchframe_attempt": str(r.attempt),
                "batchframe_submission": str(r.submission),
                "batchframe_sha256": r.sha256,
            }
        )
        return tags

    def _submit_admissible(self) -> int:
        if self._m.cancel_requested:
            return 0
        chosen = admissible(
            self._m.records,
            queue_token_limit=self._m.options.get("queue_token_limit"),
            learned=self._learned,
            max_in_flight=self._m.options.get("max_in_flight"),
            now=self._clock(),
        )
        chosen = self._within_caps(chosen)
        # Upload the next waiting files too, so that when the queue frees up only the
        # (fast) create call stands between a finished batch and the next one.
        ready = sum(1 for r in self._m.records if r.status == "uploaded" and r not in chosen)
        room = _UPLOAD_AHEAD - ready if chosen or self._any_in_flight() else 0
        ahead = [r for r in self._m.records if r.status == "pending" and r not in chosen]
        ahead = ahead[: max(0, room)]
        uploads = self._upload_room([r for r in chosen if r.input_file_id is None] + ahead)
        if not uploads and not chosen:
            return 0
        error: BaseException | None = None
        futures = {
            self._executor.submit(
                self._api.upload,
                self._storage,
                r.path,
                filename=upload_name(self._m.job_id, r.key),
                expires_after=upload_expiry(self._m),
                n_bytes=r.n_bytes,
            ): r
            for r in uploads
        }
        for fut in as_completed(futures):
            r = futures[fut]
            try:
                r.input_file_id = fut.result()
            except Exception as exc:
                r.last_error = str(exc)
                error = error or exc
                continue
            r.uploaded_at = time.time()
            r.move("uploaded")
            if not self._storage.direct_writes:
                self._save()
        # On object stores, where each save is a request, the uploads of a round are
        # saved once, when all of them are in: they were all started together, so no
        # upload starts after another's save either way, and a crash before this save
        # leaves files that the next run adopts by name (as for a crash during an
        # upload). The save still precedes the first intent, so the manifest's previous
        # version always holds the uploads before a create (see batchframe._manifest).
        self._save()
        n = 0
        for r in chosen:
            if r.input_file_id is None or error is not None:
                continue
            try:
                self._create(r)
            except Exception as exc:
                error = exc
                break
            n += 1
        # Records the last create; each earlier one was recorded by the next intent's save.
        self._save()
        if error is not None:
            raise error
        return n

    def _create(self, r: ShardAttempt) -> None:
        assert r.input_file_id is not None
        others = in_flight_tokens(x for x in self._m.records if x is not r).get(r.model, 0)
        r.inflight_tokens_at_submit = others + r.est_tokens
        if r.status != "submitting":
            r.move("submitting")
        r.intent_at = time.time()
        self._save()  # write-ahead: the intent is durable before the batch can exist
        try:
            b = self._api.create_batch(
                r.input_file_id,
                endpoint=job_provider(self._m).line_url(self._m.endpoint),
                metadata=self._tags_for(r),
                completion_window=str(self._m.options.get("completion_window", "24h")),
                created_after=int(r.intent_at) - _CLOCK_SKEW,
                output_expires_after=self._m.options.get("output_expires_after"),
            )
        except APIError as exc:
            r.last_error = str(exc)
            if not exc.retryable:
                # Refused outright: no batch exists.
                text = f"{exc.code} {exc}".lower()
                if "token_limit_exceeded" in text or "enqueued token limit" in text:
                    r.move("uploaded")
                    self._token_limit_hit(r, int(r.inflight_tokens_at_submit))
                    self._save()
                    return
                if exc.status_code == 404:
                    r.input_file_id = None  # the input file is gone (expired); upload again
                    r.move("pending")
                else:
                    r.move("uploaded")
            self._save()
            raise
        r.batch_id = b.id
        r.submitted_at = time.time()
        r.last_error = None
        r.apply(b)
        if not (r.status == "failed" and is_token_limit_failure(r.batch_errors)):
            self._bounds(r.model).accepted(r.inflight_tokens_at_submit)
        # Not saved here: the caller's very next step is a save (the next shard's intent,
        # or the save after the last create), with no outside action in between.
        _log.info(
            "created batch %s for shard attempt %s (%d requests, ~%d tokens)",
            b.id,
            r.key,
            r.n_requests,
            r.est_tokens,
        )

    def _token_limit_hit(self, r: ShardAttempt, total: int) -> None:
        self._bounds(r.model).rejected(total)
        others = in_flight_tokens(x for x in self._m.records if x is not r).get(r.model, 0)
        if others == 0:
            # Nothing of ours holds the queue: someone else does. Back off in time.
            tries = len(r.previous_batch_ids) + 1
            r.not_before = self._clock() + min(300.0, 2.0 * 2 ** min(tries, 8))
        else:
            r.not_before = None

    def _any_in_flight(self) -> bool:
        return any(r.in_flight for r in self._m.records)

    # -- polling, downloading, settling -------------------------------------------------
    def _poll(self) -> None:
        live = [r for r in self._m.records if r.batch_id is not None and r.status in REMOTE_LIVE]
        if not live:
            return
        remote: dict[str, RemoteBatch] = {}
        if len(live) > _LIST_POLL_THRESHOLD:
            listed = self._list_job_batches()
            remote = {b.id: b for b in listed}
            self._adopt(listed)  # duplicates show up in the same list, for free
            self._last_scan = time.monotonic()
        missing = [r for r in live if r.batch_id not in remote]
        for r, fut in self._map(lambda r: self._api.retrieve_batch(r.batch_id), missing):
            remote[r.batch_id] = fut.result()
        changed = False
        for r in live:
            assert r.batch_id is not None
            changed |= r.apply(remote[r.batch_id])
        if changed:
            self._save()

    def _download(self) -> None:
        tasks: list[tuple[ShardAttempt, str, str, str]] = []
        changed = False
        for r in self._m.records:
            if not r.is_terminal or r.is_settled or r.batch_id is None:
                continue
            for kind, file_id, done in (
                ("output", r.output_file_id, r.output_downloaded),
                ("error", r.error_file_id, r.error_downloaded),
            ):
                if done:
                    continue
                if file_id is None:
                    setattr(r, f"{kind}_downloaded", True)
                    changed = True
                else:
                    folder = "outputs" if kind == "output" else "errors"
                    tasks.append((r, kind, file_id, f"{folder}/{r.key}.jsonl"))
        if changed and not tasks:
            self._save()  # else the first download's save records it (it is derived anyway)
        futures = {
            self._executor.submit(self._api.download, file_id, self._storage, rel): (r, kind, rel)
            for r, kind, file_id, rel in tasks
        }
        error: BaseException | None = None
        for fut in as_completed(futures):
            r, kind, rel = futures[fut]
            try:
                n = fut.result()
            except Exception as exc:
                if not (isinstance(exc, APIError) and exc.status_code == 404):
                    r.last_error = str(exc)
                    error = error or exc
                    continue
                if not self._storage.exists(rel):
                    r.last_error = str(exc)
                    error = error or exc
                    continue
                # Deleted at the provider once settled, by a run this manifest does not
                # remember (recovered from its previous version): the copy is whole.
                _log.warning(
                    "the provider no longer has the %s file of %s; using the copy downloaded "
                    "before, %s",
                    kind,
                    r.key,
                    self._storage.url(rel),
                )
                n = self._storage.size(rel)
            setattr(r, f"{kind}_path", rel)
            setattr(r, f"{kind}_downloaded", True)
            _log.debug("downloaded %s file of %s (%d bytes) to %s", kind, r.batch_id, n, rel)
            if not self._storage.direct_writes:
                self._save()
        if error is not None:
            self._save()
            raise error
        # On object stores, where every save is a request, not saved here when all went
        # well: the settlements that follow at once (they only parse and write files
        # under the root) save them, one save per attempt, and `_settle` saves whatever
        # is left at its end (rule 1 in the module docstring). Elsewhere a save costs no
        # request, and each download is saved as it lands.

    def _ready(self, r: ShardAttempt) -> bool:
        if r.is_settled:
            return False
        if r.status == "cancelled" and r.batch_id is None:
            return True
        return r.is_terminal and r.output_downloaded and r.error_downloaded

    def _outcome(self, r: ShardAttempt) -> Outcome:
        return record_outcome(
            self._storage,
            r,
            endpoint=self._m.endpoint,
            json_schema=self._m.json_schema,
            embedding_dim=self._m.embedding_dim(r.model),
        )

    def _outcome_or_refetch(self, r: ShardAttempt) -> Outcome | None:
        """``r``'s rows; ``None`` when a downloaded file of it is gone (downloaded again next).

        An attempt is not settled yet, so the provider still has its files.
        """
        try:
            return self._outcome(r)
        except FileNotFoundError:
            gone = [
                kind
                for kind in ("output", "error")
                if getattr(r, f"{kind}_path") is not None
                and not self._storage.exists(getattr(r, f"{kind}_path"))
            ]
            if not gone:
                raise
            for kind in gone:
                _log.warning(
                    "the downloaded %s file %s of %s is gone; downloading it again",
                    kind,
                    self._storage.url(getattr(r, f"{kind}_path")),
                    r.key,
                )
                setattr(r, f"{kind}_path", None)
                setattr(r, f"{kind}_downloaded", False)
            return None

    def _settle(self) -> None:
        """Settle every attempt whose files are in: retries into a child, rows published.

        Attempts are parsed ``SETTLE_WINDOW`` at a time (each output file in pieces of
        ``PARSE_CHUNK_BYTES``), so memory tracks one shard however many batches finished
        since the last poll; the ok rows of an output file bigger than
        ``_spill.WHOLE_BYTES`` are spilled to local Parquet, a window at a time, so it
        does not grow with one shard's answers either.
        """
        ready = [r for r in self._m.records if self._ready(r)]
        plain = []
        for r in ready:
            if r.status == "failed" and is_token_limit_failure(r.batch_errors):
                self._requeue(r)
            else:
                plain.append(r)
        tags: dict[str | None, str] = {}
        steps = map_bounded(self._executor, self._outcome_or_refetch, plain, window=SETTLE_WINDOW)
        for r, outcome in steps:
            if outcome is None:  # a downloaded file was deleted: fetched again next round
                self._save()
                continue
            child = self._m.record(r.shard, r.attempt + 1)
            retry: set[str] = set()
            plan: tuple[int, float] | None = None
            if child is None and not self._m.cancel_requested:
                retryable = outcome.failed.filter(pl.col("retryable"))
                plan = self._retry_plan(r, retryable)
                if plan is not None:
                    retry = set(retryable["custom_id"].to_list())
            if child is not None:
                retried: set[str] = set(shard_ids(self._storage, child.path))
            elif retry:
                assert plan is not None
                retried = retry
                self._write_child(r, retry, step=plan[0], delay=plan[1])
            else:
                retried = set()
            final = finalize_outcome(outcome, retried, endpoint=self._m.endpoint)
            if self._learn_embedding_dim(r, final):
                tags.pop(r.model, None)
            r.n_ok = final.ok_ids().len() if final.n_ok else 0
            r.n_retried = len(retried)
            r.n_final_failed = final.failed.height
            r.settled_at = time.time()
            try:
                if r.model not in tags:
                    tags[r.model] = cache_tag(self._m, r.model)
                # Published before the settlement is saved: a crash in between settles
                # the attempt again and rewrites the same rows.
                publish_outcome(self._storage, self._m, r, final, tag=tags[r.model], settling=True)
            except Exception as exc:  # readers publish what is missing from the files
                _log.warning("could not publish the results of %s: %s", r.key, exc)
            final.release()  # a big file's spilled rows: published (or left to readers)
            del outcome, final
            self._save()
        if plain and all(r.is_settled for r in self._m.records):
            # The job just settled: check every published file against the manifest once
            # (rewriting any made before a retry was added, or lost), so that the folders
            # hold exactly the job's rows when wait() returns.
            try:
                publish(self._storage, self._m, executor=self._executor, partial=False)
            except Exception as exc:  # readers check again
                _log.warning("could not check the published results: %s", exc)
        self._save()  # downloads not followed by a settlement (nothing if all were)
        self._delete_settled_files()

    def _backoff(self) -> RetryBackoff:
        return RetryBackoff.from_option(self._m.options.get("retry_backoff"))

    def _retry_plan(self, r: ShardAttempt, retryable: pl.DataFrame) -> tuple[int, float] | None:
        """``(backoff step, delay)`` of a retry of ``r``'s retryable rows; ``None``: no retry.

        Rows are retried while the row has had fewer than ``max_attempts`` tries. When
        most rows of the attempt failed (an outage, see :class:`RetryBackoff`), the retry
        waits an exponential backoff, and with the default ``max_attempts`` it is made
        even past three tries, until the backoff budget is spent; so is a retry of an
        attempt that was itself an outage retry.
        """
        if not retryable.height:
            return None
        policy = self._backoff()
        option = self._m.options.get("max_attempts")
        max_attempts = int(option) if option is not None else 3
        # A retry made during an outage stays in it while any of its rows still fail
        # retryably: an outage that ends halfway through an attempt leaves fewer than
        # half of its rows failed, and those rows have used their tries on the outage.
        outage = (
            retryable.height >= policy.outage_share * max(r.n_requests, 1) or r.backoff_step > 0
        )
        step = r.backoff_step + 1 if outage else 0
        hint = retry_after_hint(retryable["error_message"].to_list())
        delay = policy.delay(step, retry_after=hint)
        if tries_used(self._m.options, r) < max_attempts:
            return step, delay
        if option is None and outage and r.backoff_spent + delay <= policy.budget:
            return step, delay
        return None

    def _write_child(
        self, r: ShardAttempt, retry: set[str], *, step: int = 0, delay: float = 0.0
    ) -> None:
        """Write the retryable rows of ``r`` as attempt ``r.attempt + 1`` and record it.

        The child is not submitted before ``delay`` seconds from now (``not_before``, in
        the manifest: a restarted driver waits out the same backoff).
        """
        written = write_child(self._storage, r.path, child_path(r.shard, r.attempt + 1), retry)
        share = written.n_bytes / max(r.n_bytes, 1)
        child = ShardAttempt(
            shard=r.shard,
            attempt=r.attempt + 1,
            parent=r.key,
            path=written.path,
            sha256=written.sha256,
            n_requests=written.n_requests,
            n_bytes=written.n_bytes,
            est_tokens=math.ceil(r.est_tokens * share),
            n_inputs=math.ceil(r.n_inputs * share),
            model=r.model,
            backoff_step=step,
            backoff_spent=r.backoff_spent + delay,
            not_before=self._clock() + delay if delay > 0 else None,
        )
        self._m.records.append(child)
        if delay > 0:
            _log.info(
                "retrying %d row(s) of %s as attempt %d in %.1f s (backoff: %d outage-like "
                "failure(s) in a row, %.0f s of backoff spent)",
                len(retry),
                r.key,
                r.attempt + 1,
                delay,
                step,
                child.backoff_spent,
            )
        else:
            _log.info("retrying %d row(s) of %s as attempt %d", len(retry), r.key, r.attempt + 1)

    def _learn_embedding_dim(self, r: ShardAttempt, outcome: Outcome) -> bool:
        """Remember the first vector width seen, so every later part is typed alike."""
        dtype = outcome.ok_schema.get("embedding")
        if dtype is None or not outcome.n_ok:
            return False
        if isinstance(dtype, pl.Array) and self._m.embedding_dim(r.model) is None:
            self._m.embedding_dims[r.model or ""] = dtype.size
            return True
        return False

    def _requeue(self, r: ShardAttempt) -> None:
        """Requeue a token_limit_exceeded batch: same input file, next submission, later."""
        assert r.batch_id is not None
        _log.info(
            "batch %s of %s was refused by the enqueued-token limit; it will be resubmitted "
            "from the same file when the queue has room",
            r.batch_id,
            r.key,
        )
        r.previous_batch_ids.append(r.batch_id)
        r.batch_id = None
        r.submission += 1
        r.output_file_id = r.error_file_id = None
        r.output_downloaded = r.error_downloaded = False
        r.terminal_at = None
        r.batch_ended_at = None
        r.batch_timestamps = {}
        r.total = r.completed = r.failed = 0
        r.last_error = "; ".join(str(e.get("message") or e.get("code")) for e in r.batch_errors)
        r.batch_errors = []
        r.move("uploaded")
        if self._m.cancel_requested:
            r.move("cancelled")
        else:
            self._token_limit_hit(r, int(r.inflight_tokens_at_submit or r.est_tokens))
        self._save()

    def _counts(self) -> tuple[int, int]:
        counts = row_counts(self._m.records)
        return counts.ok, counts.failed

    def _next_due(self) -> float | None:
        """Seconds until the earliest waiting retry may be submitted, if one waits."""
        due = [
            r.not_before
            for r in self._m.records
            if r.not_before is not None and r.status in ("pending", "uploaded")
        ]
        return max(0.0, min(due) - self._clock()) if due else None

    def _maybe_scan(self, *, settled: bool = False) -> None:
        """Scan for duplicate batches now and then (before submitting), and at the end."""
        if not any(r.intent_at is not None for r in self._m.records):
            return
        if settled:
            if not self._settled_scan and all(r.is_settled for r in self._m.records):
                self._scan_duplicates()
                self._settled_scan = True
            return
        if (
            self._last_scan is None
            or time.monotonic() - self._last_scan >= _DUPLICATE_SCAN_INTERVAL
        ):
            self._scan_duplicates()

    def _step(self) -> bool:
        """One round of :meth:`BatchJob.wait`; return whether batches were submitted."""
        self._ensure_reconciled()
        self._maybe_scan()
        self._poll()
        # Fill the room finished batches left before downloading their files.
        submitted = self._submit_admissible()
        self._download()
        self._settle()
        submitted = bool(self._submit_admissible() or submitted)
        self._maybe_scan(settled=True)
        self._check_paused()
        return submitted

    # -- provider files and cost (batchframe._files, batchframe._cost) ---------------------
    def _adopt_orphan_files(self) -> None:
        """Adopt or delete uploads a crash left unrecorded (once per process)."""
        if any(r.status == "pending" for r in self._m.records):
            adopt_orphans(self._api, self._m, self._save)

    def _delete_settled_files(self) -> None:
        """Delete provider files of settled attempts; once settled, sweep the job's strays."""
        delete_settled(self._api, self._m)
        if not all(r.is_settled for r in self._m.records):
            self._m.options.pop("swept", None)  # rows retried after settling: sweep again
        elif not self._m.options.get("swept"):
            adopt_orphans(self._api, self._m, self._save)
            self._m.options["swept"] = True
            self._save()

    def _upload_room(self, uploads: list[ShardAttempt]) -> list[ShardAttempt]:
        """The uploads the provider's resource file cap admits now."""
        room = file_room(self._m)
        if room is None:
            return uploads
        if room == 0 and uploads and not self._any_in_flight():
            stuck_at_file_cap(self._m)
        return uploads[:room]

    def _within_caps(self, chosen: list[ShardAttempt]) -> list[ShardAttempt]:
        """The shard attempts that ``max_cost`` lets the job submit now."""
        self._paused: CostLimitError | None = None
        try:
            return cost_gate(self._m, chosen, in_flight=self._any_in_flight(), save=self._save)
        except CostLimitError as exc:
            self._paused = exc  # raised once this round's files are in (_check_paused)
            return []

    def _check_paused(self) -> None:
        """Raise the ``max_cost`` pause found while submitting, if nothing is in flight."""
        paused = getattr(self, "_paused", None)
        self._paused = None
        if paused is not None and not self._any_in_flight():
            raise paused
