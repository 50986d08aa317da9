"""Results of a job from its root alone: ``bf.read_results`` and ``bf.scan_results``.

No client, no API key and no lock are needed: everything comes from ``manifest.json``
and the files beside it. Each settled shard attempt's rows are parsed once into two
Parquet files under ``results/`` (written by the job when it settles the attempt, or by
the first reader that finds them missing)::

    results/00003.a0.<settled>.<schema>.ok.parquet       ok rows of shard 3, attempt 0
    results/00003.a0.<settled>.<schema>.failed.parquet   its final failures (not the
                                                         rows retried in attempt 1)

``<settled>`` is the attempt's settle time, so a file never stands for another
settlement; ``<schema>`` is a digest of the declared schemas the rows were parsed into
(and of ``_CACHE_VERSION``), so a batchframe that parses into other columns ignores old
files instead of mixing them. An empty part has no file at all. These files are a cache:
deleting ``results/`` loses nothing, the next read parses the output and error files
again. Bump ``_CACHE_VERSION`` when parsing changes what it produces for the same schema.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import polars as pl

from batchframe._manifest import Manifest, ShardAttempt
from batchframe._report import batches_frame
from batchframe._retry import Outcome, record_outcome, shard_ids
from batchframe._storage import Storage
from batchframe.exceptions import JobNotSettledError

if TYPE_CHECKING:
    from batchframe._results import BatchResults

__all__ = [
    "CACHE_DIR",
    "cache_names",
    "cache_tag",
    "collect_results",
    "finalize_outcome",
    "map_bounded",
    "ok_frame_schema",
    "read_results",
    "scan_results",
    "settled_outcome",
    "write_cache",
]

_log = logging.getLogger("batchframe")
_T = TypeVar("_T")
_R = TypeVar("_R")

CACHE_DIR = "results"
#: Bump when the cached frames change for the same schemas; older files are then ignored.
_CACHE_VERSION = 1
#: Shard attempts parsed at once when reading: memory tracks this many shards, not the job.
READ_WINDOW = 2


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


# -- one settled shard attempt -----------------------------------------------------------
def ok_frame_schema(manifest: Manifest, model: str | None) -> pl.Schema:
    """The declared schema of the ok rows of ``model``'s shards (what parsing produces)."""
    from batchframe._schemas import compile_json_schema, ok_schema

    parsed = compile_json_schema(manifest.json_schema)[0] if manifest.json_schema else None
    return ok_schema(manifest.endpoint, parsed=parsed, embedding_dim=manifest.embedding_dim(model))


def cache_tag(manifest: Manifest, model: str | None) -> str:
    """Digest of the schemas ``model``'s shards are parsed into, for cache file names."""
    from batchframe._schemas import FAILED_SCHEMA

    schemas = (_CACHE_VERSION, ok_frame_schema(manifest, model), FAILED_SCHEMA)
    return hashlib.sha256(repr(schemas).encode()).hexdigest()[:10]


def cache_names(r: ShardAttempt, tag: str) -> dict[str, str]:
    """Relative paths of the cached ``ok`` and ``failed`` frames of settled attempt ``r``."""
    if r.settled_at is None:
        msg = f"shard attempt {r.key} is not settled; it has no cached results"
        raise ValueError(msg)
    stem = f"{CACHE_DIR}/{r.key}.{int(r.settled_at * 1_000_000):x}.{tag}"
    return {"ok": f"{stem}.ok.parquet", "failed": f"{stem}.failed.parquet"}


def _count(r: ShardAttempt, part: str) -> int | None:
    return r.n_ok if part == "ok" else r.n_final_failed


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
    child = manifest.record(r.shard, r.attempt + 1)
    retried = shard_ids(storage, child.path) if child is not None else []
    return finalize_outcome(outcome, retried, endpoint=manifest.endpoint)


def write_cache(
    storage: Storage, r: ShardAttempt, outcome: Outcome, *, endpoint: str, tag: str
) -> None:
    """Write the non-empty parts of ``outcome`` as ``r``'s cached frames (atomically)."""
    names = cache_names(r, tag)
    for part, frame in (("ok", outcome.ok), ("failed", outcome.failed)):
        if frame.height:
            with storage.open_write(names[part]) as f:
                frame.write_parquet(f, metadata={"batchframe.endpoint": endpoint})


