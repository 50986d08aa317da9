"""Results of a job from its root alone: ``read_results``, ``scan_results``, ``results_to_duckdb``.

No client, no API key and no lock are needed: everything comes from ``manifest.json``
and the files beside it. The rows are read from the job's published dataset,
``results/ok/*.parquet`` and ``results/failed/*.parquet`` (one file per settled shard
attempt and part; see :mod:`batchframe._publish` for the layout and its rules), which
the job writes as it settles each attempt and which readers complete or repair first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from batchframe._manifest import Manifest, ShardAttempt
from batchframe._publish import (
    READ_WINDOW,
    Fetch,
    PartFile,
    Published,
    is_local,
    map_bounded,
    mirror_dir,
    ok_frame_schema,
    publish,
    read_part,
    repair_part,
    settled_records,
)
from batchframe._report import batches_frame
from batchframe._storage import Storage
from batchframe.exceptions import ResultsTooLargeError

if TYPE_CHECKING:
    import duckdb

    from batchframe._results import BatchResults

__all__ = [
    "COLLECT_MAX_BYTES",
    "collect_results",
    "estimated_bytes",
    "read_results",
    "results_to_duckdb",
    "scan_results",
    "write_results_duckdb",
    "write_results_parquet",
]

_log = logging.getLogger("batchframe")

#: Default ``max_bytes`` of ``collect()`` / ``read_results``: above this many bytes of
#: downloaded output and error files (the frames take about 1.5x that in memory), the
#: results are refused in one frame; use ``scan_results`` / ``to_duckdb`` instead.
COLLECT_MAX_BYTES = 1 << 30


def _empty_ok(manifest: Manifest) -> pl.DataFrame:
    """The ok frame of a job without a single success (typed with a known width, if any)."""
    model = next(iter(manifest.embedding_dims), None)
    return pl.DataFrame(schema=ok_frame_schema(manifest, model))


def _empty_failed() -> pl.DataFrame:
    from batchframe._schemas import FAILED_SCHEMA

    return pl.DataFrame(schema=FAILED_SCHEMA)


def _mirror_dir(job_id: str) -> Any:
    """Local directory for copies of a remote root's files (tests point it elsewhere)."""
    return mirror_dir(job_id)


def _publish(
    storage: Storage,
    manifest: Manifest,
    *,
    executor: Executor,
    partial: bool,
    fetch: Fetch | None = None,
) -> Published:
    return publish(
        storage, manifest, executor=executor, partial=partial, mirror=_mirror_dir, fetch=fetch
    )


def estimated_bytes(storage: Storage, records: list[ShardAttempt]) -> int:
    """Bytes of the output and error files of ``records`` (input bytes where missing)."""
    total = 0
    for r in records:
        paths = [p for p in (r.output_path, r.error_path) if p is not None]
        if not paths:
            total += r.n_bytes
        for rel in paths:
            try:
                total += storage.size(rel)
            except Exception:  # deleted or unreadable: the input's size stands for it
                total += r.n_bytes
    return total


def _check_size(
    storage: Storage, manifest: Manifest, *, partial: bool, max_bytes: int | None
) -> None:
    if max_bytes is None:
        return
    records = settled_records(manifest, partial=partial)
    size = estimated_bytes(storage, records)
    if size > max_bytes:
        rows = sum((r.n_ok or 0) + (r.n_final_failed or 0) for r in records)
        msg = (
            f"the results of job {manifest.job_id} ({rows:,} rows, {size / 1e6:,.0f} MB of "
            f"output files) exceed max_bytes={max_bytes:,} (default COLLECT_MAX_BYTES, "
            f"{COLLECT_MAX_BYTES / 2**30:.0f} GiB) for one in-memory frame. Query them "
            "without loading them: `bf.scan_results(root)` (a pl.LazyFrame), "
            "`job.to_duckdb(database, table=...)` or `bf.results_to_duckdb(root, database, "
            "table=...)`, or read `<root>/results/ok/*.parquet` with any engine; pass "
            "`max_bytes=None` to load them anyway"
        )
        raise ResultsTooLargeError(msg, size=size, max_bytes=max_bytes)


