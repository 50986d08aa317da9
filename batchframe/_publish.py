"""The published results of a job: ``results/ok/*.parquet`` and ``results/failed/*.parquet``.

This is the contract for SQL and other engines (DuckDB, Polars, Spark, Ray, Dask)::

    results/ok/00003.a0.parquet       the ok rows that stay with shard 3, attempt 0
    results/ok/00003.a1.parquet       ... and with its retry, attempt 1
    results/failed/00003.a0.parquet   the final failures of attempt 0 (rows retried in
                                      attempt 1 are not here: they are in attempt 1's files)

One file per settled shard attempt and part, none for an empty part. An attempt keeps
the rows that end with it: its ok rows, and its failures that were not retried in a
child attempt. Those sets are disjoint across attempts by construction (a child holds
exactly the parent's retried rows), so the union of ``results/ok/*.parquet`` has one
row per ``custom_id`` (per ``(custom_id, index)`` for embeddings), the union of
``results/failed/*.parquet`` one row per ``custom_id``, and no id is in both.

Every file of a part has the same declared schema (never inferred: all-null columns
keep their type, embeddings are ``FixedSizeList<float>[dim]``). Files are written to a
temporary name under ``results/.staging/`` (DuckDB and Polars globs match hidden
``.tmp-*.parquet`` names, so temporary files never live in the published folders) and
moved into place, so a reader never sees half a file.

When it is published: the job writes an attempt's two files as it settles the attempt
(``wait()``/``refresh()``), before the manifest records the settlement. A crash between
the two leaves files that the next ``wait()`` writes again from the same inputs with the
same rows. Each file's Parquet metadata carries ``batchframe.source``: the attempt's
settle time, a digest of the schemas, and the retry child's sha256. The job (once it
settles) and readers (``read_results``, ``scan_results``, ``results_to_duckdb``,
``collect``) check it and
rewrite a file that is missing or was made for another settlement, another schema, or
before a retry was added, and delete files of a settled job that belong to no
attempt, so a settled job's folders always end up holding exactly its rows. Jobs made
by batchframe 0.1 (caches at ``results/<key>.<settled>.<tag>.{ok,failed}.parquet``) are
published from those caches on first read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import posixpath
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from batchframe._manifest import Manifest, ShardAttempt
from batchframe._retry import Outcome, record_outcome, shard_ids
from batchframe._storage import Storage, temp_name, writer_tag
from batchframe.exceptions import JobNotSettledError, ResultsError

__all__ = [
    "PARTS",
    "RESULTS_DIR",
    "Fetch",
    "PartFile",
    "cache_tag",
    "clean_temps",
    "finalize_outcome",
    "later_attempts",
    "legacy_names",
    "map_bounded",
    "ok_frame_schema",
    "part_path",
    "publish",
    "publish_outcome",
    "read_part",
    "repair_part",
    "settled_records",
    "source_of",
]

_log = logging.getLogger("batchframe")
_T = TypeVar("_T")
_R = TypeVar("_R")

RESULTS_DIR = "results"
STAGING_DIR = f"{RESULTS_DIR}/.staging"
#: Where a crash can leave temporary files under a job root (see ``clean_temps``).
TEMP_DIRS = (
    "",
    "shards",
    "outputs",
    "errors",
    RESULTS_DIR,
    STAGING_DIR,
    f"{RESULTS_DIR}/ok",
    f"{RESULTS_DIR}/failed",
)
PARTS = ("ok", "failed")
#: Bump when parsing produces other frames for the same schemas; older files are then rebuilt.
_CACHE_VERSION = 1
#: Shard attempts parsed or read at once: memory tracks this many shards, not the job.
READ_WINDOW = 2
_SOURCE_KEY = "batchframe.source"
_ENDPOINT_KEY = "batchframe.endpoint"


def map_bounded(
    executor: Executor, fn: Callable[[_T], _R], items: Iterable[_T], *, window: int
) -> Iterator[tuple[_T, _R]]:
    """Yield ``(item, fn(item))`` in order, with at most ``window`` calls in flight.

    Results are handed over one at a time, so a caller that keeps only what it needs
    holds about ``window`` results at once however many items there are. With a
    ``window`` of 1 the calls run one after another in the calling thread: a pool
    would add nothing but a thread switch, and each pool thread keeps its own
    allocator arenas (measured: the 100k-row driver of ``bench_scale.py`` peaked
    ~20 MB higher when each parse ran on whichever pool thread was free).
    """
    if window <= 1:
        for item in items:
            yield item, fn(item)
        return
    pending: deque[tuple[_T, Future[_R]]] = deque()
    for item in items:
        pending.append((item, executor.submit(fn, item)))
        if len(pending) >= window:
            first, fut = pending.popleft()
            yield first, fut.result()
    while pending:
        first, fut = pending.popleft()
        yield first, fut.result()


# -- names and schemas ------------------------------------------------------------------
def part_path(part: str, key: str) -> str:
    """Relative path of a published file: ``results/ok/00003.a0.parquet``."""
    return f"{RESULTS_DIR}/{part}/{key}.parquet"


def legacy_names(r: ShardAttempt, tag: str) -> dict[str, str]:
    """Cache files of settled attempt ``r`` as batchframe 0.1 wrote them."""
    assert r.settled_at is not None
    stem = f"{RESULTS_DIR}/{r.key}.{_stamp(r)}.{tag}"
    return {"ok": f"{stem}.ok.parquet", "failed": f"{stem}.failed.parquet"}


def _stamp(r: ShardAttempt) -> str:
    return f"{int((r.settled_at or 0.0) * 1_000_000):x}"


def ok_frame_schema(manifest: Manifest, model: str | None) -> pl.Schema:
    """The declared schema of the ok rows of ``model``'s shards (what parsing produces)."""
    from batchframe._schemas import compile_json_schema, ok_schema

    parsed = compile_json_schema(manifest.json_schema)[0] if manifest.json_schema else None
    return ok_schema(manifest.endpoint, parsed=parsed, embedding_dim=manifest.embedding_dim(model))