def _is_local(storage: Storage) -> bool:
    proto = storage.fs.protocol
    return "file" in ({proto} if isinstance(proto, str) else set(proto))


def _read_parquet(storage: Storage, rel: str) -> pl.DataFrame:
    if _is_local(storage):
        return pl.read_parquet(storage.path(rel))
    with storage.open_read(rel) as f:
        return pl.read_parquet(f)


def _empty_ok(manifest: Manifest) -> pl.DataFrame:
    """The ok frame of a job without a single success (typed with a known width, if any)."""
    model = next(iter(manifest.embedding_dims), None)
    return pl.DataFrame(schema=ok_frame_schema(manifest, model))


def _empty_failed() -> pl.DataFrame:
    from batchframe._schemas import FAILED_SCHEMA

    return pl.DataFrame(schema=FAILED_SCHEMA)


#: Stands for an empty part of a shard attempt: never read, never concatenated.
_NOTHING = pl.DataFrame()


class _Tags:
    """Cache tags per model, computed once per read."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._tags: dict[str | None, str] = {}

    def __call__(self, model: str | None) -> str:
        if model not in self._tags:
            self._tags[model] = cache_tag(self._manifest, model)
        return self._tags[model]


def _load(
    storage: Storage,
    manifest: Manifest,
    r: ShardAttempt,
    *,
    tag: str,
    cached: set[str],
    write: bool,
) -> Outcome:
    """``r``'s rows from its cached frames, parsing (and caching) them when missing."""
    names = cache_names(r, tag)
    frames: dict[str, pl.DataFrame] = {}
    for part in ("ok", "failed"):
        if _count(r, part) == 0:
            frames[part] = _NOTHING
        elif names[part] in cached:
            frames[part] = _read_parquet(storage, names[part])
    if len(frames) == 2:
        return Outcome(frames["ok"], frames["failed"])
    outcome = settled_outcome(storage, manifest, r)
    if write:
        try:
            write_cache(storage, r, outcome, endpoint=manifest.endpoint, tag=tag)
        except Exception:  # a read-only root: the rows are still returned
            _log.debug("could not cache the results of %s", r.key, exc_info=True)
    return outcome


def _settled(manifest: Manifest, *, partial: bool) -> list[ShardAttempt]:
    if not partial and not all(r.is_settled for r in manifest.records):
        open_ = [r for r in manifest.records if not r.is_settled]
        msg = (
            f"job {manifest.job_id} has {len(open_)} shard attempt(s) not settled yet "
            f"({sum(r.n_requests for r in open_):,} requests); call `job.wait()` first, "
            "or pass `partial=True` for the rows finished so far"
        )
        raise JobNotSettledError(msg)
    return sorted((r for r in manifest.records if r.is_settled), key=lambda r: (r.attempt, r.shard))


def _listing(storage: Storage) -> set[str]:
    try:
        return set(storage.list(CACHE_DIR))
    except Exception:  # pragma: no cover - a root that cannot be listed
        _log.debug("could not list %s", storage.url(CACHE_DIR), exc_info=True)
        return set()


def collect_results(
    storage: Storage,
    manifest: Manifest,
    *,
    executor: Executor,
    partial: bool,
    write: bool = True,
) -> BatchResults:
    """Every settled row as ok or failed; a row retried in a child attempt counts there.

    Shard attempts are read ``READ_WINDOW`` at a time, from their cached Parquet files
    when present, so the memory used beyond the result itself tracks one shard.
    """
    from batchframe._results import BatchResults

    settled = _settled(manifest, partial=partial)
    cached = _listing(storage)
    tags = _Tags(manifest)
    for r in settled:
        tags(r.model)  # computed here, not in the worker threads
    oks: list[pl.DataFrame] = []
    fails: list[pl.DataFrame] = []

    def load(r: ShardAttempt) -> Outcome:
        return _load(storage, manifest, r, tag=tags(r.model), cached=cached, write=write)

    for _, out in map_bounded(executor, load, settled, window=READ_WINDOW):
        if out.ok.height:
            oks.append(out.ok)
        if out.failed.height:
            fails.append(out.failed)
    if not oks:
        oks.append(_empty_ok(manifest))
    results = BatchResults.from_parts(
        oks, fails, endpoint=manifest.endpoint, batches=batches_frame(manifest)
    )
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