def _reader(
    storage: Storage, manifest: Manifest, fetch: Fetch | None
) -> Callable[[PartFile], pl.DataFrame]:
    """Read a published file; a damaged one is rebuilt from its attempt's files first."""
    return lambda f: read_part(storage, manifest, f, mirror=_mirror_dir, fetch=fetch)


def _read_all(
    storage: Storage,
    manifest: Manifest,
    files: list[PartFile],
    executor: Executor,
    fetch: Fetch | None,
) -> list[pl.DataFrame]:
    read = _reader(storage, manifest, fetch)
    return [frame for _, frame in map_bounded(executor, read, files, window=READ_WINDOW)]


def collect_results(
    storage: Storage,
    manifest: Manifest,
    *,
    executor: Executor,
    partial: bool,
    max_bytes: int | None = COLLECT_MAX_BYTES,
    fetch: Fetch | None = None,
) -> BatchResults:
    """Every settled row as ok or failed: the published dataset, in one frame per part.

    The published files of different attempts hold disjoint rows, so they are
    concatenated as they are (no global de-duplication): ``collect()`` equals
    ``read_parquet('<root>/results/ok/*.parquet')``, row for row. ``fetch`` downloads a
    deleted output file again (a job with a client; see :func:`publish`).
    """
    from batchframe._results import BatchResults

    _check_size(storage, manifest, partial=partial, max_bytes=max_bytes)
    published = _publish(storage, manifest, executor=executor, partial=partial, fetch=fetch)
    oks = _read_all(storage, manifest, published.ok, executor, fetch)
    fails = _read_all(storage, manifest, published.failed, executor, fetch)
    ok = pl.concat(oks, how="vertical_relaxed") if oks else _empty_ok(manifest)
    failed = pl.concat(fails, how="vertical_relaxed") if fails else _empty_failed()
    results = BatchResults(
        ok,
        failed,
        manifest.endpoint,
        batches=batches_frame(manifest),
        custom_id_column=manifest.options.get("custom_id_column"),
    )
    from batchframe._providers import job_prices

    results.prices = job_prices(manifest)  # usage() prices with the job's provider
    if not partial:
        n = results.ok["custom_id"].n_unique() + results.failed.height
        if n != manifest.n_requests:
            _log.warning(
                "job %s accounts for %d rows but was made from %d; were shard files changed "
                "after the job started?",
                manifest.job_id,
                n,
                manifest.n_requests,
            )
    return results


def write_results_duckdb(
    storage: Storage,
    manifest: Manifest,
    database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    table: str,
    executor: Executor,
    partial: bool,
    fetch: Fetch | None = None,
) -> None:
    """Upsert the published dataset into DuckDB, one shard attempt's file at a time.

    DuckDB reads the files itself: when it fails, every file is read through once, the
    damaged ones are rebuilt from their attempts' files, and the upsert (one
    transaction, idempotent) runs again.
    """
    published = _publish(storage, manifest, executor=executor, partial=partial, fetch=fetch)
    try:
        _upsert(storage, manifest, database, table=table, published=published)
    except Exception as exc:
        repaired = _repair_damaged(storage, manifest, published, exc, executor, fetch)
        if repaired is None:
            raise
        _upsert(storage, manifest, database, table=table, published=repaired)


def _repair_damaged(
    storage: Storage,
    manifest: Manifest,
    published: Published,
    exc: BaseException,
    executor: Executor,
    fetch: Fetch | None,
) -> Published | None:
    """``published`` with its unreadable files rebuilt; ``None`` when all read fine."""

    def check(f: PartFile) -> PartFile | bool | None:
        try:
            f.read(storage)
        except Exception as damage:
            return repair_part(storage, manifest, f, damage, mirror=_mirror_dir, fetch=fetch)
        return True

    out: dict[str, list[PartFile]] = {}
    changed = False
    for part in ("ok", "failed"):
        out[part] = []
        for f, result in map_bounded(executor, check, published.files(part), window=READ_WINDOW):
            if result is True:
                out[part].append(f)
                continue
            changed = True
            if isinstance(result, PartFile):
                out[part].append(result)
    if not changed:
        return None
    _log.info("rebuilt damaged results files after a DuckDB error: %s", exc)
    return Published(out["ok"], out["failed"])


