"""Requests over a Ray Data or Dask input: the engine's workers build and write shards.

An engine input (a ``ray.data.Dataset``, a ``dask.dataframe.DataFrame``) is never pulled
through the driver. A pass runs in three steps:

1. **Unique ids, with the engine.** The ids are evaluated on the workers and counted by
   the engine's own group-by (a shuffle); only the count of repeated ids and a few
   examples come back to the driver. Nothing is written if an id repeats.
2. **Partitions build and write.** Each worker takes one partition (a Dask partition, a
   Ray block), evaluates the template on it with Polars, plans its rows with the same
   greedy planner as one machine, and writes every *full* shard straight into the job
   root (which must be shared storage: ``s3://...``, or a path every worker sees). What
   is left at the end of a partition, at most one partial shard per model, is written
   too and reported as a leftover. Only per-shard totals and checksums come back.
3. **Leftovers are packed.** The driver packs the leftovers of all partitions into as
   few shards as the limits allow (first-fit decreasing, one model per shard); a
   leftover alone in its shard stays as it is, and each shard made of several is
   concatenated by one engine task. So a job has the full shards one machine would
   make, plus a few packed ones, rather than one partial shard per model per partition.

Shards are numbered full shards first (in partition order), then packed ones, and
their file names carry the pass; the manifest records each shard's file. A pass that
fails removes every file it wrote: a partition that fails reports its error as a result,
so the engine finishes the others first and none writes after the clean-up.

The fingerprint of an engine input does not depend on how it is partitioned or
ordered: it is the SHA-256 of the *sum* (modulo 2**256) of the SHA-256 of every line,
with the count (see :func:`batchframe._requests.set_fingerprint`). Requests from a
table in memory or a stream recognise it too, so a job made with one engine can be
resumed from the same rows in any form.

Row numbers in error messages count from the start of the partition named.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from batchframe import _tokens
from batchframe._build import evaluating
from batchframe._config import BatchLimits
from batchframe._ids import chunk_ids
from batchframe._plan import Shard, ShardPlanner
from batchframe._requests import META_SCHEMA, line_set_hash, set_fingerprint
from batchframe._stream import CHUNK_ROWS, StreamedInput, Totals, _Facts, _ShardFiles
from batchframe.exceptions import BatchframeError, DuplicateCustomIdError, InputError

if TYPE_CHECKING:
    from batchframe._build import Builder
    from batchframe._source import Source
    from batchframe._storage import Storage

__all__ = ["DistributedInput", "Engine", "unwrap_error"]

SHOWN = 5


class Engine(Protocol):
    """What batchframe asks of a distributed engine (see ``_ray`` and ``_dask``)."""

    kind: str

    def columns(self) -> list[str]:
        """Column names of the input."""
        ...

    def map_partitions(
        self, fn: Callable[[pl.DataFrame, str], Any], columns: list[str]
    ) -> list[Any]:
        """``fn(partition, label)`` on the workers, one call per partition; the results."""
        ...

    def run(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn(item)`` for each item, as engine tasks; the results, in order."""
        ...

    def repeated(
        self, ids: Callable[[pl.DataFrame, str], pl.Series], columns: list[str], shown: int
    ) -> tuple[int, list[str]]:
        """How many ids occur more than once, and up to ``shown`` of them."""
        ...

    def batches(self, columns: list[str] | None) -> Iterator[Any]:
        """The input as Arrow tables, read on the driver (fallback for ``Requests.frame``)."""
        ...

    def arrow_schema(self) -> Any:
        """The input's schema as a ``pyarrow.Schema``."""
        ...


def unwrap_error(exc: BaseException) -> BaseException:
    """The :class:`BatchframeError` an engine wrapped (Ray's task errors), or ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BatchframeError):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return exc


# -- what travels to the workers -----------------------------------------------------


class _ExactCounter:
    """A picklable stand-in for ``_tokens.exact_counter(model)``, made on first use."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self._fn: _tokens.Counter | None = None

    def __call__(self, texts: pl.Series) -> pl.Series:
        if self._fn is None:
            self._fn = _tokens.exact_counter(self.model)
        return self._fn(texts)

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "_fn": None}