def cache_tag(manifest: Manifest, model: str | None) -> str:
    """Digest of the schemas ``model``'s shards are parsed into."""
    from batchframe._schemas import FAILED_SCHEMA

    schemas = (_CACHE_VERSION, ok_frame_schema(manifest, model), FAILED_SCHEMA)
    return hashlib.sha256(repr(schemas).encode()).hexdigest()[:10]


def later_attempts(manifest: Manifest, r: ShardAttempt) -> list[ShardAttempt]:
    """The attempts of ``r``'s shard after ``r``: they hold the rows ``r`` does not keep.

    A row ends with the latest attempt of its shard that holds it. The engine's retries
    form a chain (attempt ``n + 1`` holds some rows of attempt ``n``); ``BatchJob.retry``
    adds attempts holding rows of any earlier attempt.
    """
    return sorted(
        (x for x in manifest.records if x.shard == r.shard and x.attempt > r.attempt),
        key=lambda x: x.attempt,
    )


def source_of(manifest: Manifest, r: ShardAttempt, tag: str) -> str:
    """What a published file of ``r`` was made from: settlement, schemas, later attempts."""
    later = later_attempts(manifest, r)
    if not later:
        digest = "-"
    elif len(later) == 1:
        digest = later[0].sha256[:16]
    else:
        digest = hashlib.sha256(" ".join(x.sha256 for x in later).encode()).hexdigest()[:16]
    return f"{_stamp(r)}.{tag}.{digest}"


def _part_schema(manifest: Manifest, model: str | None, part: str) -> pl.Schema:
    from batchframe._schemas import FAILED_SCHEMA

    return ok_frame_schema(manifest, model) if part == "ok" else FAILED_SCHEMA


# -- one attempt ------------------------------------------------------------------------
def finalize_outcome(outcome: Outcome, retried: Iterable[str], *, endpoint: str) -> Outcome:
    """The rows of an attempt that stay with it: ok rows once each, failures not retried."""
    from batchframe._schemas import ok_key

    ok = outcome.ok_frame  # a spill holds each key once already (`_spill.read_output_file`)
    key = ok_key(endpoint)
    if ok.height and ok.select(pl.struct(key).is_duplicated().any()).item():
        ok = ok.unique(subset=key, keep="first", maintain_order=True)
    ids = pl.Series(list(retried), dtype=pl.String)
    failed = outcome.failed
    if len(ids) and failed.height:
        failed = failed.filter(~pl.col("custom_id").is_in(ids.implode()))
    return dataclasses.replace(outcome, ok_frame=ok, failed=failed)


