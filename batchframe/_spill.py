"""The ok rows of a big output file: parsed a window at a time and spilled to Parquet.

The API bounds a shard's input (200 MB, 50,000 requests), not its output: 50,000
answers of 16 KB are ~800 MB of JSON, 50,000 vectors of 3,072 floats ~1.7 GB (614 MB
as float32). Parsing holds ~1.3 MB per MB of output, so a settlement that held a whole
file's rows would grow with the answers.

An output file up to :data:`WHOLE_BYTES` is parsed in one call and its ok rows are
held in memory, as they always were (a shard of short chat answers is ~35 MB). A bigger
file is parsed one window of :data:`WINDOW_BYTES` of whole lines at a time
(:func:`windows`); each window's ok rows go to a local Parquet file of a :class:`Spill`
and are dropped, so a settlement holds one window's rows, however long the answers.
Publishing streams the spill into the published file (``sink_parquet``), and the
spill's files are removed once the attempt is published.

Spill files go beside the output file (``outputs/`` of a local root), or to the
system's temporary directory (``batchframe-spill/``) for a remote root or one that
cannot be written. They are named like every temporary file of the job
(``.tmp-<host>.<pid>-...``): a crash leaves them to
:func:`batchframe._publish.clean_temps`, or to the next spill made in the same folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl

from batchframe._storage import Storage, temp_name
from batchframe.exceptions import ResultsError

__all__ = [
    "WHOLE_BYTES",
    "WINDOW_BYTES",
    "Spill",
    "Window",
    "read_output_file",
    "spill_folders",
    "windows",
]

_log = logging.getLogger("batchframe")

#: Output files up to this size are parsed in one call, their ok rows held in memory.
WHOLE_BYTES = 64 << 20
#: Bigger ones are parsed this many bytes at a time (whole lines), their ok rows
#: spilled to Parquet. A window's parse costs ~2-4x its bytes at its peak.
WINDOW_BYTES = 32 << 20
#: Spill files are written fast: ok rows are read back once, to be published.
_COMPRESSION: Final = "lz4"


@dataclass(frozen=True, slots=True)
class Window:
    """Consecutive whole lines of a file, from byte ``start``: ``pieces()`` each time."""

    start: int
    pieces: Callable[[], Iterable[bytes]]


class _Cursor:
    """The pieces of one window, read once from the file's shared stream, then by range."""

    def __init__(
        self,
        first: bytes,
        stream: Iterator[bytes],
        budget: int,
        reread: Callable[[int, int], Iterable[bytes]],
        start: int,
    ) -> None:
        self._first: bytes | None = first
        self._stream = stream
        self._budget = budget
        self._reread = reread
        self.start = start
        self.nbytes = 0
        self.done = False
        self._started = False

    def _take(self) -> Iterator[bytes]:
        while not self.done:
            if self._first is not None:
                piece, self._first = self._first, None
            else:
                nxt = next(self._stream, None)
                if nxt is None:
                    self.done = True
                    return
                piece = nxt
            self.nbytes += len(piece)
            if self.nbytes >= self._budget:
                self.done = True
            yield piece

    def pieces(self) -> Iterable[bytes]:
        if not self._started:
            self._started = True
            return self._take()
        self.drain()
        return self._reread(self.start, self.start + self.nbytes)

    def drain(self) -> None:
        """Read the rest of the window from the stream (a parse that stopped early)."""
        for _ in self._take():
            pass


def windows(
    stream: Iterator[bytes],
    reread: Callable[[int, int], Iterable[bytes]],
    *,
    size: int | None = None,
) -> Iterator[Window]:
    """The windows of a file given as consecutive pieces of whole lines (``stream``).

    Each window holds whole pieces, at least ``size`` bytes of them (the last one
    fewer), and is read from ``stream`` as it is parsed: a window is never held whole
    unless its parser holds it. Reading a window a second time (the lines of failed
    rows, a file parsed piece by piece) reads its bytes again with ``reread(start,
    stop)``. A window that is not consumed whole by its consumer is read to its end
    before the next one starts.
    """
    budget = size or WINDOW_BYTES
    start = 0
    while True:
        first = next(stream, None)
        if first is None:
            return
        cursor = _Cursor(first, stream, budget, reread, start)
        yield Window(start, cursor.pieces)
        cursor.drain()
        start += cursor.nbytes


def spill_folders(storage: Storage, rel: str) -> list[str]:
    """Where the spill of output file ``rel`` may go, in order (see the module doc)."""
    from batchframe._publish import is_local

    fallback = os.path.join(tempfile.gettempdir(), "batchframe-spill")
    if is_local(storage):
        return [os.path.dirname(storage.path(rel)), fallback]
    return [fallback]


