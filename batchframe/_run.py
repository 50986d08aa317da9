"""``bf.run``: build, submit, wait and collect in one call, resuming a job at the root."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from batchframe._job import BatchJob
from batchframe._manifest import Manifest
from batchframe._providers import DEFAULT_EXPIRES_AFTER, Provider
from batchframe._schedule import RetryBackoff, check_options
from batchframe._storage import Storage
from batchframe.exceptions import JobExistsError

if TYPE_CHECKING:
    import openai
    import polars as pl

    from batchframe._api import BatchAPI
    from batchframe._config import BatchLimits
    from batchframe._results import BatchResults

__all__ = ["run"]

_log = logging.getLogger("batchframe")


def run(
    frame: Any,
    root: str | os.PathLike[str],
    *,
    endpoint: str,
    body: Mapping[str, Any],
    custom_id: str | pl.Expr | None = None,
    limits: BatchLimits | None = None,
    client: openai.OpenAI | BatchAPI | None = None,
    storage_options: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    queue_token_limit: int | Mapping[str, int] | None = None,
    max_in_flight: int | None = None,
    max_attempts: int | None = None,
    retry_backoff: RetryBackoff | None = None,
    executor: Executor | None = None,
    poll_interval: float | None = None,
    timeout: float | None = None,
    progress: bool | None = None,
    break_lock: bool = False,
    tokenizer: str = "auto",
    provider: str | Provider | None = None,
    completion_window: str = "24h",
    expires_after: int | None = DEFAULT_EXPIRES_AFTER,
    output_expires_after: int | None = None,
    keep_files: bool | str | Sequence[str] = False,
    max_cost: float | None = None,
    prices: Mapping[str, Any] | str | os.PathLike[str] | None = None,
) -> BatchResults:
    """Build requests, submit, wait and collect in one call; resume a job at ``root``.

    If ``root`` already holds a job made from the same requests (same table, template
    and endpoint: the same fingerprint), that job is resumed rather than started
    again, so re-running a notebook cell or a script after a crash never pays twice:
    batches it already created are polled (or adopted, if the crash came between
    creating one and recording it), and a finished job just returns its results
    without a single API call that creates anything. A lock left by a crashed
    process on this host is taken over with a warning (see :meth:`BatchJob.open`).

    Parameters
    ----------
    frame, endpoint, body, custom_id, tokenizer
        As in :func:`build_requests`.
    root
        The job's directory or fsspec URL.
    limits, client, storage_options, metadata, queue_token_limit, max_in_flight, max_attempts, retry_backoff, executor, break_lock
        As in :meth:`BatchJob.create` (``max_attempts`` defaults to 3 tries, more
        during an outage). On resume the
        existing job keeps its ``limits`` and ``metadata`` (its shards are written
        already; other values are logged as ignored); ``queue_token_limit``,
        ``max_in_flight``, ``max_attempts`` and ``retry_backoff`` replace the job's when
        given.
    poll_interval, timeout, progress
        As in :meth:`BatchJob.wait`.
    provider, completion_window, expires_after, output_expires_after, keep_files, max_cost, prices
        As in :meth:`BatchJob.create`. A job at ``root`` made for another provider is
        refused (:class:`ProviderError`); on resume ``max_cost`` replaces the job's
        cap (raise it to resume a job paused by :class:`CostLimitError`).

    Returns
    -------
    BatchResults
        ``ok`` and ``failed`` frames covering every input row once.

    Raises
    ------
    JobExistsError
        ``root`` holds a job made from different requests.
    JobLockedError
        Another live process drives the job at ``root`` (or one on another host held
        it; pass ``break_lock=True`` if it is gone).
    JobTimeoutError
        ``timeout`` passed first (a ``TimeoutError``); call ``run`` again with the
        same arguments to resume.
    ResultsTooLargeError
        The job finished but its results exceed ``collect()``'s in-memory threshold:
        read them with :func:`scan_results` or :func:`results_to_duckdb` (nothing is
        lost; calling ``run`` again submits nothing).
    APIError
        The API refused a call or kept failing; the state is saved, call ``run``
        again to resume.

    Examples
    --------
    >>> import polars as pl
    >>> import batchframe as bf
    >>> df = pl.DataFrame({"id": [1, 2], "text": ["good", "bad"]})
    >>> with bf.LocalBatchServer() as server:
    ...     results = bf.run(
    ...         df,
    ...         "memory://doc-run",
    ...         endpoint="/v1/chat/completions",
    ...         body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    ...         custom_id="id",
    ...         client=server.client(),
    ...         poll_interval=0.05,
    ...     )
    >>> len(results.ok), len(results.failed)
    (2, 0)
    """
    from batchframe._build import build_requests

    requests = build_requests(
        frame, endpoint=endpoint, body=body, custom_id=custom_id, tokenizer=tokenizer
    )
    storage = Storage(os.fspath(root), storage_options)
    if Manifest.exists(storage):
        check_options(
            None, queue_token_limit, max_in_flight, 1 if max_attempts is None else max_attempts
        )
        job = BatchJob.open(
            root,
            client=client,
            storage_options=storage_options,
            executor=executor,
            break_lock=break_lock,
            provider=provider,
        )
        if not requests.matches(job.fingerprint):
            job.close()
            msg = (
                f"the job at `{job.root}` was made from other requests (another table, "
                f"template or endpoint: fingerprint {job.fingerprint[:12]}… here, "
                f"{requests.fingerprint[:12]}… now); use another root, or "
                "`BatchJob.open(root)` to work with the existing job"
            )
            raise JobExistsError(msg)
        _warn_ignored(job, limits, metadata)
        job.configure(
            queue_token_limit=queue_token_limit,
            max_in_flight=max_in_flight,
            max_attempts=max_attempts,
            max_cost=max_cost,
            retry_backoff=retry_backoff,
        )
        _log.info("resuming job %s at %s", job.job_id, job.root)
    else:
        job = BatchJob.create(
            requests,
            root,
            limits=limits,
            client=client,
            storage_options=storage_options,
            metadata=metadata,
            queue_token_limit=queue_token_limit,
            max_in_flight=max_in_flight,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            executor=executor,
            break_lock=break_lock,
            provider=provider,
            completion_window=completion_window,
            expires_after=expires_after,
            output_expires_after=output_expires_after,
            keep_files=keep_files,
            max_cost=max_cost,
            prices=prices,
        )
    del requests  # the shards are written; hours of waiting need not hold their text
    with job:
        job.submit()
        job.wait(poll_interval=poll_interval, timeout=timeout, progress=progress)
        return job.collect()


def _warn_ignored(
    job: BatchJob, limits: BatchLimits | None, metadata: Mapping[str, str] | None
) -> None:
    """Log options a resumed job cannot take any more (its shards and tags are fixed)."""
    kept = job._m
    if limits is not None and limits.to_dict() != kept.limits:
        _log.warning(
            "job %s at %s keeps the limits it was created with (%s); the `limits` passed "
            "now are ignored. Use another root to shard differently",
            job.job_id,
            job.root,
            kept.limits,
        )
    if metadata is not None and dict(metadata) != kept.options.get("metadata"):
        _log.warning(
            "job %s at %s keeps the metadata it was created with; the `metadata` passed "
            "now is ignored",
            job.job_id,
            job.root,
        )