def settled_outcome(storage: Storage, manifest: Manifest, r: ShardAttempt) -> Outcome:
    """Parse the files of settled attempt ``r`` into the rows that stay with it."""
    outcome = record_outcome(
        storage,
        r,
        endpoint=manifest.endpoint,
        json_schema=manifest.json_schema,
        embedding_dim=manifest.embedding_dim(r.model),
    )
    retried = {i for x in later_attempts(manifest, r) for i in shard_ids(storage, x.path)}
    return finalize_outcome(outcome, retried, endpoint=manifest.endpoint)


def _conform(frame: pl.DataFrame | pl.LazyFrame, schema: pl.Schema) -> pl.DataFrame | pl.LazyFrame:
    """``frame`` with exactly the declared columns, order and types."""
    have = frame.collect_schema()
    if have == schema:
        return frame
    return frame.select(
        pl.col(c).cast(t) if c in have else pl.lit(None, dtype=t).alias(c)
        for c, t in schema.items()
    )


def _parts(outcome: Outcome) -> list[tuple[str, pl.DataFrame | pl.LazyFrame, int, int]]:
    """``(part, rows, number of rows, rows per row group)`` of the two parts of ``outcome``."""
    spill, failed = outcome.spill, outcome.failed
    ok_group = (
        row_group_rows(outcome.ok_frame) if spill is None else _group_rows(spill.bytes_per_row())
    )
    return [
        ("ok", outcome.ok_rows(), outcome.n_ok, ok_group),
        ("failed", failed, failed.height, row_group_rows(failed)),
    ]


def publish_outcome(
    storage: Storage,
    manifest: Manifest,
    r: ShardAttempt,
    outcome: Outcome,
    *,
    tag: str,
    settling: bool = False,
) -> None:
    """Publish ``r``'s final rows: write its non-empty parts, remove the empty ones.

    ``settling``: the engine is settling ``r`` now, so no file of the part can hold
    rows of this settlement yet, and an empty part is not deleted (on object stores a
    DELETE per attempt). A file an earlier settlement of ``r`` left (a crash between
    publishing and saving it) names another settle time in its ``batchframe.source``:
    :func:`publish` removes or rewrites it when the job settles, and readers do before
    they read.
    """
    source = source_of(manifest, r, tag)
    for part, rows, n, group in _parts(outcome):
        rel = part_path(part, r.key)
        if n:
            rows = _conform(rows, _part_schema(manifest, r.model, part))
            meta = {_ENDPOINT_KEY: manifest.endpoint, _SOURCE_KEY: source}
            _write_atomic(storage, rel, rows, meta, group)
        elif not settling:
            storage.delete(rel)


#: Published files up to this size are written from memory in one PUT whose ETag is
#: kept, so the job knows their ``batchframe.source`` without reading their footers.
_TAGGED_WRITE_BYTES = 64 << 20


#: Uncompressed bytes per row group of a published file. The Parquet writer holds a
#: row group's pages until the group is done: a 50,000-row chat shard written as one
#: group cost ~37 MB of peak RSS, in groups of ~8 MB ~17 MB.
_ROW_GROUP_BYTES = 8 << 20


def row_group_rows(frame: pl.DataFrame) -> int:
    """Rows per row group for writing ``frame`` (about ``_ROW_GROUP_BYTES`` each)."""
    return _group_rows(frame.estimated_size() / max(frame.height, 1))


def _group_rows(bytes_per_row: float) -> int:
    return max(1024, min(1 << 20, int(_ROW_GROUP_BYTES / max(bytes_per_row, 1.0))))


def _write_parquet(
    rows: pl.DataFrame | pl.LazyFrame, target: Any, meta: dict[str, str], group: int
) -> None:
    """Write ``rows`` to ``target``; a lazy frame (a spill) is streamed, never collected."""
    if isinstance(rows, pl.LazyFrame):
        rows.sink_parquet(target, metadata=meta or None, row_group_size=group)
    else:
        rows.write_parquet(target, metadata=meta or None, row_group_size=group)


