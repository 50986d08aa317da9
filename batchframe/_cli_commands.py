"""What each ``batchframe`` subcommand does; the parser lives in :mod:`batchframe._cli`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import polars as pl

from batchframe._cli_io import (
    EXIT_FAILED_ROWS,
    EXIT_OK,
    CliError,
    cli_client,
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
from batchframe._config import BatchLimits
from batchframe._manifest import MANIFEST_FILE
from batchframe._storage import Storage
from batchframe.exceptions import JobExistsError

if TYPE_CHECKING:
    from batchframe._job import BatchJob
    from batchframe._requests import Requests

__all__ = ["cancel", "collect", "prepare", "status", "submit", "wait"]


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
    return (
        f"{len(requests):,} {requests.endpoint} requests, {requests.n_bytes / 1e6:,.2f} MB, "
        f"~{requests.est_tokens:,} input tokens ({requests.tokenizer} count)"
    )


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
    if Storage(args.root, options).exists(MANIFEST_FILE):
        job = BatchJob.open(
            args.root, client=client, storage_options=options, break_lock=args.break_lock
        )
        with _evaluating(args):
            same = requests.matches(job.fingerprint)
        if not same:
            job.close()
            msg = (
                f"the job at {args.root} was made from other requests (another table, template "
                "or endpoint); choose another ROOT, or `batchframe wait ROOT` to drive it"
            )
            raise JobExistsError(msg)
        job.configure(**scheduling)
        _say(f"built {_describe(requests)} from {args.input}")
        _say(f"resuming job {job.job_id} at {job.root} (made from the same requests)")
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
            )
        _say(f"built {_describe(requests)} from {args.input}")  # known from the write
        _say(f"created job {job.job_id} at {job.root}")
    del requests  # the shards are written; `--wait` need not hold their text
    with job:
        job.submit()
        statuses = job.status()["status"]
        waiting = int(statuses.is_in(["pending", "uploaded"]).sum())
        _say(
            f"{statuses.len() - waiting} batch(es) submitted"
            + (f", {waiting} waiting for room in the queue" if waiting else "")
        )
        if not args.wait:
            _say(
                f"follow it with `batchframe status {job.root}` (no API key needed) and finish "
                f"it with `batchframe wait {job.root}`"
            )
            return EXIT_OK
        return _wait_and_report(job, args)


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


# -- status, collect -------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """``batchframe status ROOT``: the job and its shard attempts, from storage only."""
    snap = read_job(args.root, _storage_options(args))
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