# -- public readers ------------------------------------------------------------------------
def read_results(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> BatchResults:
    """Read the results of the job at ``root``: the same as ``job.collect()``, no client.

    Works from any process or machine that can read the job root, while the job runs
    elsewhere or long after it finished; it takes no lock and needs no API key. Shard
    attempts are read one or two at a time from their cached Parquet files (parsed
    from the output and error files, and cached under ``results/``, when missing).

    Parameters
    ----------
    root
        The job's directory or fsspec URL.
    storage_options
        fsspec options for ``root`` (credentials, endpoint URL, ...).
    partial
        Return the rows settled so far instead of raising when the job is still running.

    Returns
    -------
    BatchResults
        ``ok``, ``failed`` and ``batches``, every input row in exactly one of ``ok`` and
        ``failed`` once the job is settled.

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
        return collect_results(storage, manifest, executor=pool, partial=partial)


def _mirror_dir(job_id: str) -> Path:
    """Local directory that holds copies of a remote root's cached frames."""
    return Path(tempfile.gettempdir()) / "batchframe-cache" / job_id


def _local_copy(storage: Storage, rel: str, mirror: Path) -> str:
    target = mirror / posixpath.basename(rel)
    if not target.exists():  # names are unique per settlement, so a copy never goes stale
        mirror.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        with storage.open_read(rel) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.replace(tmp, target)
    return str(target)


def scan_results(
    root: str | os.PathLike[str],
    *,
    part: Literal["ok", "failed", "batches"] = "ok",
    storage_options: Mapping[str, Any] | None = None,
    partial: bool = False,
) -> pl.LazyFrame:
    """Lazily scan the results of the job at ``root``: a ``pl.LazyFrame``, no client.

    The frame is a ``pl.scan_parquet`` over one Parquet file per settled shard attempt,
    so filters and column selections are pushed down and only what the query needs is
    read. Each attempt's output and error files are parsed into those files once (the
    job does it as it settles each attempt; this function does it for attempts that
    lack them, one or two at a time). For a local root the files under
    ``<root>/results/`` are scanned in place; for a remote root (``s3://``,
    ``memory://``, ...) they are copied once into a local cache directory
    (``$TMPDIR/batchframe-cache/<job_id>``) and scanned from there.

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
    settled = _settled(manifest, partial=partial)
    if part == "batches":
        return batches_frame(manifest).lazy()
    cached = _listing(storage)
    mirror = _mirror_dir(manifest.job_id)
    local = _is_local(storage)
    tags = _Tags(manifest)
    for r in settled:
        tags(r.model)

    def here(rel: str) -> str:
        return storage.path(rel) if local else _local_copy(storage, rel, mirror)

    def ensure(r: ShardAttempt) -> str | None:
        """Local path of ``r``'s cached ``part``, parsing and caching it when missing."""
        rel = cache_names(r, tags(r.model))[part]
        if _count(r, part) == 0:
            return None
        if rel in cached:
            return here(rel)
        kept = mirror / posixpath.basename(rel)
        if kept.exists():  # parsed by an earlier scan that could not write to the root
            return str(kept)
        outcome = settled_outcome(storage, manifest, r)
        frame = outcome.ok if part == "ok" else outcome.failed
        try:
            write_cache(storage, r, outcome, endpoint=manifest.endpoint, tag=tags(r.model))
        except Exception:
            _log.info(
                "could not write cached results under %s; keeping them in %s",
                storage.url(CACHE_DIR),
                mirror,
                exc_info=True,
            )
            if not frame.height:
                return None
            mirror.mkdir(parents=True, exist_ok=True)
            tmp = kept.with_name(f".tmp-{os.getpid()}-{kept.name}")
            frame.write_parquet(tmp)
            os.replace(tmp, kept)
            return str(kept)
        return here(rel) if frame.height else None

    with ThreadPoolExecutor(max_workers=READ_WINDOW, thread_name_prefix="batchframe") as pool:
        paths = [p for _, p in map_bounded(pool, ensure, settled, window=READ_WINDOW) if p]
    if not paths:
        empty = _empty_ok(manifest) if part == "ok" else _empty_failed()
        return empty.lazy()
    return pl.scan_parquet(paths)