def _upsert(
    storage: Storage,
    manifest: Manifest,
    database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    table: str,
    published: Published,
) -> None:
    from batchframe._duckdb import Part, upsert_parts
    from batchframe._schemas import FAILED_SCHEMA, ok_key

    model = next(iter(manifest.embedding_dims), None)

    local = is_local(storage)

    def sql(f: PartFile) -> str:
        path = f.local if f.local is not None else storage.url(f.rel)
        return "read_parquet('" + path.replace("'", "''") + "')"

    def chunks(files: list[PartFile]) -> Callable[[], Iterator[str]]:
        return lambda: (sql(f) for f in files)

    upsert_parts(
        database,
        table=table,
        ok=Part(ok_frame_schema(manifest, model), ok_key(manifest.endpoint), chunks(published.ok)),
        failed=Part(FAILED_SCHEMA, ["custom_id"], chunks(published.failed)),
        batches=batches_frame(manifest),
        filesystem=None if local else storage.fs,
    )


def write_results_parquet(
    storage: Storage,
    manifest: Manifest,
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None,
    executor: Executor,
    partial: bool,
    fetch: Fetch | None = None,
) -> dict[str, str]:
    """``BatchResults.write_parquet`` of the published dataset, one file read at a time.

    Writes ``path`` (ok rows), ``<stem>_failed<ext>`` and ``<stem>_batches<ext>`` as
    that method does, appending the published files one by one as row groups.
    """
    import pyarrow.parquet as pq

    from batchframe._results import _parquet_names

    published = _publish(storage, manifest, executor=executor, partial=partial, fetch=fetch)
    read = _reader(storage, manifest, fetch)
    out, names = _parquet_names(path, storage_options)
    empty = {"ok": _empty_ok(manifest), "failed": _empty_failed()}
    meta = {"batchframe.endpoint": manifest.endpoint}
    written = {}
    for part in ("ok", "failed"):
        schema = empty[part].to_arrow().schema.with_metadata(meta)
        with out.open_write(names[part]) as f, pq.ParquetWriter(f, schema) as writer:
            for _, frame in map_bounded(executor, read, published.files(part), window=READ_WINDOW):
                writer.write_table(frame.to_arrow().cast(schema))
        written[part] = out.url(names[part])
    with out.open_write(names["batches"]) as f:
        batches_frame(manifest).write_parquet(f, metadata=meta)
    written["batches"] = out.url(names["batches"])
    return written