def _write_atomic(
    storage: Storage,
    rel: str,
    frame: pl.DataFrame | pl.LazyFrame,
    meta: dict[str, str],
    group: int,
) -> None:
    """Write ``frame`` to ``rel`` so that no glob over its folder sees it half-written.

    On object stores the object is written directly under its name: an upload appears
    whole or not at all (see ``Storage.open_write``). Elsewhere the bytes go to
    ``results/.staging/`` (outside the published folders, and not named ``*.parquet``:
    a temporary name beside the file would match a glob), then the file is moved into
    place in one step.
    """
    if storage.direct_writes:
        if isinstance(frame, pl.DataFrame) and frame.estimated_size() <= _TAGGED_WRITE_BYTES:
            import io

            buf = io.BytesIO()
            _write_parquet(frame, buf, meta, group)
            storage.write_tagged(rel, buf.getbuffer(), meta[_SOURCE_KEY])
            return
        with storage.open_write(rel) as f:
            _write_parquet(frame, f, meta, group)
        return
    staging = f"{STAGING_DIR}/{writer_tag()}-{uuid.uuid4().hex}.{posixpath.basename(rel)}.part"
    with storage.open_write(staging) as f:
        _write_parquet(frame, f, meta, group)
    try:
        storage.makedirs(posixpath.dirname(rel))
        storage.fs.mv(storage.path(staging), storage.path(rel))
    except BaseException:
        storage.delete(staging)
        raise


# -- the published dataset ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PartFile:
    """One published Parquet file: under the root, or a local copy of it."""

    rel: str
    #: A local filesystem path for the file, when there is one (local roots, mirrors).
    local: str | None
    rows: int | None = None

    def read(self, storage: Storage, columns: list[str] | None = None) -> pl.DataFrame:
        """The file's rows (only ``columns``, when given)."""
        if self.local is not None:
            return pl.read_parquet(self.local, columns=columns)
        with storage.open_read(self.rel) as f:
            return pl.read_parquet(f, columns=columns)


@dataclass(frozen=True, slots=True)
class Published:
    """The published files of the settled attempts, in ``(shard, attempt)`` order."""

    ok: list[PartFile]
    failed: list[PartFile]

    def files(self, part: str) -> list[PartFile]:
        """The files of ``part`` (``"ok"`` or ``"failed"``)."""
        return self.ok if part == "ok" else self.failed


def settled_records(manifest: Manifest, *, partial: bool) -> list[ShardAttempt]:
    """Settled attempts in ``(shard, attempt)`` order; raise when some are not and not partial."""
    if not partial and not all(r.is_settled for r in manifest.records):
        open_ = [r for r in manifest.records if not r.is_settled]
        msg = (
            f"job {manifest.job_id} has {len(open_)} shard attempt(s) not settled yet "
            f"({sum(r.n_requests for r in open_):,} requests); call `job.wait()` first, "
            "or pass `partial=True` for the rows finished so far"
        )
        raise JobNotSettledError(msg)
    return sorted((r for r in manifest.records if r.is_settled), key=lambda r: (r.shard, r.attempt))


def _count(r: ShardAttempt, part: str) -> int | None:
    return r.n_ok if part == "ok" else r.n_final_failed


def _list(storage: Storage, rel: str) -> set[str]:
    try:
        return set(storage.list(rel))
    except Exception:  # pragma: no cover - a root that cannot be listed
        _log.debug("could not list %s", storage.url(rel), exc_info=True)
        return set()


def _file_source(storage: Storage, rel: str, local: bool) -> str | None:
    known = None if local else storage.note_of(rel)
    if known is not None:  # written by this job object, and listed unchanged since
        return known
    try:
        if local:
            # Polars reads the footer alone; pyarrow.parquet would load ~10 MB of
            # libraries into a driver that has no other use for them.
            return pl.read_parquet_metadata(storage.path(rel)).get(_SOURCE_KEY)
        import pyarrow.parquet as pq  # a remote file: only its footer is fetched

        with storage.open_read(rel) as f:
            meta = pq.read_metadata(f).metadata or {}
    except Exception:  # unreadable or gone: rebuilt
        _log.debug("could not read the footer of %s", rel, exc_info=True)
        return None
    value = meta.get(_SOURCE_KEY.encode())
    return value.decode() if value is not None else None


