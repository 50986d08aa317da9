"""What each ``batchframe`` subcommand does; the parser lives in :mod:`batchframe._cli`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

import polars as pl

from batchframe._cli_io import (
    EXIT_FAILED_ROWS,
    EXIT_OK,
    CliError,
    cli_client,
    client_configured,
    load_template,
    normalize_endpoint,
    parse_custom_id,
    parse_pairs,
    parse_queue_limit,
    parse_storage_options,
    read_table,
    text_table,
)
from batchframe._cli_job import STATUS_COLUMNS, ProgressMode, read_job, watch
from batchframe._cli_providers import cost_lines, create_options, resume_options
from batchframe._config import BatchLimits
from batchframe._manifest import Manifest
from batchframe._storage import Storage
from batchframe.exceptions import JobExistsError

if TYPE_CHECKING:
    from batchframe._job import BatchJob
    from batchframe._requests import Requests

__all__ = ["cancel", "collect", "prepare", "retry", "status", "submit", "wait"]


def _out() -> TextIO:
    return sys.stdout


def _say(*lines: str) -> None:
    out = _out()
    for line in lines:
        out.write(line + "\n")
    out.flush()


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    return parse_storage_options(getattr(args, "storage_option", None))


def _progress_mode(args: argparse.Namespace) -> ProgressMode:
    if getattr(args, "quiet", False):
        return "none"
    try:
        tty = _out().isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "lines"


def _limits(args: argparse.Namespace) -> BatchLimits:
    given = {
        name: getattr(args, name)
        for name in ("max_requests", "max_bytes", "max_embedding_inputs", "max_tokens")
        if getattr(args, name, None) is not None
    }
    return BatchLimits(**given)


def _build(args: argparse.Namespace) -> Requests:
    from batchframe._build import build_requests

    options = _storage_options(args)
    template = load_template(args.body, options)
    frame = read_table(args.input, fmt=args.format, storage_options=options, limit=args.limit)
    with _evaluating(args):
        return build_requests(
            frame,
            endpoint=normalize_endpoint(args.endpoint),
            body=template,
            custom_id=parse_custom_id(args.custom_id),
            tokenizer=args.tokenizer,
        )


@contextmanager
def _evaluating(args: argparse.Namespace) -> Iterator[None]:
    """Name the input when Polars cannot evaluate the template.

    A streamed input's passes evaluate it after ``build_requests`` has returned.
    """
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        msg = f"the body template cannot be evaluated on {args.input!r}: {exc}"
        raise CliError(msg) from exc


def _describe(requests: Requests) -> str:
    tokens = (
        f"{requests.est_tokens:,} input tokens (exact count)"
        if requests.tokenizer == "exact"
        else f"~{requests.est_tokens:,} input tokens (estimate)"
    )
    return (
        f"{len(requests):,} {requests.endpoint} requests, {requests.n_bytes / 1e6:,.2f} MB, "
        + tokens
    )


_LIMIT_OPTIONS = {
    "max_requests": "--max-requests",
    "max_bytes": "--max-bytes",
    "max_embedding_inputs": "--max-embedding-inputs",
    "max_tokens": "--max-tokens",
}


def _check_same_limits(args: argparse.Namespace, job: BatchJob) -> None:
    """Refuse shard limits on a resumed job that differ from the ones its shards were cut by."""
    saved = job._m.limits
    differ = [
        f"{flag} {getattr(args, name):,} (the job's: {_fmt_limit(saved.get(name))})"
        for name, flag in _LIMIT_OPTIONS.items()
        if getattr(args, name, None) is not None and getattr(args, name) != saved.get(name)
    ]
    if differ:
        msg = (
            f"the job at {args.root} was cut into shards with other limits: "
            + ", ".join(differ)
            + "; its shard files are written and some may be submitted, so limits cannot "
            "change. Drop these options to resume it, or choose another ROOT for a new job"
        )
        raise CliError(msg)


def _fmt_limit(value: Any) -> str:
    return "none" if value is None else f"{value:,}"


# -- prepare ---------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> int:
    """``batchframe prepare INPUT [OUT]``: build, plan and (with OUT) write the shards."""
    requests = _build(args)
    limits = _limits(args)
    with _evaluating(args):
        # Writing first plans too: a streamed input is then read once, not twice.
        written = (
            None
            if args.out is None
            else requests.write(args.out, limits=limits, storage_options=_storage_options(args))
        )
        plan = requests.plan(limits)
    _say(_describe(requests), f"{plan.height} shard(s):", text_table(plan))
    _say(*cost_lines(requests, args))
    if written is not None:
        written = written.select(
            "shard", "path", "n_requests", "n_bytes", pl.col("sha256").str.head(16)
        )
        _say("", f"wrote {written.height} shard file(s) under {args.out}:", text_table(written))
    return EXIT_OK


# -- submit ----------------------------------------------------------------------------


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "queue_token_limit": parse_queue_limit(args.queue_token_limit),
        "max_in_flight": args.max_in_flight,
        "max_attempts": args.max_attempts,
    }


def _client(args: argparse.Namespace) -> Any:
    return cli_client(args.base_url, args.api_key_env)


def submit(args: argparse.Namespace) -> int:
    """``batchframe submit INPUT ROOT``: build, create (or resume) the job, submit."""
    from batchframe._job import BatchJob

    requests = _build(args)
    options = _storage_options(args)
    client = _client(args)
    scheduling = _job_options(args)
    if Manifest.exists(Storage(args.root, options)):
        job = BatchJob.open(
            args.root, client=client, storage_options=options, break_lock=args.break_lock
        )
        with _evaluating(args):
            same = requests.matches(job.fingerprint)
        if not same:
            job.close()
            msg = (
                f"the job at {args.root} was made from other requests (another table, template "
                f"or endpoint); choose another ROOT, or `batchframe wait {args.root}` to drive it"
            )
            raise JobExistsError(msg)
        try:
            _check_same_limits(args, job)
        except CliError:
            job.close()
            raise
        changed = {k: v for k, v in scheduling.items() if v is not None}
        job.configure(**scheduling)
        resume_options(job, args)
        _say(f"built {_describe(requests)} from {args.input}")
        _say(f"resuming job {job.job_id} at {job.root} (made from the same requests)")
        if changed:
            _say(
                "scheduling options updated for what is still to submit: "
                + ", ".join(f"{k}={v}" for k, v in changed.items())
            )
        resumed = True
    else:
        with _evaluating(args):
            job = BatchJob.create(
                requests,
                args.root,
                limits=_limits(args),
                client=client,
                storage_options=options,
                metadata=parse_pairs(args.metadata, "--metadata", typed=False) or None,
                queue_token_limit=scheduling["queue_token_limit"],
                max_in_flight=scheduling["max_in_flight"],
                max_attempts=scheduling["max_attempts"],
                break_lock=args.break_lock,
                **create_options(args),
            )
        _say(f"built {_describe(requests)} from {args.input}")  # known from the write
        _say(f"created job {job.job_id} at {job.root}")
        resumed = False
    del requests  # the shards are written; `--wait` need not hold their text
    with job:
        before = _batch_ids(job)
        job.submit()
        _say(_submit_outcome(job, before, resumed=resumed))
        if job.is_settled:
            _say(f"collect it with `batchframe collect {job.root} --parquet results.parquet`")
            return _wait_and_report(job, args) if args.wait else EXIT_OK
        if not args.wait:
            _say(
                f"follow it with `batchframe status {job.root}` (no API key needed) and finish "
                f"it with `batchframe wait {job.root}`"
            )
            return EXIT_OK
        return _wait_and_report(job, args)


def _batch_ids(job: BatchJob) -> set[str]:
    return {r.batch_id for r in job._m.records if r.batch_id is not None}


def _submit_outcome(job: BatchJob, before: set[str], *, resumed: bool) -> str:
    """What one ``submit`` did: new batches, batches from earlier runs, shards waiting."""
    records = job._m.records
    new = len(_batch_ids(job) - before)
    earlier = len(before)
    waiting = sum(1 for r in records if r.status in ("pending", "uploaded"))
    queue = f"; {waiting} shard(s) waiting for room in the queue" if waiting else ""
    if job.is_cancelled:
        return f"nothing submitted: the job was cancelled ({earlier} batch(es) ran before)"
    if job.is_settled:
        return f"nothing to do: the job is settled ({earlier} batch(es) ran)"
    if not resumed:
        return f"submitted {new} batch(es){queue}"
    if new:
        return f"submitted {new} new batch(es); {earlier} were submitted earlier{queue}"
    return f"nothing new to submit: {earlier} batch(es) were submitted earlier{queue}"


# -- wait, cancel ----------------------------------------------------------------------


def _open(args: argparse.Namespace) -> BatchJob:
    from batchframe._job import BatchJob

    return BatchJob.open(
        args.root,
        client=_client(args),
        storage_options=_storage_options(args),
        break_lock=args.break_lock,
    )


def _wait_and_report(job: BatchJob, args: argparse.Namespace) -> int:
    watch(
        job,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        mode=_progress_mode(args),
        out=_out(),
    )
    ok, failed, retried = job.counts()
    _say(
        f"job {job.job_id} settled: {ok:,} ok, {failed:,} failed"
        + (f" ({retried:,} row(s) retried)" if retried else ""),
        f"collect it with `batchframe collect {job.root} --parquet results.parquet`",
    )
    return EXIT_FAILED_ROWS if args.fail_on_failed and failed else EXIT_OK


def wait(args: argparse.Namespace) -> int:
    """``batchframe wait ROOT``: poll, retry and submit until every row is settled."""
    with _open(args) as job:
        scheduling = _job_options(args)
        if any(v is not None for v in scheduling.values()):
            job.configure(**scheduling)
        resume_options(job, args)
        return _wait_and_report(job, args)


def cancel(args: argparse.Namespace) -> int:
    """``batchframe cancel ROOT``: cancel batches in flight and submit nothing more."""
    with _open(args) as job:
        job.cancel(wait=False)
        _say(f"job {job.job_id}: cancel requested; finished rows are kept")
        if args.no_wait:
            return EXIT_OK
        watch(
            job,
            timeout=args.timeout,
            poll_interval=args.poll_interval,
            mode=_progress_mode(args),
            out=_out(),
        )
        ok, failed, _ = job.counts()
        _say(f"job {job.job_id} cancelled and settled: {ok:,} ok, {failed:,} failed")
    return EXIT_OK


def retry(args: argparse.Namespace) -> int:
    """``batchframe retry ROOT``: failed rows as new shard attempts, submitted."""
    where: pl.Expr | None = None
    if args.cancelled or args.error_code:
        chosen = []
        if args.cancelled:
            chosen.append(pl.col("stage") == "cancelled")
        if args.error_code:
            chosen.append(pl.col("error_code").is_in(args.error_code))
        where = pl.any_horizontal(chosen)
    with _open(args) as job:
        scheduling = _job_options(args)
        if any(v is not None for v in scheduling.values()):
            job.configure(**scheduling)
        new = job.retry(where, reset_attempts=args.reset_attempts)
        if not new.height:
            _say(f"job {job.job_id}: no failed row matches; nothing to retry")
            return EXIT_OK
        _say(
            f"job {job.job_id}: retrying {int(new['n_requests'].sum()):,} row(s) in "
            f"{new.height} new shard attempt(s):",
            text_table(new),
        )
        if not args.wait:
            _say(f"finish it with `batchframe wait {job.root}`")
            return EXIT_OK
        return _wait_and_report(job, args)


# -- status, collect -------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """``batchframe status ROOT``: the job and its shard attempts, polled when possible.

    Reads the job from storage without its lock; batches in flight are then polled
    (read-only, nothing saved) when a client is configured and ``--offline`` is not given.
    """
    snap = read_job(args.root, _storage_options(args))
    missing = "--offline" if args.offline else client_configured(args.base_url, args.api_key_env)
    if missing is None and not snap.is_settled:
        from batchframe._api import BatchAPI, RetryPolicy

        api = BatchAPI(_client(args), retry=RetryPolicy(max_tries=2, backoff=0.2))
        snap = snap.poll(api)
    elif missing is not None:
        snap = replace(snap, not_polled=missing)
    frame = snap.status()
    if args.as_ == "csv":
        _out().write(frame.write_csv())
        return EXIT_OK
    if args.as_ == "json":
        _out().write(frame.write_ndjson())
        return EXIT_OK
    shown = frame if args.wide else frame.select(STATUS_COLUMNS)
    _say(*snap.summary(), "", text_table(shown))
    return EXIT_OK


def collect(args: argparse.Namespace) -> int:
    """``batchframe collect ROOT``: results to Parquet and/or DuckDB, from storage only.

    Reads the job's published Parquet files one at a time (bounded memory), so it works
    for jobs whose results do not fit in memory.
    """
    from batchframe._read import write_results_duckdb, write_results_parquet

    if args.table is not None and args.duckdb is None:
        msg = "--table names the DuckDB table; pass --duckdb DATABASE too"
        raise CliError(msg)
    snap = read_job(args.root, _storage_options(args))
    published = snap.published(partial=args.partial)
    n_ok, n_failed = snap.counts(partial=args.partial)
    lines = [
        f"{snap.manifest.n_requests:,} rows: {n_ok:,} ok, {n_failed:,} failed"
        + ("" if snap.is_settled else " (partial: the job is still running)")
    ]
    failures = snap.failure_table(published)
    if failures.height:
        lines += ["", "failed rows:", text_table(failures)]
    usage = snap.usage(published)
    if usage.height:
        lines += ["", "usage:", text_table(usage)]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="batchframe") as pool:
        if args.parquet is not None:
            written = write_results_parquet(
                snap.storage,
                snap.manifest,
                args.parquet,
                storage_options=_storage_options(args),
                executor=pool,
                partial=args.partial,
            )
            lines += ["", *(f"wrote {part:<8} {path}" for part, path in written.items())]
        if args.duckdb is not None:
            table = args.table or "results"
            write_results_duckdb(
                snap.storage,
                snap.manifest,
                os.fspath(args.duckdb),
                table=table,
                executor=pool,
                partial=args.partial,
            )
            lines += ["", f"DuckDB {args.duckdb}: tables {table}, {table}_failed, {table}_batches"]
    if args.parquet is None and args.duckdb is None:
        lines += ["", "nothing written: pass --parquet PATH and/or --duckdb DATABASE"]
    _say(*lines)
    return EXIT_FAILED_ROWS if args.fail_on_failed and n_failed else EXIT_OK