# -- public readers ------------------------------------------------------------------------
def read_results(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    partial: bool = False,
    max_bytes: int | None = COLLECT_MAX_BYTES,
) -> BatchResults:
    """Read the results of the job at ``root``: the same as ``job.collect()``, no client.

    Works from any process or machine that can read the job root, while the job runs
    elsewhere or long after it finished; it takes no lock and needs no API key. The
    rows are the job's published dataset (``<root>/results/ok/*.parquet`` and
    ``<root>/results/failed/*.parquet``), read one or two files at a time; files that
    are missing are published first (parsed from the output and error files).

    Damaged state is recovered, with a warning on the ``batchframe`` logger: a
    ``manifest.json`` that cannot be read from ``manifest.prev.json``; a published file
    that cannot be read by parsing its attempt's output files again. Without a client,
    an output file that was deleted cannot be downloaded again: the rows it held are in
    ``failed`` with stage ``"lost"`` (``BatchJob.open(root, client=...).collect()``
    downloads it again while the provider still has it).

    Parameters
    ----------
    root
        The job's directory or fsspec URL.
    storage_options
        fsspec options for ``root`` (credentials, endpoint URL, ...).
    partial
        Return the rows settled so far instead of raising when the job is still running.
    max_bytes
        Refuse (:class:`ResultsTooLargeError`) when the job's output and error files
        exceed this many bytes (default :data:`COLLECT_MAX_BYTES`, 1 GiB); ``None``
        never refuses. Larger results: :func:`scan_results` or
        :func:`results_to_duckdb`.

    Returns
    -------
    BatchResults
        ``ok``, ``failed`` and ``batches``, every input row in exactly one of ``ok`` and
        ``failed`` once the job is settled.

    Raises
    ------
    JobNotFoundError
        No job at ``root``.
    ManifestDamagedError
        ``manifest.json`` and its previous version cannot be read.
    JobNotSettledError
        Some rows are not settled and ``partial`` is false.
    ResultsTooLargeError
        The results exceed ``max_bytes``.

    Examples
    --------
    >>> import polars as pl
    >>> import batchframe as bf
    >>> df = pl.DataFrame({"id": [1, 2], "text": ["good", "bad"]})
    >>> with bf.LocalBatchServer() as server:
    ...     _ = bf.run(
    ...         df,
    ...         "memory://doc-read",
    ...         endpoint="/v1/chat/completions",
    ...         body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    ...         custom_id="id",
    ...         client=server.client(),
    ...         poll_interval=0.05,
    ...     )
    >>> results = bf.read_results("memory://doc-read")  # no server, no client
    >>> sorted(results.ok["custom_id"])
    ['1', '2']
    """
    storage = Storage(os.fspath(root), storage_options)
    manifest = Manifest.load(storage)
    with ThreadPoolExecutor(max_workers=READ_WINDOW, thread_name_prefix="batchframe") as pool:
        return collect_results(
            storage, manifest, executor=pool, partial=partial, max_bytes=max_bytes
        )