class Spill:
    """Ok rows written to local Parquet files, one per window, read back lazily.

    Rows are added in file order (:meth:`add`); :meth:`lazy` scans them all, in that
    order. The files are removed by :meth:`close`, or when the object is collected.
    """

    def __init__(self, folders: list[str]) -> None:
        self._folders = folders
        self.files: list[str] = []
        self.schema: pl.Schema | None = None
        self.rows = 0
        self.nbytes = 0.0
        self._finalizer = weakref.finalize(self, _remove, self.files)

    def add(self, frame: pl.DataFrame) -> None:
        """Write ``frame`` (the next rows) to a new file; an empty one writes nothing.

        The first folder that takes a file is kept (a root that cannot be written
        leaves the spill to the temporary directory).
        """
        from batchframe._publish import row_group_rows

        if self.schema is None or (frame.height and not self.files):
            # The first rows type the spill: an empty frame before them may be typed
            # looser (embeddings: a list, before any vector gave the width).
            self.schema = frame.schema
        if not frame.height:
            return
        name = temp_name(f"spill-{len(self.files):05d}.parquet")
        # Row groups of ~8 MB: the writer holds a group's pages until it is done (one
        # group of a 64 MB window of long answers cost ~240 MB more, ~8 MB groups ~70).
        group = row_group_rows(frame)
        while True:
            folder = self._folders[0]
            path = os.path.join(folder, name)
            try:
                if not self.files:
                    _prepare(folder)
                frame.write_parquet(
                    path, compression=_COMPRESSION, statistics=False, row_group_size=group
                )
                break
            except OSError:
                if len(self._folders) == 1 or self.files:
                    raise
                _log.debug("cannot spill into %s; trying %s", folder, self._folders[1])
                self._folders = self._folders[1:]
        self.files.append(path)
        self.rows += frame.height
        self.nbytes += frame.estimated_size()

    def lazy(self) -> pl.LazyFrame:
        """All rows, in the order they were added."""
        if not self.files:
            return pl.LazyFrame(schema=self.schema)
        return pl.scan_parquet(list(self.files))

    def bytes_per_row(self) -> float:
        """Average in-memory size of a row (for sizing row groups)."""
        return self.nbytes / max(self.rows, 1)

    def close(self) -> None:
        """Remove the files (idempotent)."""
        self._finalizer()


def _prepare(folder: str) -> None:
    """Create ``folder``; remove spill files crashed drivers left in it."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    Storage(folder).remove_stale_temps([""])


def _remove(files: list[str]) -> None:
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - best effort
            _log.debug("could not remove spill file %s", path, exc_info=True)
    files.clear()


def read_output_file(
    storage: Storage, rel: str, kw: dict[str, Any], known: pl.Series
) -> tuple[pl.DataFrame, Spill | None, list[pl.DataFrame], int]:
    """The ok rows, their spill (a big file), failed rows and foreign lines of file ``rel``.

    ``kw``: the arguments of ``parse_output_file``; ``known``: the shard's ids. A file
    up to :data:`WHOLE_BYTES` goes through one DuckDB statement
    (``parse_output_file``) and its ok rows are returned as a frame, as parsed (its
    foreign rows are the caller's to drop). A bigger one is parsed window by window;
    the ok rows of each are kept to the shard's ids (``known``; the others are counted
    as foreign), once per key (the first, as ``finalize_outcome`` keeps), and spilled;
    the frame is then empty. Embeddings take the first window's vector width.
    """
    from batchframe._parse import parse_output_file, renumbered
    from batchframe._retry import read_chunks
    from batchframe._schemas import ok_key

    if storage.size(rel) <= WHOLE_BYTES:  # on S3 known from the download: no request
        ok, bad = parse_output_file(lambda: read_chunks(storage, rel), **kw)
        return ok, None, [bad], 0

    key = ok_key(kw["endpoint"])
    first: pl.DataFrame | None = None
    spill: Spill | None = None
    fails: list[pl.DataFrame] = []
    seen: pl.DataFrame | None = None
    foreign = 0

    def reread(start: int, stop: int) -> Iterator[bytes]:
        return read_chunks(storage, rel, start=start, stop=stop)

    try:
        for w in windows(read_chunks(storage, rel), reread):
            if first is not None:  # a second window: the first one's rows are spilled first
                spill = Spill(spill_folders(storage, rel))
                seen, foreign = _spill_rows(spill, first, known, key, None)
                first = None
            try:
                ok, bad = parse_output_file(w.pieces, **kw)
            except ResultsError as exc:  # name the line in the file, not in the window
                lines = sum(p.count(b"\n") for p in read_chunks(storage, rel, stop=w.start))
                again = renumbered(exc, lines + 1)
                if again is None:
                    raise
                raise again from exc
            fails.append(bad)
            dtype = ok.schema.get("embedding")
            if kw["embedding_dim"] is None and isinstance(dtype, pl.Array):
                kw = {**kw, "embedding_dim": dtype.size}
            if spill is None:
                first = ok  # held while the file may be one window
            else:
                seen, n = _spill_rows(spill, ok, known, key, seen)
                foreign += n
            del ok
    except BaseException:
        if spill is not None:  # nothing of the attempt is kept: nor are its spill files
            spill.close()
        raise
    if spill is not None:
        return pl.DataFrame(schema=spill.schema), spill, fails, foreign
    if first is None:  # an empty file
        from batchframe._results import parse_output

        first = parse_output(b"", **kw)[0]
    return first, None, fails, 0


def _spill_rows(
    spill: Spill, ok: pl.DataFrame, known: pl.Series, key: list[str], seen: pl.DataFrame | None
) -> tuple[pl.DataFrame, int]:
    """Spill the rows of ``ok`` of the shard's ids whose key is not in ``seen``.

    Returns the keys seen so far and the number of foreign rows left out.
    """
    mine = pl.col("custom_id").is_in(known.implode())
    foreign = int(ok.select((~mine).sum()).item())
    if foreign:
        ok = ok.filter(mine)
    if ok.select(pl.struct(key).is_duplicated().any()).item():
        ok = ok.unique(subset=key, keep="first", maintain_order=True)
    if seen is not None and ok.height:
        before = seen.select(pl.struct(key)).to_series()
        ok = ok.filter(~pl.struct(key).is_in(before.implode()))
    spill.add(ok)
    # A copy: the id strings of a parsed window can be views into the window's bytes,
    # which keeping them would keep whole (measured: +55 MB a window of embeddings).
    ids = ok.select(key)
    keys = pl.DataFrame(ids.to_dict(as_series=False), schema=ids.schema)
    return (keys if seen is None else pl.concat([seen, keys])), foreign
