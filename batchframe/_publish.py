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
from typing import TypeVar

import polars as pl

from batchframe._manifest import Manifest, ShardAttempt
from batchframe._retry import Outcome, record_outcome, shard_ids
from batchframe._storage import Storage
from batchframe.exceptions import JobNotSettledError

__all__ = [
    "PARTS",
    "RESULTS_DIR",
    "PartFile",
    "cache_tag",
    "finalize_outcome",
    "later_attempts",
    "legacy_names",
    "map_bounded",
    "ok_frame_schema",
    "part_path",
    "publish",
    "publish_outcome",
    "settled_records",
    "source_of",
]

_log = logging.getLogger("batchframe")
_T = TypeVar("_T")
_R = TypeVar("_R")

RESULTS_DIR = "results"
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
    holds about ``window`` results at once however many items there are.
    """
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

    ok = outcome.ok
    key = ok_key(endpoint)
    if ok.height and ok.select(pl.struct(key).is_duplicated().any()).item():
        ok = ok.unique(subset=key, keep="first", maintain_order=True)
    ids = pl.Series(list(retried), dtype=pl.String)
    failed = outcome.failed
    if len(ids) and failed.height:
        failed = failed.filter(~pl.col("custom_id").is_in(ids.implode()))
    return Outcome(ok, failed)


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


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``frame`` with exactly the declared columns, order and types."""
    if frame.schema == schema:
        return frame
    return frame.select(
        pl.col(c).cast(t) if c in frame.columns else pl.lit(None, dtype=t).alias(c)
        for c, t in schema.items()
    )


def publish_outcome(
    storage: Storage, manifest: Manifest, r: ShardAttempt, outcome: Outcome, *, tag: str
) -> None:
    """Publish ``r``'s final rows: write its non-empty parts, remove the empty ones."""
    source = source_of(manifest, r, tag)
    for part, frame in (("ok", outcome.ok), ("failed", outcome.failed)):
        rel = part_path(part, r.key)
        if frame.height:
            frame = _conform(frame, _part_schema(manifest, r.model, part))
            _write_atomic(
                storage, rel, frame, {_ENDPOINT_KEY: manifest.endpoint, _SOURCE_KEY: source}
            )
        else:
            storage.delete(rel)


def _write_atomic(storage: Storage, rel: str, frame: pl.DataFrame, meta: dict[str, str]) -> None:
    """Write ``frame`` to ``rel`` so that no glob over its folder sees it half-written.

    On object stores the object is written directly under its name: an upload appears
    whole or not at all (see ``Storage.open_write``). Elsewhere the bytes go to
    ``results/.staging/`` (outside the published folders, and not named ``*.parquet``:
    a temporary name beside the file would match a glob), then the file is moved into
    place in one step.
    """
    if storage.direct_writes:
        with storage.open_write(rel) as f:
            frame.write_parquet(f, metadata=meta)
        return
    staging = f"{RESULTS_DIR}/.staging/{uuid.uuid4().hex}.{posixpath.basename(rel)}.part"
    with storage.open_write(staging) as f:
        frame.write_parquet(f, metadata=meta)
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
    import pyarrow.parquet as pq

    try:
        if local:
            meta = pq.read_metadata(storage.path(rel)).metadata or {}
        else:
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
) -> Published:
    """Make sure every settled attempt's files are published; return them in order.

    A file that is missing or stale (see the module docstring) is rebuilt from the
    batchframe 0.1 cache when there is one, else by parsing the attempt's output and
    error files; attempts are rebuilt ``READ_WINDOW`` at a time. On a root that cannot
    be written (or with ``write=False``), rebuilt files go to a local mirror directory
    instead. Files of a settled job that belong to no attempt are deleted.
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
        tag = tags[r.model]
        outcome = _from_legacy(storage, r, tag, legacy) or settled_outcome(storage, manifest, r)
        if write:
            try:
                publish_outcome(storage, manifest, r, outcome, tag=tag)
                return {
                    part: PartFile(
                        part_path(part, r.key),
                        storage.path(part_path(part, r.key)) if local else None,
                        frame.height,
                    )
                    if frame.height
                    else None
                    for part, frame in (("ok", outcome.ok), ("failed", outcome.failed))
                }
            except Exception:
                _log.info(
                    "could not publish the results of %s under %s; keeping them in %s",
                    r.key,
                    storage.url(RESULTS_DIR),
                    base,
                    exc_info=True,
                )
        return _to_mirror(base, r, sources[r.key], manifest, outcome)

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
        _remove_strays(storage, listing, settled)
    return Published(oks, fails)


def _remove_strays(storage: Storage, listing: set[str], settled: list[ShardAttempt]) -> None:
    """Delete files of a settled job that belong to none of its attempts.

    That is published files of no attempt, and staging files a crash left behind
    (nothing writes them once every attempt is settled).
    """
    expected = {part_path(p, r.key) for r in settled for p in PARTS}
    staged = {rel for rel in _list(storage, f"{RESULTS_DIR}/.staging") if rel.endswith(".part")}
    for rel in sorted((listing - expected) | staged):
        try:
            storage.delete(rel)
            _log.info("removed %s: it holds no rows of the settled job", rel)
        except Exception:
            _log.debug("could not remove %s", rel, exc_info=True)


def _from_legacy(storage: Storage, r: ShardAttempt, tag: str, legacy: set[str]) -> Outcome | None:
    """``r``'s rows from batchframe 0.1's cache files, when they are all there."""
    names = legacy_names(r, tag)
    frames: dict[str, pl.DataFrame] = {}
    for part in PARTS:
        if names[part] in legacy:
            with storage.open_read(names[part]) as f:
                frames[part] = pl.read_parquet(f)
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
    for part, frame in (("ok", outcome.ok), ("failed", outcome.failed)):
        stem = f"{r.key}.{source}.{part}"
        if not frame.height:
            (base / f"{stem}.empty").touch()
            out[part] = None
            continue
        target = base / f"{stem}.parquet"
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        _conform(frame, _part_schema(manifest, r.model, part)).write_parquet(tmp)
        os.replace(tmp, target)
        out[part] = PartFile(part_path(part, r.key), str(target), frame.height)
    return out


def local_copy(storage: Storage, f: PartFile, mirror: Path) -> str:
    """A local path of ``f``: its own, or a copy in ``mirror`` (made once per source)."""
    if f.local is not None:
        return f.local
    source = _file_source(storage, f.rel, local=False) or "x"
    target = mirror / f"{posixpath.basename(f.rel)[: -len('.parquet')]}.{source}.copy.parquet"
    if not target.exists():
        mirror.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        with storage.open_read(f.rel) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.replace(tmp, target)
    return str(target)
