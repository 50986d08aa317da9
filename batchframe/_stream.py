"""Requests over a streamed input: one pass reads, builds, checks, plans and writes.

A pass reads the input in chunks of ``CHUNK_ROWS`` rows (Polars' streaming engine),
builds each chunk's lines on a small thread pool (a few chunks in flight), and then, in
input order: records the ids for the whole-input duplicate check, plans the chunk's rows
into shards (one open shard per model) and appends their lines to the open shard files,
closing each file as its shard fills. Memory holds a few chunks, one open file per
model, and 8 bytes per row for the duplicate check; never the job.

A pass refused midway (a duplicate id, a null prompt, a line over the limit, text that
is not UTF-8) removes every shard file it wrote: nothing partial is left behind.
Totals, the fingerprint and the plan for each set of limits are kept after a pass, so
asking for them again costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import polars as pl

from batchframe import _calibrate
from batchframe._build import evaluating
from batchframe._calibrate import Ratios, block_range, blocks_before
from batchframe._config import BatchLimits
from batchframe._ids import ContentIds, DuplicateFinder
from batchframe._plan import Segment, Shard, ShardPlanner
from batchframe._requests import (
    FINGERPRINT_PREFIX,
    META_SCHEMA,
    jsonl_pieces,
    shard_path,
    take_rows,
)

if TYPE_CHECKING:
    from batchframe._build import Builder
    from batchframe._source import Source
    from batchframe._storage import Storage

__all__ = ["CHUNK_ROWS", "StreamedInput", "Totals"]

_log = logging.getLogger("batchframe")

#: Rows read, built and written per step of a pass.
CHUNK_ROWS = 100_000
#: Chunks built ahead of the one being written.
_WINDOW = 3


@dataclass(frozen=True)
class Totals:
    """Whole-input facts a pass learns."""

    n_requests: int
    n_bytes: int
    est_tokens: int
    models: tuple[str, ...]
    #: Embeddings: the one ``dimensions`` value each model's bodies agree on.
    embedding_dims: dict[str, int]


@dataclass
class _Facts:
    """Running totals of a pass."""

    n: int = 0
    n_bytes: int = 0
    est_tokens: int = 0
    models: dict[str, None] = field(default_factory=dict)
    dims: dict[str, set[str | None]] = field(default_factory=dict)

    def add(self, out: pl.DataFrame, endpoint: str) -> None:
        self.n += out.height
        self.n_bytes += int(out["n_bytes"].sum())
        self.est_tokens += int(out["est_tokens"].sum())
        for m in out["model"].unique(maintain_order=True).to_list():
            self.models.setdefault(m)
        if endpoint == "/v1/embeddings":
            values = out.select(
                "model", pl.col("line").str.json_path_match("$.body.dimensions").alias("d")
            ).unique()
            for m, d in values.iter_rows():
                seen = self.dims.setdefault(m, set())
                if len(seen) < 2:
                    seen.add(d)

    def totals(self) -> Totals:
        dims = {
            (m or ""): int(v)
            for m, seen in self.dims.items()
            if len(seen) == 1 and (v := next(iter(seen))) is not None and v.isdigit()
        }
        return Totals(self.n, self.n_bytes, self.est_tokens, tuple(self.models), dims)


class _ShardFiles:
    """Shard files being written by a pass: one open file per model's open shard."""

    def __init__(self, storage: Storage, name: Callable[[int], str] = shard_path) -> None:
        self._storage = storage
        self._name = name
        self._open: dict[int, tuple[AbstractContextManager[IO[bytes]], IO[bytes], Any, int]] = {}
        self.done: dict[int, tuple[int, str]] = {}

    def append(self, shard: int, lines: pl.Series) -> None:
        if shard not in self._open:
            opener: AbstractContextManager[IO[bytes]] = self._storage.open_write(self._name(shard))
            self._open[shard] = (opener, opener.__enter__(), hashlib.sha256(), 0)
        cm, f, digest, size = self._open[shard]
        for piece in jsonl_pieces(lines):
            digest.update(piece)
            f.write(piece)
            size += len(piece)
        self._open[shard] = (cm, f, digest, size)

    def write(self, segments: list[Segment], lines: pl.Series, closed: list[Shard]) -> None:
        """Append one chunk's lines to their shards, then close the shards it filled."""
        for seg in segments:
            self.append(seg.shard, take_rows(lines, seg.rows))
        for shard in closed:
            self.close(shard.index)

    def close(self, shard: int) -> None:
        if shard not in self._open:
            return
        cm, _, digest, size = self._open.pop(shard)
        cm.__exit__(None, None, None)
        self.done[shard] = (size, digest.hexdigest())

    def close_all(self) -> None:
        for shard in sorted(self._open):
            self.close(shard)

    def abort(self) -> None:
        """Drop open files and remove the ones already closed."""
        err = RuntimeError("pass aborted")
        for cm, _, _, _ in self._open.values():
            try:
                cm.__exit__(RuntimeError, err, None)
            except RuntimeError:
                pass
            except Exception:  # cleaning up is best effort
                _log.debug("could not remove a partial shard file", exc_info=True)
        self._open.clear()
        for shard in self.done:
            try:
                self._storage.delete(self._name(shard))
            except Exception:
                _log.debug("could not remove shard %d", shard, exc_info=True)
        self.done.clear()


def _hash_lines(digest: Any, lines: pl.Series) -> None:
    for piece in jsonl_pieces(lines):
        digest.update(piece)


def _limits_key(limits: BatchLimits) -> tuple[Any, ...]:
    return tuple(sorted(limits.to_dict().items()))