def _shippable(builder: Builder) -> Builder:
    """``builder`` with counters that can be pickled (the BPE tokenizer cannot)."""
    model = builder.body.get("model")
    name = model if isinstance(model, str) else None
    changes: dict[str, Any] = {}
    if getattr(builder.counter, "__qualname__", "").startswith("exact_counter."):
        changes["counter"] = _ExactCounter(name)
    if builder.calibrate_with is not None:
        changes["calibrate_with"] = _ExactCounter(name)
    return dataclasses.replace(builder, **changes) if changes else builder


@dataclass(frozen=True)
class _Task:
    """One pass, as each partition's worker needs it."""

    builder: Builder
    limits: BatchLimits
    #: The job root (shared storage) and its options; None: plan only, write nothing.
    root: str | None
    storage_options: dict[str, Any]
    #: Starts the name of every file the pass writes (so a failed pass can remove them).
    token: str


@dataclass
class _Written:
    """One shard a partition planned (and wrote, unless planning only)."""

    shard: Shard
    rel: str
    size: int
    sha256: str
    #: The shard was still open when the partition ended: it may be packed with others.
    leftover: bool


@dataclass
class _PartResult:
    pid: int
    shards: list[_Written]
    facts: _Facts
    line_sum: int


def _storage(root: str, options: dict[str, Any]) -> Storage:
    from batchframe._storage import Storage

    return Storage(root, options)


def _in_partition(exc: BatchframeError, label: str) -> BatchframeError:
    """``exc`` with the partition named (its rows count from that partition's start)."""
    text = f"in {label} (rows counted from its start): {exc}"
    exc.args = (text, *exc.args[1:])
    return exc


@dataclass
class _PartFailed:
    """A partition refused (its own files removed already)."""

    error: Exception


def _partition(task: _Task, part: pl.DataFrame, label: str) -> _PartResult | _PartFailed:
    """Build, plan and write one partition's shards (runs on a worker)."""
    b = task.builder
    name = uuid.uuid4().hex[:12]
    storage = _storage(task.root, task.storage_options) if task.root is not None else None
    embeddings = b.endpoint == "/v1/embeddings"
    planner = ShardPlanner(task.limits, embeddings=embeddings)
    facts = _Facts()
    line_sum = 0
    closed: set[int] = set()

    def rel(index: int) -> str:
        return f"shards/{task.token}-{name}-{index:04d}.jsonl"

    files = _ShardFiles(storage, name=rel) if storage is not None else None
    try:
        with evaluating(0):
            evaluated = part.lazy().select(b.selects).collect()
        ratios = b.all_ratios(evaluated)
        for offset in range(0, evaluated.height, CHUNK_ROWS):
            out = b.encode(evaluated.slice(offset, CHUNK_ROWS), offset, ratios)
            facts.add(out, b.endpoint)
            segments, full = planner.feed(out.select(list(META_SCHEMA)))
            closed.update(s.index for s in full)
            lines = out["line"]
            line_sum += line_set_hash(lines)
            if files is not None:
                files.write(segments, lines, full)
        if files is not None:
            files.close_all()
    except Exception as exc:
        if files is not None:
            files.abort()
        # Returned, not raised: the engine then finishes every other partition before
        # the driver sees the error, so that the files they write can all be removed.
        return _PartFailed(_in_partition(exc, label) if isinstance(exc, BatchframeError) else exc)
    except BaseException:
        if files is not None:
            files.abort()
        raise
    done = files.done if files is not None else {}
    written = [
        _Written(s, rel(s.index), *done.get(s.index, (s.n_bytes, "")), s.index not in closed)
        for s in planner.finish()
    ]
    return _PartResult(os.getpid(), written, facts, line_sum % (1 << 256))


def _ids(builder: Builder, part: pl.DataFrame, label: str) -> pl.Series:
    """A partition's ids as text, checked (runs on a worker)."""
    assert builder.id_expr is not None
    try:
        with evaluating(0):
            raw = part.lazy().select(builder.id_expr.alias("__cid")).collect()["__cid"]
        return chunk_ids(raw)
    except BatchframeError as exc:
        raise _in_partition(exc, label) from exc.__cause__