def is_local(storage: Storage) -> bool:
    proto = storage.fs.protocol
    return "file" in ({proto} if isinstance(proto, str) else set(proto))


def mirror_dir(job_id: str) -> Path:
    """Local directory for copies of a remote root's files (and of unwritable roots')."""
    return Path(tempfile.gettempdir()) / "batchframe-cache" / job_id


def publish(
    storage: Storage,
    manifest: Manifest,
    *,
    executor: Executor,
    partial: bool,
    write: bool = True,
    mirror: Callable[[str], Path] = mirror_dir,
    fetch: Fetch | None = None,
) -> Published:
    """Make sure every settled attempt's files are published; return them in order.

    A file that is missing or stale (see the module docstring) is rebuilt from the
    batchframe 0.1 cache when there is one, else by parsing the attempt's output and
    error files; attempts are rebuilt ``READ_WINDOW`` at a time. On a root that cannot
    be written (or with ``write=False``), rebuilt files go to a local mirror directory
    instead. Files of a settled job that belong to no attempt are deleted.

    An output or error file needed for a rebuild that was deleted is downloaded again
    with ``fetch`` (``fetch(file_id, rel)``, given when the caller has a client) while
    the provider still has it; else the rows it held are reported lost (see
    :func:`_lost_outcome`) and the rest stays readable.
    """
    settled = settled_records(manifest, partial=partial)
    local = is_local(storage)
    listing = _list(storage, f"{RESULTS_DIR}/ok") | _list(storage, f"{RESULTS_DIR}/failed")
    legacy = _list(storage, RESULTS_DIR)
    tags: dict[str | None, str] = {}
    for r in settled:
        if r.model not in tags:
            tags[r.model] = cache_tag(manifest, r.model)
    sources = {r.key: source_of(manifest, r, tags[r.model]) for r in settled}
    base = mirror(manifest.job_id)

    def fresh(r: ShardAttempt) -> dict[str, PartFile | None] | None:
        """``r``'s published files, or None when any is missing or stale."""
        out: dict[str, PartFile | None] = {}
        for part in PARTS:
            rel = part_path(part, r.key)
            if rel not in listing:
                if _count(r, part) != 0:
                    return None
                out[part] = None
                continue
            if _file_source(storage, rel, local) != sources[r.key]:
                return None
            out[part] = PartFile(rel, storage.path(rel) if local else None, _count(r, part))
        return out

    def mirrored(r: ShardAttempt) -> dict[str, PartFile | None] | None:
        out: dict[str, PartFile | None] = {}
        for part in PARTS:
            path = base / f"{r.key}.{sources[r.key]}.{part}.parquet"
            empty = base / f"{r.key}.{sources[r.key]}.{part}.empty"
            if path.exists():
                out[part] = PartFile(part_path(part, r.key), str(path))
            elif empty.exists():
                out[part] = None
            else:
                return None
        return out

    def rebuild(r: ShardAttempt) -> dict[str, PartFile | None]:
        return _rebuild(
            storage, manifest, r, tag=tags[r.model], write=write, base=base, legacy=legacy,
            fetch=fetch,
        )  # fmt: skip

    def ensure(r: ShardAttempt) -> dict[str, PartFile | None]:
        return fresh(r) or mirrored(r) or rebuild(r)

    oks: list[PartFile] = []
    fails: list[PartFile] = []
    for _, files in map_bounded(executor, ensure, settled, window=READ_WINDOW):
        if files["ok"] is not None:
            oks.append(files["ok"])
        if files["failed"] is not None:
            fails.append(files["failed"])
    if write and not partial:
        _remove_strays(storage, listing, settled, base)
    return Published(oks, fails)


#: ``fetch(file_id, rel)``: download a provider file into ``rel`` under the root again.
Fetch = Callable[[str, str], object]
#: Why a row is in ``failed`` when the file that held its answer is gone for good.
LOST_CODE = "output_file_lost"