class StreamedInput:
    """A streamed input and its builder; runs passes and keeps what they learn."""

    def __init__(self, builder: Builder, source: Source) -> None:
        self.builder = builder
        self.source = source
        self.totals: Totals | None = None
        self.fingerprint: str | None = None
        self._plans: dict[tuple[Any, ...], list[Shard]] = {}
        #: Files of the last pass's shards when not ``shard_path(index)`` (engine passes).
        self.rels: dict[int, str] = {}

    @property
    def kind(self) -> str:
        """What the input is (``"polars.LazyFrame"``, ``"pyarrow.dataset"``, ...)."""
        return self.source.kind

    def plan(self, limits: BatchLimits) -> list[Shard]:
        """The shards for ``limits`` (a pass the first time)."""
        key = _limits_key(limits)
        if key not in self._plans:
            self.run(limits)
        return self._plans[key]

    def ensure_totals(self, *, fingerprint: bool = False) -> Totals:
        """Totals (and, if asked, the fingerprint), from a pass if not known yet."""
        if self.totals is None or (fingerprint and self.fingerprint is None):
            self.run(BatchLimits(), fingerprint=fingerprint)
        assert self.totals is not None
        return self.totals

    def chunks(self) -> Iterator[pl.DataFrame]:
        """Every row's line and facts, chunk by chunk, in input order (checked)."""
        yield from self._built(None)

    def _built(self, dups: DuplicateFinder | None) -> Iterator[pl.DataFrame]:
        b = self.builder

        chunks = iter(self.source.batches(b.selects, CHUNK_ROWS))

        def batches() -> Generator[tuple[pl.DataFrame, int, Ratios], None, None]:
            """Chunks in order, each with the calibration ratios of the rows it holds.

            With ``"auto"`` token counts, a chunk waits until every sample block its rows
            are scaled by has been read (at most CALIBRATION_ROWS rows past its end).
            """
            size = _calibrate.CALIBRATION_ROWS
            ratios: Ratios = {}
            held: list[pl.DataFrame] = []  # read, not yet handed on; held[0] starts at `start`
            start = 0
            more = True

            def read_to(row: int) -> None:
                nonlocal more
                while more and start + sum(c.height for c in held) < row:
                    with evaluating(start + sum(c.height for c in held)):
                        chunk = next(chunks, None)
                    if chunk is None:
                        more = False
                    else:
                        held.append(chunk)

            while True:
                read_to(start + 1)
                if not held:
                    return
                chunk = held.pop(0)
                end = start + chunk.height
                if b.calibrate_with is not None:
                    held.insert(0, chunk)
                    for block in blocks_before(end, size):
                        if block not in ratios:
                            lo, hi = block_range(block, size)
                            read_to(hi)
                            rows = pl.concat(held).slice(lo - start, hi - lo)
                            ratios[block] = b.ratios_for(rows)
                    held.pop(0)
                yield chunk, start, dict(ratios)
                start = end

        content = ContentIds() if b.id_expr is None else None
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="batchframe-build") as pool:
            pending: list[Any] = []
            it = batches()
            done = False
            try:
                while True:
                    while not done and len(pending) < _WINDOW:
                        try:
                            chunk, offset, ratios = next(it)
                        except StopIteration:
                            done = True
                            break
                        pending.append(pool.submit(b.encode, chunk, offset, ratios))
                    if not pending:
                        break
                    out = pending.pop(0).result()
                    if content is not None:
                        out = b.with_content_ids(out, content)
                    elif dups is not None:
                        dups.add(out["custom_id"])
                    yield out
            finally:
                it.close()
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # stop reading the input at once
                for fut in pending:
                    fut.cancel()

    def run(
        self,
        limits: BatchLimits,
        *,
        storage: Storage | None = None,
        fingerprint: bool = False,
    ) -> dict[int, tuple[int, str]]:
        """One pass: check every row, plan for ``limits``, write shards to ``storage``.

        Returns ``{shard: (bytes written, sha256)}`` (empty without ``storage``).
        """
        b = self.builder
        # A reader cannot be read again for its fingerprint: compute it on the way.
        fingerprint = fingerprint or self.source.one_shot
        planner = ShardPlanner(limits, embeddings=b.endpoint == "/v1/embeddings")
        facts = _Facts()
        digest = hashlib.sha256(FINGERPRINT_PREFIX) if fingerprint else None
        files = _ShardFiles(storage) if storage is not None else None
        # Hashing and writing run on their own threads, in chunk order, one chunk behind
        # the planning of the next (so at most two chunks of lines wait for them).
        io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="batchframe-write")
        behind: list[Future[None]] = []

        def flush() -> None:
            for fut in behind:
                fut.result()
            behind.clear()

        try:
            with DuplicateFinder() as dups:
                for out in self._built(dups if b.id_expr is not None else None):
                    facts.add(out, b.endpoint)
                    segments, closed = planner.feed(out.select(list(META_SCHEMA)))
                    flush()
                    lines = out["line"]
                    if digest is not None:
                        behind.append(io.submit(_hash_lines, digest, lines))
                    if files is not None:
                        behind.append(io.submit(files.write, segments, lines, closed))
                dups.check()
            flush()
            if files is not None:
                files.close_all()
        except BaseException:
            for fut in behind:
                fut.cancel()
            io.shutdown(wait=True)
            if files is not None:
                files.abort()
            raise
        io.shutdown(wait=True)
        self.totals = facts.totals()
        if digest is not None:
            digest.update(facts.n.to_bytes(8, "little"))
            self.fingerprint = digest.hexdigest()
        self._plans[_limits_key(limits)] = planner.finish()
        return files.done if files is not None else {}