def _concat(storage: Storage, rels: list[str], target: str) -> tuple[int, str]:
    """Write the files ``rels`` one after another as ``target``; remove them (a task)."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with storage.open_write(target) as out:
        for rel in rels:
            with storage.open_read(rel) as f:
                while piece := f.read(8 << 20):
                    digest.update(piece)
                    out.write(piece)
                    size += len(piece)
    for rel in rels:
        storage.delete(rel)
    return size, digest.hexdigest()


def _concat_task(args: tuple[str, dict[str, Any], list[str], str]) -> tuple[int, str]:
    root, options, rels, target = args
    return _concat(_storage(root, options), rels, target)


# -- packing ---------------------------------------------------------------------------


@dataclass
class _Bin:
    model: str
    parts: list[_Written] = field(default_factory=list)
    n_requests: int = 0
    n_bytes: int = 0
    n_inputs: int = 0
    est_tokens: int = 0

    def fits(self, s: Shard, limits: BatchLimits, embeddings: bool) -> bool:
        if s.model != self.model:
            return False
        if self.n_requests + s.n_requests > limits.max_requests:
            return False
        if self.n_bytes + s.n_bytes > limits.max_bytes:
            return False
        if embeddings and self.n_inputs + s.n_inputs > limits.max_embedding_inputs:
            return False
        return limits.max_tokens is None or self.est_tokens + s.est_tokens <= limits.max_tokens

    def add(self, w: _Written) -> None:
        self.parts.append(w)
        self.n_requests += w.shard.n_requests
        self.n_bytes += w.shard.n_bytes
        self.n_inputs += w.shard.n_inputs
        self.est_tokens += w.shard.est_tokens


def pack(leftovers: list[_Written], limits: BatchLimits, *, embeddings: bool) -> list[_Bin]:
    """Leftovers in as few shards as the limits allow (first-fit decreasing by bytes)."""
    bins: list[_Bin] = []
    for w in sorted(leftovers, key=lambda w: -w.shard.n_bytes):
        target = next((b for b in bins if b.fits(w.shard, limits, embeddings)), None)
        if target is None:
            target = _Bin(w.shard.model)
            bins.append(target)
        target.add(w)
    return bins


# -- the driver --------------------------------------------------------------------------


class DistributedInput(StreamedInput):
    """An engine input: passes run on the engine's workers; the driver only plans.

    Behaves like :class:`StreamedInput` for :class:`~batchframe._requests.Requests`;
    :meth:`chunks` (``Requests.frame``) reads the input through the driver.
    """

    def __init__(self, builder: Builder, source: Source, engine: Engine) -> None:
        super().__init__(builder, source)
        self.engine = engine
        self._unique_checked = False
        #: Process ids of the workers that built the last pass's partitions.
        self.worker_pids: list[int] = []

    def ensure_totals(self, *, fingerprint: bool = False) -> Totals:
        """Totals and fingerprint, from a planning pass on the engine if not known yet."""
        if self.totals is None or self.fingerprint is None:
            self.run(BatchLimits(), fingerprint=True)
        assert self.totals is not None
        return self.totals

    def _columns(self) -> list[str]:
        names: list[str] = []
        for expr in self.builder.selects:
            for root in expr.meta.root_names():
                if root not in names:
                    names.append(root)
        return names

    def check_unique(self) -> None:
        """Refuse repeated ids across partitions, counted by the engine (once)."""
        if self._unique_checked:
            return
        fn = partial(_ids, _shippable(self.builder))
        try:
            n, shown = self.engine.repeated(fn, self._columns(), SHOWN)
        except Exception as exc:
            raise unwrap_error(exc) from None
        if n:
            msg = (
                f"`custom_id` must be unique: {n:,} id(s) occur on more than one row of the "
                f"{self.kind}, e.g. {shown} (counted with the engine across partitions); "
                "de-duplicate the input first"
            )
            raise DuplicateCustomIdError(msg, column="custom_id")
        self._unique_checked = True

    def run(
        self,
        limits: BatchLimits,
        *,
        storage: Storage | None = None,
        fingerprint: bool = False,
    ) -> dict[int, tuple[int, str]]:
        """One pass on the engine; write shards into ``storage`` (shared) if given.

        Returns ``{shard: (bytes written, sha256)}`` (empty without ``storage``).
        """
        self.check_unique()
        task = _Task(
            builder=_shippable(self.builder),
            limits=limits,
            root=storage.root_url if storage is not None else None,
            storage_options=dict(storage.storage_options) if storage is not None else {},
            token=uuid.uuid4().hex[:8],
        )
        try:
            results: list[_PartResult | _PartFailed] = self.engine.map_partitions(
                partial(_partition, task), self._columns()
            )
            failed = [r.error for r in results if isinstance(r, _PartFailed)]
            if failed:
                raise failed[0]
            done = self._assemble(
                [r for r in results if isinstance(r, _PartResult)], limits, storage, task
            )
        except BaseException as exc:
            if storage is not None:
                _remove_pass(storage, task.token)
            err = unwrap_error(exc)
            if err is not exc:
                raise err from None
            raise
        return done

    def _assemble(
        self,
        results: list[_PartResult],
        limits: BatchLimits,
        storage: Storage | None,
        task: _Task,
    ) -> dict[int, tuple[int, str]]:
        embeddings = self.builder.endpoint == "/v1/embeddings"
        facts = _Facts()
        total = 0
        full: list[_Written] = []
        leftovers: list[_Written] = []
        for r in results:
            facts.n += r.facts.n
            facts.n_bytes += r.facts.n_bytes
            facts.est_tokens += r.facts.est_tokens
            for m in r.facts.models:
                facts.models.setdefault(m)
            for m, seen in r.facts.dims.items():
                facts.dims.setdefault(m, set()).update(seen)
            total += r.line_sum
            for w in r.shards:
                (leftovers if w.leftover else full).append(w)
        bins = pack(leftovers, limits, embeddings=embeddings)
        shards: list[Shard] = []
        done: dict[int, tuple[int, str]] = {}
        rels: dict[int, str] = {}
        for w in full:
            i = len(shards)
            shards.append(dataclasses.replace(w.shard, index=i))
            done[i], rels[i] = (w.size, w.sha256), w.rel
        concat: list[tuple[int, list[str], str]] = []
        for b in bins:
            i = len(shards)
            shards.append(Shard(i, b.model, b.n_requests, b.n_bytes, b.n_inputs, b.est_tokens))
            if len(b.parts) == 1:
                w = b.parts[0]
                done[i], rels[i] = (w.size, w.sha256), w.rel
            else:
                rels[i] = f"shards/{task.token}-packed-{i:05d}.jsonl"
                concat.append((i, [w.rel for w in b.parts], rels[i]))
        if storage is not None and concat:
            args = [
                (storage.root_url, dict(storage.storage_options), rels_, target)
                for _, rels_, target in concat
            ]
            for (i, _, _), res in zip(concat, self.engine.run(_concat_task, args), strict=True):
                done[i] = res
        self.worker_pids = [r.pid for r in results]
        self.totals = facts.totals()
        self.fingerprint = set_fingerprint(total, facts.n)
        self._plans[_key(limits)] = shards
        self.rels = rels if storage is not None else {}
        return done if storage is not None else {}

    def chunks(self) -> Iterator[pl.DataFrame]:
        """Every row's line and facts, read through the driver (for ``Requests.frame``).

        ``Requests`` checks the ids of the rows it then holds itself.
        """
        yield from StreamedInput(self.builder, self.source).chunks()


def _key(limits: BatchLimits) -> tuple[Any, ...]:
    return tuple(sorted(limits.to_dict().items()))


def _remove_pass(storage: Storage, token: str) -> None:
    """Remove every shard file a failed pass wrote (best effort)."""
    try:
        for rel in storage.list("shards"):
            if rel.rsplit("/", 1)[-1].startswith(token + "-"):
                storage.delete(rel)
    except Exception:  # cleaning up must not hide the error that stopped the pass
        pass


def require_ids(builder: Builder, kind: str) -> None:
    """Refuse ``custom_id=None`` on an engine input (content ids need one ordered pass)."""
    if builder.id_expr is None:
        msg = (
            f"requests from a {kind} need `custom_id` (a column or expression): ids derived "
            "from content number identical rows in input order, which partitions built on "
            "separate workers cannot share"
        )
        raise InputError(msg, column="custom_id")