def _rebuild(
    storage: Storage,
    manifest: Manifest,
    r: ShardAttempt,
    *,
    tag: str,
    write: bool,
    base: Path,
    legacy: set[str],
    fetch: Fetch | None,
) -> dict[str, PartFile | None]:
    """Publish ``r``'s rows again from the 0.1 cache or its output and error files."""
    source = source_of(manifest, r, tag)
    outcome = _from_legacy(storage, r, tag, legacy)
    lost = False
    if outcome is None:
        gone = _missing_files(storage, manifest, r, fetch)
        if gone:
            outcome = _lost_outcome(storage, manifest, r, gone)
            lost = True
        else:
            outcome = settled_outcome(storage, manifest, r)
    try:
        return _publish_rebuilt(
            storage,
            manifest,
            r,
            outcome,
            tag=tag,
            write=write and not lost,
            base=base,
            mirror_source=source + (".lost" if lost else ""),
        )
    finally:
        outcome.release()  # a spill's files: the rows are written by now


def _publish_rebuilt(
    storage: Storage,
    manifest: Manifest,
    r: ShardAttempt,
    outcome: Outcome,
    *,
    tag: str,
    write: bool,
    base: Path,
    mirror_source: str,
) -> dict[str, PartFile | None]:
    """Publish ``outcome`` under the root (``write``), else or failing that in ``base``."""
    if write:
        try:
            publish_outcome(storage, manifest, r, outcome, tag=tag)
            return {
                part: PartFile(
                    part_path(part, r.key),
                    storage.path(part_path(part, r.key)) if is_local(storage) else None,
                    n,
                )
                if n
                else None
                for part, _, n, _ in _parts(outcome)
            }
        except Exception:
            _log.info(
                "could not publish the results of %s under %s; keeping them in %s",
                r.key,
                storage.url(RESULTS_DIR),
                base,
                exc_info=True,
            )
    # Rows of a lost file are never published: if the file comes back (downloaded again
    # by a job with a client), the next read publishes the real rows.
    return _to_mirror(base, r, mirror_source, manifest, outcome)


def _missing_files(
    storage: Storage, manifest: Manifest, r: ShardAttempt, fetch: Fetch | None
) -> dict[str, str]:
    """``r``'s output or error files that are gone and could not be downloaded again.

    Returns ``{rel: why}``; a file fetched again is not in it.
    """
    deleted = set(manifest.options.get("deleted_files") or [])
    gone: dict[str, str] = {}
    for rel, file_id in ((r.output_path, r.output_file_id), (r.error_path, r.error_file_id)):
        if rel is None or storage.exists(rel):
            continue
        why = "no client to download it again"
        if file_id is not None and file_id in deleted:
            why = (
                f"provider file {file_id} was deleted once the rows were stored; "
                "`keep_files=True` (or 'output'/'error') keeps it for a case like this"
            )
        elif fetch is not None and file_id is not None:
            try:
                fetch(file_id, rel)
            except Exception as exc:
                why = f"downloading provider file {file_id} again failed: {exc}"
            else:
                _log.warning(
                    "%s (shard %d, attempt %d) was missing; downloaded it again from file %s",
                    storage.url(rel),
                    r.shard,
                    r.attempt,
                    file_id,
                )
                continue
        elif file_id is None:
            why = "its provider file id is unknown"
        gone[rel] = why
    return gone


