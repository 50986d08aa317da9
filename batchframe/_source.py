"""The one place where inputs of every kind become Polars: in memory, or streamed.

``pl.DataFrame``, ``pa.Table`` and ``pa.RecordBatch`` are already in memory and are built
from as they are. Everything else is read in chunks through a ``pl.LazyFrame`` and
never collected whole:

* ``pl.LazyFrame`` (``pl.scan_parquet("s3://...")``, ...): as it is;
* ``pa.dataset.Dataset``: scanned batch by batch, only the columns the template uses;
* ``pa.RecordBatchReader``: read once (a second pass over it is refused, naming it);
* any object with ``__arrow_c_stream__`` (pandas >= 2.2, narwhals, a DuckDB relation,
  polars): a fresh stream is asked for at each pass.

Arrow text is checked to be UTF-8 batch by batch, naming the column and the row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from batchframe.exceptions import EncodingError, InputError

__all__ = ["Source", "to_source"]


@dataclass
class Source:
    """An input table: ``frame`` when it is in memory, else ``lazy`` (read in chunks)."""

    frame: pl.DataFrame | None = None
    lazy: pl.LazyFrame | None = None
    #: What the input is, for messages (``"pyarrow.RecordBatchReader"``).
    kind: str = ""
    #: A reader can be read once; ``passes`` counts the passes started over it.
    one_shot: bool = False
    passes: list[int] = field(default_factory=list)

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
        self.passes.append(1)


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
            dataset = frame
            return _arrow_stream(
                dataset.schema,
                lambda columns: dataset.to_batches(columns=columns),
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

    lazy = register_io_source(io_source, schema=pl_schema, explain_name=kind)
    return Source(lazy=lazy, kind=kind, one_shot=one_shot)


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
