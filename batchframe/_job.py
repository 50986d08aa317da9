"""``BatchJob``: submit one batch per shard, drive every row to a final state, resume.

The steps themselves (reconcile, submit, poll, download, settle) and the crash-safety
rules they follow are in :mod:`batchframe._engine`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import polars as pl

from batchframe._config import BatchLimits
from batchframe._engine import JobEngine, api_factory
from batchframe._fence import Fence
from batchframe._files import rewrite_line_urls
from batchframe._manifest import (
    REMOTE_LIVE,
    Manifest,
    RowCounts,
    acquire_lock,
    row_counts,
)
from batchframe._progress import Progress, progress_enabled
from batchframe._providers import (
    DEFAULT_EXPIRES_AFTER,
    Provider,
    check_same_provider,
    job_setup,
    set_max_cost,
    with_cost,
)
from batchframe._publish import clean_temps, mirror_dir
from batchframe._read import COLLECT_MAX_BYTES, collect_results, write_results_duckdb
from batchframe._report import job_html, status_frame
from batchframe._schedule import Deadline, PollBackoff, RetryBackoff, check_options
from batchframe._storage import Storage
from batchframe._timeline import Timeline
from batchframe.exceptions import JobExistsError

if TYPE_CHECKING:
    import duckdb
    import openai

    from batchframe._api import BatchAPI
    from batchframe._requests import Requests
    from batchframe._timeline import Timeline
from batchframe._results import BatchResults

__all__ = ["BatchJob"]

_log = logging.getLogger("batchframe")


class BatchJob(JobEngine):
    """A set of batches made from one :class:`Requests`, driven to completion.

    Build one with :meth:`create` or resume one with :meth:`open`; do not call the
    constructor. The job holds the lock of its root until :meth:`close` (or the end of
    a ``with`` block, or interpreter exit).

    Examples
    --------
    >>> import polars as pl
    >>> import batchframe as bf
    >>> df = pl.DataFrame({"id": [1, 2], "text": ["good", "bad"]})
    >>> req = bf.build_requests(
    ...     df,
    ...     endpoint="/v1/chat/completions",
    ...     body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    ...     custom_id="id",
    ... )
    >>> with bf.LocalBatchServer() as server:
    ...     with bf.BatchJob.create(req, "memory://doc-job", client=server.client()) as job:
    ...         job.wait(poll_interval=0.05)
    ...         results = job.collect()
    >>> results.ok["custom_id"].sort().to_list()
    ['1', '2']
    >>> job.status()["status"].to_list()
    ['completed']
    """

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        requests: Requests,
        root: str | os.PathLike[str],
        *,
        limits: BatchLimits | None = None,
        client: openai.OpenAI | BatchAPI | None = None,
        storage_options: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        queue_token_limit: int | Mapping[str, int] | None = None,
        max_in_flight: int | None = None,
        max_attempts: int | None = None,
        retry_backoff: RetryBackoff | None = None,
        executor: Executor | None = None,
        break_lock: bool = False,
        provider: str | Provider | None = None,
        completion_window: str = "24h",
        expires_after: int | None = DEFAULT_EXPIRES_AFTER,
        output_expires_after: int | None = None,
        keep_files: bool | str | Sequence[str] = False,
        max_cost: float | None = None,
        prices: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ) -> BatchJob:
        """Write the shards of ``requests`` under ``root`` and start a job there.

        Nothing is uploaded yet: call :meth:`submit` / :meth:`wait`.

        Parameters
        ----------
        requests
            From :func:`build_requests`.
        root
            Directory or fsspec URL of the job (``"jobs/x"``, ``"s3://bucket/jobs/x"``).
            It must not hold a job already (use :meth:`open` or :func:`run` to resume).
        limits
            Shard limits (default :class:`BatchLimits`, the API's own).
        client
            An ``openai.OpenAI`` client; ``None`` builds one from the environment when
            first needed. The client (and its API key) is never stored. batchframe
            retries 429s, 5xx and dropped connections itself, with backoff (the
            client's own ``max_retries`` is not used, so that ``batches.create`` is
            never re-sent blindly); a ``batchframe._api.BatchAPI`` may be passed to
            tune that policy.
        storage_options
            fsspec options for ``root`` (credentials, endpoint URL, ...).
        metadata
            Extra string tags for every batch (at most 11 pairs).
        queue_token_limit
            The organisation's enqueued-token limit per model (an int for every model,
            or ``{"gpt-4o-mini": 2_000_000, ...}``). Shards wait while the estimated
            tokens of in-flight batches would exceed it. ``None``: learn it from
            ``token_limit_exceeded`` failures.
        max_in_flight
            Most batches queued or running at once (``None``: no cap).
        max_attempts
            Tries per row: retryable failures are resubmitted in child shards until a
            row has been tried this many times. ``None`` (the default): 3 tries, and
            more during an outage until ``retry_backoff``'s budget is spent.
        retry_backoff
            When failed rows are retried: at once for isolated failures, after an
            exponential backoff with jitter during an outage (see
            :class:`RetryBackoff`; default ``RetryBackoff()``).
        executor
            Runs per-shard work (writes, uploads, downloads, parsing). Default: a small
            thread pool owned by the job. An executor that runs tasks in other
            processes (Dask's ``client.get_executor(pure=False)``, a process pool) gets
            the shard writes, uploads and downloads; the API key does not travel with
            them (each worker uses its own ``OPENAI_API_KEY``, against the client's base
            URL), and the job's other steps stay on its own threads.
        break_lock
            Take over the root's lock whoever holds it (see :meth:`open`).
        provider
            ``"openai"`` (default), ``"azure"``, ``"azure-legacy"``, ``"groq"`` or a
            :class:`Provider`: default ``limits``, allowed windows, line URLs, file
            caps and prices (README "Providers"). Stored in the manifest.
        completion_window
            ``"24h"``; Groq also takes up to ``"7d"``. Checked against the provider
            before anything is written.
        expires_after
            Seconds after which the provider deletes an uploaded input file by itself
            (default 30 days; ``None``: no expiry).
        output_expires_after
            Seconds after which the provider deletes a batch's output and error files
            (``None``: the provider's default).
        keep_files
            Files to keep on the provider once a shard attempt's results are stored
            under the root: ``False`` (default) deletes input, output and error files
            then; ``True`` keeps all; or some of ``"input"``, ``"output"``, ``"error"``.
        max_cost
            USD cap: a job whose worst-case estimate (inputs plus every request's
            ``max_tokens``) exceeds it is refused before anything is written, and no
            batch is created once the cost so far plus its estimate would pass it
            (the job pauses with :class:`CostLimitError`; raise the cap with
            :meth:`configure`).
        prices
            Price overrides, ``{model: {"input", "cached_input", "output"}}`` in USD per
            1M tokens, or a JSON file of that shape (see :func:`price_table`).

        Raises
        ------
        JobExistsError
            A job already lives at ``root``.
        JobLockedError
            Another live process is creating a job at ``root`` right now.
        ProviderError
            The provider does not take ``completion_window``, an expiry, or the endpoint.
        CostLimitError
            The estimate exceeds ``max_cost``.
        """
        check_options(
            metadata, queue_token_limit, max_in_flight, 1 if max_attempts is None else max_attempts
        )
        prof, limits, provider_options = job_setup(
            requests,
            provider=provider,
            limits=limits,
            completion_window=completion_window,
            expires_after=expires_after,
            output_expires_after=output_expires_after,
            keep_files=keep_files,
            max_cost=max_cost,
            prices=prices,
        )
        storage = Storage(os.fspath(root), storage_options)
        if Manifest.exists(storage):
            msg = (
                f"a job already exists at `{storage.root_url}`; resume it with "
                "`BatchJob.open(root)` (or `bf.run(...)`), or choose another root"
            )
            raise JobExistsError(msg)
        lock = Fence(storage, acquire_lock(storage, break_lock=break_lock))
        try:
            if Manifest.exists(storage):
                msg = f"a job was created at `{storage.root_url}` meanwhile; open it instead"
                raise JobExistsError(msg)
            written, facts = requests._write(
                storage, limits, storage_options, executor, fingerprint=True
            )
            written = rewrite_line_urls(storage, written, prof, requests.endpoint)
            manifest = Manifest.start(
                requests,
                written,
                facts,
                limits=limits,
                options={
                    "max_attempts": max_attempts,
                    "queue_token_limit": dict(queue_token_limit)
                    if isinstance(queue_token_limit, Mapping)
                    else queue_token_limit,
                    "max_in_flight": max_in_flight,
                    "retry_backoff": (retry_backoff or RetryBackoff()).to_dict(),
                    "metadata": dict(metadata or {}),
                    "custom_id_column": requests.custom_id_column,
                    **provider_options,
                },
            )
            lock.save_new(manifest)
        except BaseException:
            lock.release()
            raise
        _log.info(
            "created job %s at %s: %d requests in %d shards",
            manifest.job_id,
            storage.root_url,
            manifest.n_requests,
            len(manifest.records),
        )
        job = cls(
            storage=storage,
            manifest=manifest,
            api=api_factory(client),
            lock=lock,
            executor=executor,
        )
        job._reconciled = True  # nothing can exist remotely for a job that was just made
        return job

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        client: openai.OpenAI | BatchAPI | None = None,
        storage_options: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        break_lock: bool = False,
        provider: str | Provider | None = None,
    ) -> BatchJob:
        """Resume the job at ``root`` (another process, another day).

        Batches the job created but had not recorded (a crash between create and save)
        are adopted on the first :meth:`submit`, :meth:`refresh` or :meth:`wait`.

        Parameters
        ----------
        root
            The job's directory or fsspec URL.
        client
            An ``openai.OpenAI`` client; ``None`` builds one from the environment when
            first needed (:meth:`collect` and :meth:`status` need none).
        storage_options
            fsspec options for ``root``.
        executor
            Runs per-shard work; default a small thread pool.
        break_lock
            Take over the root's lock whoever holds it. The lock (``lock.json``:
            host, pid, process start time) is held from ``create``/``open`` until
            :meth:`close`. Without ``break_lock`` it is taken over only when that is
            safe: from this same process (an earlier job object, e.g. a re-run
            notebook cell), silently; from a process on this host that is gone (a
            crash or a kill: its pid is dead or now another process's), with a
            warning on the ``batchframe`` logger; from a holder that cannot be checked
            from here (another host, another container, or before a reboot) once its
            heartbeat is older than ``batchframe._manifest.LOCK_TTL`` (120 s), also with
            a warning. Other holders raise :class:`JobLockedError` naming them; pass
            ``break_lock=True`` once you are sure they no longer drive the job. A
            holder taken over stops with :class:`JobLockedError` before its next batch
            creation or manifest save (the lock's epoch is a fencing token).
        provider
            When given, the provider the caller expects: a job created for another
            one is refused with :class:`ProviderError` (its files and batches live there).

        Raises
        ------
        JobNotFoundError
            No job at ``root``.
        JobLockedError
            Another live process on this host, or a process that cannot be checked
            from here, holds the job's lock and ``break_lock`` is false.
        """
        storage = Storage(os.fspath(root), storage_options)
        manifest = Manifest.load(storage, quiet=True)  # said again under the lock
        check_same_provider(manifest, provider, storage.root_url)
        lock = Fence(storage, acquire_lock(storage, break_lock=break_lock))
        try:
            manifest = Manifest.load(storage)  # re-read under the lock
        except BaseException:
            lock.release()
            raise
        clean_temps(storage, mirror_dir(manifest.job_id))  # left by a crash
        return cls(
            storage=storage,
            manifest=manifest,
            api=api_factory(client),
            lock=lock,
            executor=executor,
        )

    # -- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        """Release the root's lock and the job's own thread pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> BatchJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public properties --------------------------------------------------------------
    @property
    def root(self) -> str:
        """The job root URL."""
        return self._storage.root_url

    @property
    def job_id(self) -> str:
        """Random id of the job, tagged on every batch as ``batchframe_job``."""
        return self._m.job_id

    @property
    def endpoint(self) -> str:
        """The endpoint of every request."""
        return self._m.endpoint

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the requests the job was made from (see ``Requests.fingerprint``)."""
        return self._m.fingerprint

    @property
    def n_requests(self) -> int:
        """Number of input rows."""
        return self._m.n_requests

    @property
    def is_settled(self) -> bool:
        """Whether every row is in a final state (results can be collected)."""
        return all(r.is_settled for r in self._m.records)

    @property
    def is_cancelled(self) -> bool:
        """Whether :meth:`cancel` was called on this job."""
        return self._m.cancel_requested

    @property
    def token_limit_failures(self) -> int:
        """Batches the API refused with ``token_limit_exceeded`` (resubmitted later)."""
        return sum(len(r.previous_batch_ids) for r in self._m.records)

    def __repr__(self) -> str:
        return (
            f"<BatchJob {self._m.job_id} at {self.root!r}: {self._m.n_requests:,} requests, "
            f"{len(self._m.records)} shard attempts, {'settled' if self.is_settled else 'running'}>"
        )

    def configure(
        self,
        *,
        queue_token_limit: int | Mapping[str, int] | None = None,
        max_in_flight: int | None = None,
        max_attempts: int | None = None,
        max_cost: float | None = None,
        retry_backoff: RetryBackoff | None = None,
    ) -> None:
        """Change scheduling options of the job; ``None`` keeps the current value.

        Parameters
        ----------
        queue_token_limit, max_in_flight, max_attempts, retry_backoff
            As in :meth:`create`.
        max_cost
            A new USD cap (``math.inf`` lifts it); a job paused by the old one goes on
            at the next :meth:`submit` / :meth:`wait`.
        """
        set_max_cost(self._m, max_cost)
        check_options(
            None, queue_token_limit, max_in_flight, 1 if max_attempts is None else max_attempts
        )
        options = self._m.options
        if queue_token_limit is not None:
            options["queue_token_limit"] = (
                dict(queue_token_limit)
                if isinstance(queue_token_limit, Mapping)
                else queue_token_limit
            )
        if max_in_flight is not None:
            options["max_in_flight"] = max_in_flight
        if max_attempts is not None:
            options["max_attempts"] = max_attempts
        if retry_backoff is not None:
            options["retry_backoff"] = retry_backoff.to_dict()
        self._save()

    def submit(self) -> None:
        """Upload and create batches for every shard the queue admits now.

        Safe to call again at any time: shards already submitted are skipped, and a
        batch created before a crash is adopted, never created twice. Shards held
        back by ``queue_token_limit`` or ``max_in_flight`` are submitted by later
        calls (:meth:`wait` does this for you).

        Raises
        ------
        APIError
            The API kept failing; the state is saved, call again later.
        """
        self._ensure_reconciled()
        if self._m.cancel_requested:
            _log.warning("job %s was cancelled; nothing is submitted", self._m.job_id)
            return
        self._submit_admissible()
        self._check_paused()

    def refresh(self) -> None:
        """Poll once: update every live batch, download finished files, schedule retries.

        Does not wait and does not submit new batches (see :meth:`submit`, :meth:`wait`).
        """
        self._ensure_reconciled()
        self._poll()
        self._download()
        self._settle()

    # -- waiting, cancelling ------------------------------------------------------------
    def wait(
        self,
        *,
        poll_interval: float | None = None,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> None:
        """Poll, download, retry and submit until every row is settled.

        Parameters
        ----------
        poll_interval
            Seconds between polls. ``None``: start at 2 s and back off to 60 s.
        timeout
            Give up after this many seconds with :class:`JobTimeoutError` (a
            ``TimeoutError``; the state is saved: call :meth:`wait` again to continue).
        progress
            Show a progress bar (rows done/failed, batches by status, ETA). ``None``:
            only in a terminal or notebook.

        Raises
        ------
        JobTimeoutError
            ``timeout`` passed before the job settled.
        APIError
            The API kept failing; the state is saved, call again later.
        JobLockedError
            Another process took the job over (``break_lock=True``, a deleted lock
            file, a heartbeat older than the TTL); this one created and saved nothing
            after noticing it.
        """
        deadline = Deadline(timeout)
        backoff = PollBackoff(interval=poll_interval)
        bar = Progress(
            self._m.n_requests, enabled=progress_enabled(progress), description=self._m.job_id
        )
        try:
            while True:
                if self._step():
                    backoff.reset()
                ok, failed = self._counts()
                bar.update(ok=ok, failed=failed, statuses=[r.status for r in self._m.records])
                if self.is_settled:
                    return
                msg = (
                    f"job {self._m.job_id} is not settled after {timeout} s; its state "
                    "is saved: call `wait()` again to continue"
                )
                delay = backoff.next()
                due = self._next_due()  # a retry waiting out its backoff
                if due is not None:
                    delay = min(delay, max(due, 0.01))
                self._sleep(deadline.clamp(delay, msg))
        finally:
            bar.close()

    def cancel(
        self, *, wait: bool = True, poll_interval: float | None = None, timeout: float | None = None
    ) -> None:
        """Cancel every batch in flight and submit nothing more.

        Rows that already finished are kept; the rest end in ``failed`` with stage
        ``"cancelled"``. Cancelling takes the API up to about 10 minutes.

        Parameters
        ----------
        wait
            Wait for the cancelled batches to settle and download their partial results.
        poll_interval, timeout
            As in :meth:`wait`.

        Raises
        ------
        JobTimeoutError
            ``timeout`` passed before the cancelled batches settled (they stay
            cancelled; call :meth:`wait` to collect their partial results).
        """
        self._m.cancel_requested = True
        self._save()
        self._ensure_reconciled()
        for r in self._m.records:
            if r.status == "submitting" and r.batch_id is None:
                r.move("uploaded")
            if r.status in ("pending", "uploaded"):
                r.move("cancelled")
        self._save()
        for r in self._m.records:
            if r.batch_id is not None and r.status in REMOTE_LIVE:
                r.apply(self._api.cancel_batch(r.batch_id))
                self._save()
                _log.info("cancelling batch %s (%s)", r.batch_id, r.key)
        if wait:
            self.wait(poll_interval=poll_interval, timeout=timeout, progress=False)

    def retry(
        self,
        where: pl.Expr | None = None,
        *,
        reset_attempts: bool = False,
        submit: bool = True,
    ) -> pl.DataFrame:
        """Run failed rows again, as new attempts of their shards; then :meth:`wait`.

        Chosen rows leave ``failed`` (for now) and are resubmitted with every guarantee
        of the job's own retries: crash-safe, never submitted twice, each row in exactly
        one of ``ok`` / ``failed`` once settled. Calling it again before the retried
        rows finish finds nothing new to retry. A cancelled job is resumed for them.

        Parameters
        ----------
        where
            A Polars expression over the columns of ``results.failed`` (``stage``,
            ``error_code``, ``status_code``, ``retryable``, ``attempts``, ...) choosing
            the rows. Default: every retryable or cancelled row,
            ``pl.col("retryable") | (pl.col("stage") == "cancelled")``. Rows of shards
            still running are left for a later call.
        reset_attempts
            Give the retried rows ``max_attempts`` tries again (automatic retries of
            retryable failures included). By default the new attempt counts in
            ``max_attempts``: a row that used its tries runs once more, no further.
        submit
            Submit what the queue admits now (as :meth:`submit`); ``False`` only
            writes and records the new attempts (:meth:`wait` submits them).

        Returns
        -------
        pl.DataFrame
            One row per new shard attempt: ``shard``, ``attempt``, ``n_requests``,
            ``path``; empty when no failed row matched.

        Raises
        ------
        ColumnNotFoundError
            ``where`` names a column failed rows do not have.

        Examples
        --------
        >>> import polars as pl
        >>> import batchframe as bf
        >>> req = bf.build_requests(
        ...     pl.DataFrame({"id": [1, 2, 3]}),
        ...     endpoint="/v1/chat/completions",
        ...     body=bf.chat_body("gpt-4o-mini", user="hello"),
        ...     custom_id="id",
        ... )
        >>> with bf.LocalBatchServer() as server:
        ...     with bf.BatchJob.create(req, "memory://doc-retry", client=server.client()) as job:
        ...         job.cancel()  # before anything ran: every row is failed, "cancelled"
        ...         job.retry()["n_requests"].to_list()
        ...         job.wait(poll_interval=0.05)
        ...         job.counts().ok
        [3]
        3
        """
        from batchframe._retry_rows import retry_rows

        self._ensure_reconciled()
        new = retry_rows(self, where, reset_attempts=reset_attempts)
        if submit and new.height:
            self._submit_admissible()
        return new

    # -- reporting ----------------------------------------------------------------------
    def counts(self) -> RowCounts:
        """Rows settled so far, without a network call.

        Returns
        -------
        RowCounts
            ``(ok, failed, retried)``: rows answered, rows finally failed, and rows
            resubmitted in a retry shard at least once. Rows of batches still running
            count as ``ok`` once the batch reports them completed.
        """
        return row_counts(self._m.records)

    def status(self) -> pl.DataFrame:
        """One row per shard attempt: ids, status, request counts and timestamps.

        Returns
        -------
        pl.DataFrame
            ``shard``, ``attempt``, ``submission``, ``model``, ``batch_id``, ``status``,
            ``settled``, ``n_requests``, ``total``, ``completed``, ``failed``,
            ``est_tokens``, ``input_file_id``, ``output_file_id``, ``error_file_id``,
            ``created_at``, ``submitted_at``, ``terminal_at``, ``settled_at`` (UTC),
            ``last_error``, ``not_before`` (UTC: a retry waiting out its backoff),
            ``duplicate_batch_ids`` (comma-separated): other batches found for the same shard
            attempt (made by a second driver), each cancelled before it ran where possible,
            and ``cost_usd``: the batch's cost so far (its actual
            usage once it reports one, else its worst-case estimate; null before it
            is created or for unpriced models).
        """
        return with_cost(status_frame(self._m.records), self._m)

    def timeline(self) -> Timeline:
        """Batches over time by status, as a chart (SVG; shown inline in notebooks).

        Returns
        -------
        Timeline
            One bar per shard attempt: queued until submitted, then its batch's
            phases as the batch object reports them (validating, in progress,
            finalizing), then its final status until settled. ``timeline().to_svg()``
            gives the SVG text to save or embed.
        """
        return Timeline.of(self._m.records)

    def _repr_html_(self) -> str:
        return job_html(self._m, self.root)

    # -- results ------------------------------------------------------------------------
    def collect(
        self, *, partial: bool = False, max_bytes: int | None = COLLECT_MAX_BYTES
    ) -> BatchResults:
        """Results of every row: ``ok`` and ``failed`` frames keyed by ``custom_id``.

        Every input row is in exactly one of them; failures carry their stage, whether
        they were retryable, and how many attempts were made. ``results.batches`` has
        one row per batch that ran. The frames are the job's published dataset
        (``<root>/results/ok/*.parquet``, ``<root>/results/failed/*.parquet``), read
        one or two files at a time, so ``collect()`` equals what other engines read
        there. :func:`read_results` gives the same from the root alone.

        This is for results that fit in memory: above ``max_bytes`` of output and
        error files it raises instead of loading them. Larger jobs: :meth:`to_duckdb`,
        :func:`scan_results` or the Parquet files themselves.

        Parameters
        ----------
        partial
            Return the rows settled so far instead of raising when the job is still
            running.
        max_bytes
            Refuse results whose output and error files exceed this many bytes
            (default ``batchframe._read.COLLECT_MAX_BYTES``, 1 GiB; the frames take
            about 1.5 times that in memory); ``None`` never refuses.

        Raises
        ------
        JobNotSettledError
            Some rows are not settled and ``partial`` is false: call :meth:`wait` first.
        ResultsTooLargeError
            The results exceed ``max_bytes``.
        """
        return collect_results(
            self._storage,
            self._m,
            executor=self._executor,
            partial=partial,
            max_bytes=max_bytes,
            fetch=self._fetch,
        )

    def _fetch(self, file_id: str, rel: str) -> None:
        """Download a provider file again (a deleted output file; see ``_publish``)."""
        if file_id in (self._m.options.get("deleted_files") or ()):
            msg = (
                f"provider file {file_id} was deleted once its results were stored "
                "(keep_files=False; keep_files='output' keeps a copy on the provider)"
            )
            raise FileNotFoundError(msg)
        self._api.download(file_id, self._storage, rel)

    def to_duckdb(
        self,
        database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
        *,
        table: str,
        partial: bool = False,
    ) -> None:
        """Upsert the job's results into DuckDB, one shard attempt at a time.

        The same tables, keys and types as :meth:`BatchResults.to_duckdb`:
        ``{table}``, ``{table}_failed`` and ``{table}_batches``, written in one
        transaction, idempotent. Rows are read from the published Parquet files one
        file at a time, so memory tracks a shard, not the job (unlike
        ``collect().to_duckdb(...)``). :func:`results_to_duckdb` does the same from the
        root alone.

        Parameters
        ----------
        database
            A DuckDB file path, or an open ``duckdb`` connection (left open).
        table
            Name of the ok table; the others are derived from it.
        partial
            Write the rows settled so far instead of raising when the job is still
            running.

        Raises
        ------
        JobNotSettledError
            Some rows are not settled and ``partial`` is false: call :meth:`wait` first.
        ResultsError
            A table exists with other columns or types, or a key repeats.
        """
        write_results_duckdb(
            self._storage,
            self._m,
            database,
            table=table,
            executor=self._executor,
            partial=partial,
            fetch=self._fetch,
        )