def _lost_outcome(
    storage: Storage, manifest: Manifest, r: ShardAttempt, gone: dict[str, str]
) -> Outcome:
    """``r``'s rows when some of its downloaded files are gone for good.

    The rows of the files that are left are parsed as usual; the other rows of the
    attempt (from its shard file, minus those retried in a child attempt) are failed
    with stage ``"lost"`` and error code ``output_file_lost``, saying which file is
    gone and why. A warning names the shard, the attempt and how many rows are lost.
    """
    from batchframe._retry import _failed_rows

    partial = dataclasses.replace(
        r,
        output_path=r.output_path if r.output_path not in gone else None,
        error_path=r.error_path if r.error_path not in gone else None,
    )
    child = manifest.record(r.shard, r.attempt + 1)
    try:
        outcome = record_outcome(
            storage,
            partial,
            endpoint=manifest.endpoint,
            json_schema=manifest.json_schema,
            embedding_dim=manifest.embedding_dim(r.model),
        )
        retried = shard_ids(storage, child.path) if child is not None else []
    except FileNotFoundError as exc:
        msg = (
            f"shard {r.shard} attempt {r.attempt} of job {manifest.job_id}: "
            f"{', '.join(storage.url(g) for g in gone)} and its input `{r.path}` are gone "
            f"({exc}); its {r.n_requests:,} rows cannot be read back. Restore the files "
            "from a backup, or rerun those rows under a new root"
        )
        raise ResultsError(msg) from exc
    files = ", ".join(f"`{storage.url(g)}` ({why})" for g, why in gone.items())
    # The rows the files that are left do not account for: the attempt's "missing"
    # rows, which in truth had their answer in a file that is gone.
    found = outcome.failed.filter(pl.col("stage") != "missing")
    lost_ids = outcome.failed.filter(pl.col("stage") == "missing")["custom_id"]
    ids = pl.Series(retried, dtype=pl.String)
    lost_ids = lost_ids.filter(~lost_ids.is_in(ids.implode()))
    message = (
        f"the result of this request was in {files}, which was deleted and cannot be "
        "downloaded again; rerun the row to get it"
    )
    lost = _failed_rows(
        lost_ids.to_list(),
        stage="lost",
        error_code=LOST_CODE,
        error_message=message,
        retryable=False,
        attempts=r.attempt + 1,
        batch_id=r.batch_id,
    )
    expected_ok = r.n_ok if r.n_ok is not None else "?"
    _log.warning(
        "shard %d attempt %d of job %s: %d row(s) lost (%s ok row(s) were recorded): %s. "
        "They are in `failed` with stage 'lost'; the other rows are kept",
        r.shard,
        r.attempt,
        manifest.job_id,
        lost.height,
        expected_ok,
        files,
    )
    failed = pl.concat([found, lost], how="vertical_relaxed") if lost.height else found
    outcome = dataclasses.replace(outcome, failed=failed)
    return finalize_outcome(outcome, retried, endpoint=manifest.endpoint)


def repair_part(
    storage: Storage,
    manifest: Manifest,
    f: PartFile,
    exc: BaseException,
    *,
    mirror: Callable[[str], Path] = mirror_dir,
    fetch: Fetch | None = None,
) -> PartFile | None:
    """Rebuild the damaged published (or mirrored) file ``f`` from its attempt's files.

    Returns the file that replaces it (``None``: the part holds no rows).

    Raises
    ------
    ResultsError
        ``f`` belongs to no settled attempt of the job (``exc`` chained).
    """
    _, part, name = f.rel.split("/")
    key = name[: -len(".parquet")]
    record = next((r for r in manifest.records if r.key == key and r.is_settled), None)
    where = f.local or storage.url(f.rel)
    if record is None or part not in PARTS:
        msg = f"the results file `{where}` cannot be read ({exc}) and belongs to no attempt"
        raise ResultsError(msg) from exc
    _log.warning(
        "the results file %s cannot be read (%s: %s); rebuilding it from the output files "
        "of shard %d attempt %d",
        where,
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
        record.shard,
        record.attempt,
    )
    if f.local is not None and f.local != storage.path(f.rel):
        Path(f.local).unlink(missing_ok=True)  # a mirrored copy
    else:
        storage.delete(f.rel)
    files = _rebuild(
        storage,
        manifest,
        record,
        tag=cache_tag(manifest, record.model),
        write=True,
        base=mirror(manifest.job_id),
        legacy=set(),
        fetch=fetch,
    )
    return files[part]


def read_part(
    storage: Storage,
    manifest: Manifest,
    f: PartFile,
    *,
    mirror: Callable[[str], Path] = mirror_dir,
    fetch: Fetch | None = None,
) -> pl.DataFrame:
    """The rows of published file ``f``; a damaged file is rebuilt first (with a warning)."""
    try:
        return f.read(storage)
    except Exception as exc:  # polars ComputeError, pyarrow ArrowInvalid, OSError...
        again = repair_part(storage, manifest, f, exc, mirror=mirror, fetch=fetch)
    if again is None:  # rebuilt, and the part holds no rows after all
        _, part, name = f.rel.split("/")
        r = next(r for r in manifest.records if r.key == name[: -len(".parquet")])
        return pl.DataFrame(schema=_part_schema(manifest, r.model, part))
    return again.read(storage)