def scan_results(
    root: str | os.PathLike[str],
    *,
    part: Literal["ok", "failed", "batches"] = "ok",
    storage_options: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> pl.LazyFrame:
    """Lazily scan the results of the job at ``root``: a ``pl.LazyFrame``, no client.

    The frame is a ``pl.scan_parquet`` over the job's published dataset (one file per
    settled shard attempt under ``<root>/results/ok/`` or ``<root>/results/failed/``),
    so filters and column selections are pushed down, only what the query needs is
    read, and a result larger than memory can be aggregated or sunk
    (``.sink_parquet``). Files that are missing are published first, one or two
    attempts at a time. A local root is scanned in place; a remote root's files
    on an object store is read in place by Polars' own cloud reader, its
    ``storage_options`` translated (S3, GCS, Azure); other remote files (``memory://``,
    options Polars has no equivalent for) are copied once into a local cache directory
    (``$TMPDIR/batchframe-cache/<job_id>``) and scanned from there.

    Each file's footer is checked first: a missing, truncated or replaced file is
    rebuilt. A file damaged inside, its footer intact, fails only when the scan is
    collected; :func:`read_results` or :func:`results_to_duckdb` rebuild it.

    ``scan_results(root).collect()`` equals ``read_results(root).ok``, and
    ``scan_results(root, part="failed").collect()`` equals ``read_results(root).failed``,
    rows in the same order.

    Parameters
    ----------
    root
        The job's directory or fsspec URL.
    part
        Which frame: ``"ok"`` (the typed successes), ``"failed"`` (every failed row with
        its stage and reason) or ``"batches"`` (one row per batch, from the manifest).
    storage_options
        fsspec options for ``root``.
    partial
        Scan the rows settled so far instead of raising when the job is still running.

    Returns
    -------
    pl.LazyFrame
        With the declared schema of the part, also when it holds no rows.

    Raises
    ------
    JobNotFoundError
        No job at ``root``.
    JobNotSettledError
        Some rows are not settled and ``partial`` is false.

    Examples
    --------
    >>> import polars as pl
    >>> import batchframe as bf
    >>> df = pl.DataFrame({"id": [1, 2, 3], "text": ["good", "bad", "fine"]})
    >>> with bf.LocalBatchServer() as server:
    ...     _ = bf.run(
    ...         df,
    ...         "memory://doc-scan",
    ...         endpoint="/v1/chat/completions",
    ...         body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    ...         custom_id="id",
    ...         client=server.client(),
    ...         poll_interval=0.05,
    ...     )
    >>> lf = bf.scan_results("memory://doc-scan")
    >>> lf.filter(pl.col("custom_id") != "2").select("custom_id").collect()["custom_id"].sort().to_list()
    ['1', '3']
    """
    if part not in ("ok", "failed", "batches"):
        msg = f"`part` must be one of 'ok', 'failed' or 'batches', got {part!r}"
        raise ValueError(msg)
    storage = Storage(os.fspath(root), storage_options)
    manifest = Manifest.load(storage)
    settled_records(manifest, partial=partial)
    if part == "batches":
        return batches_frame(manifest).lazy()
    with ThreadPoolExecutor(max_workers=READ_WINDOW, thread_name_prefix="batchframe") as pool:
        files = _publish(storage, manifest, executor=pool, partial=partial).files(part)
    if not files:
        empty = _empty_ok(manifest) if part == "ok" else _empty_failed()
        return empty.lazy()
    from batchframe._dataset import scan_files

    return scan_files(storage, files, _mirror_dir(manifest.job_id))


def results_to_duckdb(
    root: str | os.PathLike[str],
    database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    table: str,
    storage_options: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> None:
    """Upsert the results of the job at ``root`` into DuckDB, in bounded memory; no client.

    Writes the same three tables as :meth:`BatchResults.to_duckdb`, with the same keys
    and types: ``{table}`` (``PRIMARY KEY (custom_id)``, ``(custom_id, index)`` for
    embeddings), ``{table}_failed`` (``PRIMARY KEY (custom_id)``) and
    ``{table}_batches`` (``PRIMARY KEY (batch_id)``). It reads the job's published
    dataset one shard attempt's file at a time, so memory tracks a shard, not the job;
    all three tables are swapped in by one transaction (or written inside the caller's,
    if the connection has one open), and writing twice changes nothing.

    Parameters
    ----------
    root
        The job's directory or fsspec URL.
    database
        A DuckDB file path, or an open ``duckdb`` connection (left open).
    table
        Name of the ok table; the others are derived from it.
    storage_options
        fsspec options for ``root``.
    partial
        Write the rows settled so far instead of raising when the job is still running.

    Raises
    ------
    JobNotFoundError
        No job at ``root``.
    JobNotSettledError
        Some rows are not settled and ``partial`` is false.
    ResultsError
        A table exists with other columns or types, or a key repeats.

    Examples
    --------
    >>> import duckdb
    >>> import polars as pl
    >>> import batchframe as bf
    >>> df = pl.DataFrame({"id": [1, 2, 3], "text": ["good", "bad", "fine"]})
    >>> with bf.LocalBatchServer() as server:
    ...     _ = bf.run(
    ...         df,
    ...         "memory://doc-duckdb",
    ...         endpoint="/v1/chat/completions",
    ...         body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    ...         custom_id="id",
    ...         client=server.client(),
    ...         poll_interval=0.05,
    ...     )
    >>> con = duckdb.connect()
    >>> bf.results_to_duckdb("memory://doc-duckdb", con, table="reviews")
    >>> con.execute("SELECT count(*) FROM reviews").fetchone()
    (3,)
    """
    storage = Storage(os.fspath(root), storage_options)
    manifest = Manifest.load(storage)
    with ThreadPoolExecutor(max_workers=READ_WINDOW, thread_name_prefix="batchframe") as pool:
        write_results_duckdb(
            storage, manifest, database, table=table, executor=pool, partial=partial
        )
