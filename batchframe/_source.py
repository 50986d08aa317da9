"""The one place where inputs of every kind become Polars: in memory, or streamed.

``pl.DataFrame``, ``pa.Table`` and ``pa.RecordBatch`` are already in memory and are built
from as they are. Everything else is read in chunks and never collected whole:

* ``pa.dataset.Dataset``: scanned batch by batch, only the columns the template uses;
* ``pa.RecordBatchReader``: read once (a second pass over it is refused, naming it);
* any object with ``__arrow_c_stream__`` (pandas >= 2.2, narwhals, a DuckDB relation,
  polars): a fresh stream is asked for at each pass.
* ``pl.LazyFrame`` (``pl.scan_parquet("s3://...")``, ...): see below;
* a ``ray.data.Dataset`` or ``dask.dataframe.DataFrame``: passes run on the engine's
  workers (see ``_cluster``); only ``Requests.frame`` reads it through the driver.

The template's expressions are evaluated by Polars, so they mean what they mean on the
whole table. Polars' streaming engine reads ahead of a slow consumer without limit
(measured with Polars 2.1: a 4M-row Parquet scan consumed at 0.2 s per 100k rows held
~700 MB; its own file sinks hold as much when the disk is slower than the scan), so a
pass pulls its input instead:

* a ``pl.LazyFrame`` whose rows Polars can read by position (a Parquet or IPC scan, or
  a frame in memory, with the template's row-wise expressions: the slice is pushed
  into the scan) is read one ``lf.slice(offset, n)`` at a time;
* any other ``pl.LazyFrame`` (a filter, a join, an aggregate over the whole table) is
  streamed by Polars' engine, which may read ahead of the pass;
* Arrow inputs reach Polars through a Python source that waits while more than
  ``AHEAD_ROWS`` rows are read but not yet taken by the pass.

Arrow text is checked to be UTF-8 batch by batch, naming the column and the row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from batchframe.exceptions import EncodingError, InputError

__all__ = ["Source", "to_source"]

#: Rows an Arrow input may be read ahead of the pass consuming them.
AHEAD_ROWS = 300_000
#: Evaluated input per chunk pulled from a LazyFrame (rows adapt to their size).
CHUNK_BYTES = 32 << 20
_FIRST_ROWS = 10_000
_MIN_ROWS = 1_000


class _Gate:
    """Backpressure between a source feeding Polars and the pass consuming its output."""

    def __init__(self, ahead: int | None) -> None:
        self._ahead = ahead
        self._read = 0
        self._taken = 0
        self._closed = False
        self._waiting = False
        self._cond = threading.Condition()

    def admit(self, n: int) -> bool:
        """Wait until ``n`` more rows may be read; False once the pass has ended.

        The source is held back only while the pass is busy: when the pass waits for
        Polars (which may need more input first, e.g. for an aggregate), it may read on.
        """
        with self._cond:
            ahead = self._ahead
            if ahead is not None:
                self._cond.wait_for(
                    lambda: self._closed or self._waiting or self._read - self._taken < ahead
                )
            self._read += n
            return not self._closed

    def waiting(self, flag: bool) -> None:
        with self._cond:
            self._waiting = flag
            self._cond.notify_all()

    def taken(self, n: int) -> None:
        with self._cond:
            self._taken += n
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class Source:
    """An input table: ``frame`` when it is in memory, else ``lazy`` (read in chunks)."""

    frame: pl.DataFrame | None = None
    lazy: pl.LazyFrame | None = None
    #: What the input is, for messages (``"pyarrow.RecordBatchReader"``).
    kind: str = ""
    #: A reader can be read once; ``passes`` counts the passes started over it.
    one_shot: bool = False
    passes: int = 0
    #: Set for Arrow inputs: holds their Python source back while the pass catches up.
    gate: _Gate | None = None
    #: A Ray or Dask input: its engine adapter (``_ray.RayEngine``, ``_dask.DaskEngine``).
    #: Passes run on the engine's workers; ``lazy`` reads it through the driver.
    engine: Any = None

    @property
    def streamed(self) -> bool:
        """Whether the input is read in chunks (not held in memory)."""
        return self.frame is None

    def as_lazy(self) -> pl.LazyFrame:
        """The input as a LazyFrame (an in-memory frame's ``.lazy()``)."""
        if self.frame is not None:
            return self.frame.lazy()
        assert self.lazy is not None
        return self.lazy

    def schema_names(self) -> list[str]:
        """Column names of the input, without reading it."""
        if self.frame is not None:
            return self.frame.columns
        assert self.lazy is not None
        return list(self.lazy.collect_schema().names())

    def start_pass(self) -> None:
        """Note the start of a pass over the input; refuse a second pass over a reader."""
        if self.one_shot and self.passes:
            msg = (
                f"this {self.kind} was read already (a reader can be read once), so the "
                "requests built from it cannot read it again; call `build_requests` with a "
                "fresh reader, or pass a re-readable source (a `pyarrow.dataset`, a Polars "
                "LazyFrame such as `pl.scan_parquet(...)`, a table)"
            )
            raise InputError(msg)
        self.passes += 1

    def batches(self, selects: list[pl.Expr], rows: int) -> Iterator[pl.DataFrame]:
        """``selects`` evaluated over the input, about ``rows`` rows at a time, in order."""
        self.start_pass()
        lf = self.as_lazy().select(selects)
        if self.gate is None:  # a user's LazyFrame
            yield from _pulled(lf, rows)
            return
        gate = self.gate = _Gate(AHEAD_ROWS)  # only a pass holds the source back
        try:
            it = iter(lf.collect_batches(chunk_size=rows))
            while True:
                gate.waiting(True)
                try:
                    chunk = next(it)
                except StopIteration:
                    return
                finally:
                    gate.waiting(False)
                gate.taken(chunk.height)
                if chunk.height:
                    yield chunk
        finally:
            gate.close()  # let the source finish at once if the pass stopped early
            self.gate = _Gate(None)


def _pulled(lf: pl.LazyFrame, rows: int) -> Iterator[pl.DataFrame]:
    """Chunks of ``lf`` by position when Polars pushes the slice into the scan."""
    plan = lf.slice(0, rows).explain()
    if "SLICE[" in plan or not any(s in plan for s in ("Parquet SCAN", "IPC SCAN", "DF [")):
        yield from (c for c in lf.collect_batches(chunk_size=rows) if c.height)
        return
    offset, step = 0, min(rows, _FIRST_ROWS)
    while True:
        chunk = lf.slice(offset, step).collect()
        if chunk.height:
            yield chunk
        if chunk.height < step:
            return
        offset += step
        # Chunks of about CHUNK_BYTES whatever the row size (long documents: fewer rows).
        per_row = max(1, int(chunk.estimated_size()) // max(1, chunk.height))
        step = min(rows, max(_MIN_ROWS, CHUNK_BYTES // per_row))


def _kind(obj: Any) -> str:
    return f"{type(obj).__module__.split('.')[0]}.{type(obj).__name__}"


def to_source(frame: Any) -> Source:
    """Turn any accepted input into a :class:`Source`.

    Raises
    ------
    InputError
        The object is not a table batchframe can read (the message says what is).
    EncodingError
        An in-memory Arrow table holds text that is not UTF-8.
    """
    if isinstance(frame, pl.DataFrame):
        return Source(frame=frame, kind="polars.DataFrame")
    if isinstance(frame, pl.LazyFrame):
        return Source(lazy=frame, kind="polars.LazyFrame")
    mod = type(frame).__module__
    engine = _engine(frame, mod)
    if engine is not None:
        src = _arrow_stream(engine.arrow_schema(), engine.batches, kind=engine.kind)
        src.engine = engine
        return src
    if mod.startswith("pyarrow"):
        import pyarrow as pa
        import pyarrow.dataset as ds

        if isinstance(frame, pa.RecordBatch):
            frame = pa.Table.from_batches([frame])
        if isinstance(frame, pa.Table):
            _check_utf8(frame, 0)
            out = pl.from_arrow(frame)
            assert isinstance(out, pl.DataFrame)
            return Source(frame=out, kind="pyarrow.Table")
        if isinstance(frame, pa.RecordBatchReader):
            return _arrow_stream(frame.schema, _once(frame), kind=_kind(frame), one_shot=True)
        if isinstance(frame, ds.Dataset):
            parquet = _local_parquet(frame)
            if parquet is not None:
                return Source(lazy=parquet, kind="pyarrow.dataset")
            dataset = frame
            return _arrow_stream(
                dataset.schema,
                lambda columns: dataset.to_batches(
                    columns=columns, batch_readahead=2, fragment_readahead=1
                ),
                kind="pyarrow.dataset",
            )
    if hasattr(frame, "__arrow_c_stream__"):
        import pyarrow as pa

        obj = frame
        try:
            schema = pa.RecordBatchReader.from_stream(obj).schema
        except Exception as exc:
            msg = f"cannot read `frame` ({_kind(obj)}) as an Arrow stream: {exc}"
            raise InputError(msg) from exc

        def batches(columns: list[str] | None) -> Iterator[Any]:
            reader = pa.RecordBatchReader.from_stream(obj)
            for batch in reader:
                yield batch.select(columns) if columns is not None else batch

        return _arrow_stream(schema, batches, kind=_kind(obj))
    msg = (
        "`frame` must be a table: a polars DataFrame or LazyFrame, a pyarrow Table, "
        "RecordBatchReader or dataset, or any object with `__arrow_c_stream__` (pandas "
        f">= 2.2, narwhals, a DuckDB relation); got {_kind(frame)}"
    )
    raise InputError(msg)


def _engine(frame: Any, mod: str) -> Any:
    """The engine adapter of a ``ray.data.Dataset`` or ``dask.dataframe.DataFrame``."""
    if mod.startswith("ray.data") and hasattr(frame, "map_batches"):
        from batchframe._ray import RayEngine

        return RayEngine(frame)
    if mod.startswith("dask") and hasattr(frame, "map_partitions") and hasattr(frame, "columns"):
        from batchframe._dask import DaskEngine

        return DaskEngine(frame)
    return None


def _local_parquet(dataset: Any) -> pl.LazyFrame | None:
    """Polars' own scan of a dataset of local Parquet files (read by position), if it is one."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if not (
        isinstance(dataset, ds.FileSystemDataset)
        and isinstance(dataset.format, ds.ParquetFileFormat)
        and isinstance(dataset.filesystem, pafs.LocalFileSystem)
        and dataset.files
    ):
        return None
    lf = pl.scan_parquet(dataset.files)
    try:
        same = lf.collect_schema() == pl.DataFrame(dataset.schema.empty_table()).schema
    except pl.exceptions.PolarsError:
        return None
    return lf if same else None  # e.g. partition columns that live in the paths


def _once(reader: Any) -> Callable[[list[str] | None], Iterator[Any]]:
    def batches(columns: list[str] | None) -> Iterator[Any]:
        for batch in reader:
            yield batch.select(columns) if columns is not None else batch

    return batches


def _arrow_stream(
    schema: Any,
    batches: Callable[[list[str] | None], Iterator[Any]],
    *,
    kind: str,
    one_shot: bool = False,
) -> Source:
    """A LazyFrame over Arrow record batches, read when a pass runs."""
    from polars.io.plugins import register_io_source

    pl_schema = pl.DataFrame(schema.empty_table()).schema

    def io_source(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        offset = 0
        for batch in batches(with_columns):
            if not batch.num_rows:
                continue
            gate = source.gate
            if gate is not None and not gate.admit(batch.num_rows):
                return  # the pass ended early (a refusal): stop reading
            _check_utf8(batch, offset)
            df = pl.DataFrame(batch)
            offset += df.height
            if predicate is not None:
                df = df.filter(predicate)
            if n_rows is not None:
                df = df.head(n_rows)
                n_rows -= df.height
            yield df
            if n_rows is not None and n_rows <= 0:
                return

    source = Source(kind=kind, one_shot=one_shot, gate=_Gate(None))
    source.lazy = register_io_source(io_source, schema=pl_schema, explain_name=kind)
    return source


def _check_utf8(table: Any, offset: int) -> None:
    """Refuse Arrow text columns that are not valid UTF-8, naming column and rows."""
    import pyarrow as pa

    for name in table.schema.names:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            rows = [offset + i for i in _bad_utf8_rows(col)]
            msg = (
                f"column `{name}` holds text that is not valid UTF-8 at row(s) {rows}; "
                "decode or clean it before building requests"
            )
            raise EncodingError(msg, rows=rows, column=name) from None


def _bad_utf8_rows(col: Any) -> list[int]:
    import pyarrow as pa

    raw = col.cast(pa.large_binary())
    bad: list[int] = []
    for i, value in enumerate(raw.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            if len(bad) >= 5:
                break
    return bad