def _remove_strays(
    storage: Storage, listing: set[str], settled: list[ShardAttempt], base: Path
) -> None:
    """Delete files of a settled job that belong to none of its attempts.

    That is published files of no attempt, and temporary files a crash left behind
    (see :func:`clean_temps`).
    """
    expected = {part_path(p, r.key) for r in settled for p in PARTS}
    for rel in sorted(listing - expected):
        try:
            storage.delete(rel)
            _log.info("removed %s: it holds no rows of the settled job", rel)
        except Exception:
            _log.debug("could not remove %s", rel, exc_info=True)
    clean_temps(storage, base)


def clean_temps(storage: Storage, mirror: Path | None = None) -> list[str]:
    """Remove the temporary files a crash left under the job root (and in ``mirror``).

    A write that was killed leaves its temporary file (``.tmp-*`` beside its target,
    ``results/.staging/*.part`` for published files). Each name carries its writer
    (host and pid), so only files of processes that are gone are removed, and files of
    writers that cannot be checked from here once they are a day old: a file another
    live process (a reader publishing, another job's driver) is writing stays. The job
    calls this when it is opened and when it settles. Returns what was removed.
    """
    removed: list[str] = []
    try:
        removed = list(storage.remove_stale_temps(TEMP_DIRS))
        if mirror is not None and mirror.is_dir():
            removed += [
                str(mirror / name) for name in Storage(str(mirror)).remove_stale_temps([""])
            ]
    except Exception:  # cleaning is best effort: never stop a job for it
        _log.debug("could not clean temporary files under %s", storage.root_url, exc_info=True)
    if removed:
        _log.info(
            "removed %d temporary file(s) left by a crash under %s: %s",
            len(removed),
            storage.root_url,
            ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""),
        )
    return removed


def _from_legacy(storage: Storage, r: ShardAttempt, tag: str, legacy: set[str]) -> Outcome | None:
    """``r``'s rows from batchframe 0.1's cache files, when they are all there."""
    names = legacy_names(r, tag)
    frames: dict[str, pl.DataFrame] = {}
    for part in PARTS:
        if names[part] in legacy:
            try:
                with storage.open_read(names[part]) as f:
                    frames[part] = pl.read_parquet(f)
            except Exception:  # damaged or gone: parse the output files instead
                _log.warning("the cache file %s cannot be read; ignoring it", names[part])
                return None
        elif _count(r, part) == 0:
            frames[part] = pl.DataFrame()
        else:
            return None
    return Outcome(frames["ok"], frames["failed"])


def _to_mirror(
    base: Path, r: ShardAttempt, source: str, manifest: Manifest, outcome: Outcome
) -> dict[str, PartFile | None]:
    base.mkdir(parents=True, exist_ok=True)
    out: dict[str, PartFile | None] = {}
    for part, rows, n, group in _parts(outcome):
        stem = f"{r.key}.{source}.{part}"
        if not n:
            (base / f"{stem}.empty").touch()
            out[part] = None
            continue
        target = base / f"{stem}.parquet"
        tmp = target.with_name(temp_name(target.name))
        _write_parquet(_conform(rows, _part_schema(manifest, r.model, part)), tmp, {}, group)
        os.replace(tmp, target)
        out[part] = PartFile(part_path(part, r.key), str(target), n)
    return out


def local_copy(storage: Storage, f: PartFile, mirror: Path) -> str:
    """A local path of ``f``: its own, or a copy in ``mirror`` (made once per source)."""
    if f.local is not None:
        return f.local
    source = _file_source(storage, f.rel, local=False) or "x"
    target = mirror / f"{posixpath.basename(f.rel)[: -len('.parquet')]}.{source}.copy.parquet"
    if not target.exists():
        mirror.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(temp_name(target.name))
        with storage.open_read(f.rel) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.replace(tmp, target)
    return str(target)
