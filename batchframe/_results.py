"""``BatchResults``: the typed ok and failed frames of a job, and their sinks.

``parse_output`` and ``parse_errors`` (in :mod:`batchframe._parse`) turn one output or
error file into frames; :meth:`BatchResults.from_parts` combines those of every shard
and attempt into one result.
"""

from __future__ import annotations

import html
import os
import posixpath
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, overload

import polars as pl

from batchframe._parse import parse_errors, parse_output
from batchframe._schemas import FAILED_SCHEMA, ok_key, ok_schema
from batchframe._usage import usage_frame
from batchframe.exceptions import ColumnNotFoundError, ResultsError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from batchframe._storage import Storage

__all__ = [
    "BatchResults",
    "parse_errors",
    "parse_output",
]


# -- BatchResults ----------------------------------------------------------------------


class BatchResults:
    """Typed results of a batch job: ``ok`` and ``failed`` frames keyed by ``custom_id``.

    Parameters
    ----------
    ok
        Successful rows (see :func:`~batchframe._schemas.ok_schema`).
    failed
        Failed rows with ``FAILED_SCHEMA`` columns: custom_id, stage, status_code,
        error_code, error_message, retryable, attempts, batch_id, line.
    endpoint
        The job's endpoint, e.g. ``"/v1/chat/completions"``.
    batches
        One row per batch as the job describes them (ids, file ids, status, counts,
        usage), with at least a ``batch_id`` column; or ``None``.

    Examples
    --------
    >>> from batchframe._results import BatchResults, parse_output
    >>> line = (
    ...     b'{"id":"batch_req_1","custom_id":"r1","response":{"status_code":200,'
    ...     b'"request_id":"req_1","body":{"model":"gpt-4o-mini","choices":[{"index":0,'
    ...     b'"message":{"role":"assistant","content":"positive"},"finish_reason":"stop"}],'
    ...     b'"usage":{"prompt_tokens":20,"completion_tokens":1,"total_tokens":21}}},'
    ...     b'"error":null}\\n'
    ... )
    >>> ok, failed = parse_output(line, endpoint="/v1/chat/completions", batch_id="batch_1")
    >>> results = BatchResults(ok, failed, "/v1/chat/completions")
    >>> results
    BatchResults(endpoint='/v1/chat/completions', ok=1, failed=0)
    >>> results.ok["content"].to_list()
    ['positive']
    """

    def __init__(
        self,
        ok: pl.DataFrame,
        failed: pl.DataFrame,
        endpoint: str,
        *,
        batches: pl.DataFrame | None = None,
        custom_id_column: str | None = None,
    ) -> None:
        if batches is not None and "batch_id" not in batches.columns:
            msg = f"`batches` needs a `batch_id` column; it has {batches.columns}"
            raise ResultsError(msg)
        self.ok = _fixed_width_embeddings(ok)
        self.failed = failed.select(pl.col(c).cast(t) for c, t in FAILED_SCHEMA.items())
        self.endpoint = endpoint
        self.batches = batches
        #: The input column the custom_ids came from (``join``'s default ``on``), if known.
        self.custom_id_column = custom_id_column
        #: Prices of the job's provider, used by :meth:`usage` when none are passed.
        self.prices: dict[str, dict[str, float]] | None = None

    @classmethod
    def from_parts(
        cls,
        ok: Iterable[pl.DataFrame],
        failed: Iterable[pl.DataFrame],
        *,
        endpoint: str,
        batches: pl.DataFrame | None = None,
    ) -> BatchResults:
        """Combine per-file frames (several shards and attempts) into one result.

        Frames are taken in the order given (earlier attempts first). A ``custom_id``
        with an ok row is dropped from ``failed``; of repeated ok rows the first is
        kept (it was paid for first); of repeated failures the last (latest attempt).
        """
        oks, faileds = list(ok), list(failed)
        ok_frame = (
            pl.concat(oks, how="vertical_relaxed")
            if oks
            else pl.DataFrame(schema=ok_schema(endpoint))
        )
        ok_frame = ok_frame.unique(subset=ok_key(endpoint), keep="first", maintain_order=True)
        failed_frame = (
            pl.concat(faileds, how="vertical_relaxed")
            if faileds
            else pl.DataFrame(schema=FAILED_SCHEMA)
        )
        failed_frame = failed_frame.join(ok_frame.select("custom_id"), on="custom_id", how="anti")
        failed_frame = failed_frame.unique(subset="custom_id", keep="last", maintain_order=True)
        return cls(ok_frame, failed_frame, endpoint, batches=batches)

    # -- views -------------------------------------------------------------------------

    @overload
    def join(self, frame: pl.LazyFrame, *, on: str | None = ...) -> pl.LazyFrame: ...
    @overload
    def join(self, frame: pl.DataFrame | pa.Table, *, on: str | None = ...) -> pl.DataFrame: ...
    def join(
        self, frame: pl.DataFrame | pl.LazyFrame | pa.Table, *, on: str | None = None
    ) -> pl.DataFrame | pl.LazyFrame:
        """The input frame with the result columns, left-joined on ``custom_id``.

        Input order is kept. Result columns are the ok columns plus ``stage``,
        ``error_code`` and ``error_message`` from ``failed`` (null on ok rows); a name
        that clashes with an input column gets the suffix ``_result``. Embeddings have
        one row per input vector, so a request with an input array repeats its row.

        Parameters
        ----------
        frame
            The input table (a ``pl.LazyFrame`` gives a ``pl.LazyFrame`` back, anything
            else a ``pl.DataFrame``).
        on
            The input column holding the custom_id (cast to string to match).
            Default: the column ``custom_id=`` named when the requests were built (a
            job's results know it), else ``"custom_id"``.

        Raises
        ------
        ColumnNotFoundError
            ``on`` is not a column of ``frame``.
        """
        lazy = isinstance(frame, pl.LazyFrame)
        if isinstance(frame, pl.LazyFrame):
            lf = frame
        elif isinstance(frame, pl.DataFrame):
            lf = frame.lazy()
        else:
            from batchframe._source import to_source

            lf = to_source(frame).as_lazy()  # pyarrow, pandas, DuckDB, any Arrow stream
        names = lf.collect_schema().names()
        if on is None:
            on = self.custom_id_column or "custom_id"
        if on not in names:
            msg = f"column {on!r} not found in the input frame\n\nHint: available columns are {names}; pass `on=` naming the custom_id column"
            raise ColumnNotFoundError(msg, column=on)
        key = "__batchframe_key"
        ok = self.ok.lazy().rename({"custom_id": key})
        failed = self.failed.lazy().select(
            pl.col("custom_id").alias(key), "stage", "error_code", "error_message"
        )
        out = (
            lf.with_columns(pl.col(on).cast(pl.String).alias(key))
            .join(ok, on=key, how="left", maintain_order="left", suffix="_result")
            .join(failed, on=key, how="left", maintain_order="left", suffix="_result")
            .drop(key)
        )
        return out if lazy else out.collect()

    def usage(self, prices: Mapping[str, Mapping[str, float]] | None = None) -> pl.DataFrame:
        """Tokens and cost per model.

        Counts ok rows and the paid answers that failed to parse (stage ``"parse"``).
        ``reasoning_tokens`` are part of ``output_tokens`` (and priced with them).

        Parameters
        ----------
        prices
            ``{model: {"input": usd, "cached_input": usd, "output": usd}}`` per 1M tokens,
            merged over :data:`DEFAULT_PRICES` (Batch API prices as of
            :data:`PRICES_AS_OF`). ``cached_input`` defaults to ``input``. ``None``:
            the prices of the job's provider (:attr:`prices`) when the results come
            from a job.

        Returns
        -------
        pl.DataFrame
            ``model, requests, input_tokens, cached_tokens, output_tokens,
            reasoning_tokens, cost_usd``; ``cost_usd`` is null for unpriced models.
        """
        return usage_frame(self.ok, self.failed, self.endpoint, prices or self.prices)

    # -- sinks -------------------------------------------------------------------------

    def write_parquet(
        self, path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Write ``ok`` to ``path`` and ``failed`` (and ``batches``) beside it.

        ``out/reviews.parquet`` gives ``out/reviews.parquet``,
        ``out/reviews_failed.parquet`` and, when there are batches,
        ``out/reviews_batches.parquet``: the DuckDB sink's table names, as files. Each
        file appears atomically; ``path`` may be any fsspec URL. The endpoint is kept
        in the files' metadata (``batchframe.endpoint``).

        Returns
        -------
        dict[str, str]
            The paths written, keyed ``"ok"``, ``"failed"``, ``"batches"``.
        """
        storage, names = _parquet_names(path, storage_options)
        frames = {"ok": self.ok, "failed": self.failed, "batches": self.batches}
        written = {}
        for part, frame in frames.items():
            if frame is not None:
                with storage.open_write(names[part]) as f:
                    frame.write_parquet(f, metadata={"batchframe.endpoint": self.endpoint})
                written[part] = storage.url(names[part])
        return written

    def to_duckdb(
        self, database: str | os.PathLike[str] | duckdb.DuckDBPyConnection, *, table: str
    ) -> None:
        """Upsert into DuckDB tables ``{table}``, ``{table}_failed`` and ``{table}_batches``.

        See :func:`batchframe._duckdb.write_duckdb`: atomic, keyed by
        ``custom_id`` (``(custom_id, index)`` for embeddings), idempotent, and a later
        success removes the row from ``{table}_failed``.
        """
        from batchframe._duckdb import write_duckdb  # duckdb loads when first used

        write_duckdb(self, database, table=table)

    # -- Arrow ---------------------------------------------------------------------------

    def to_arrow(self, part: str = "ok") -> pa.Table:
        """One part as a ``pyarrow.Table``, sharing the frame's buffers (no copy of numbers).

        ``ok`` and ``failed`` are Polars frames, which hand Arrow to any consumer
        themselves too (``frame.to_arrow()``, ``__arrow_c_stream__``): ``pa.table(results.ok)``,
        ``duckdb.sql("FROM results_ok")``, pandas, narwhals. Strings come as ``large_string``.

        Parameters
        ----------
        part
            ``"ok"`` (default), ``"failed"`` or ``"batches"``.
        """
        frames = {"ok": self.ok, "failed": self.failed, "batches": self.batches}
        if part not in frames:
            msg = f"part must be one of {sorted(frames)}, got {part!r}"
            raise ValueError(msg)
        frame = frames[part]
        if frame is None:
            msg = "these results have no `batches` frame (results of a job have one)"
            raise ResultsError(msg)
        return frame.to_arrow()

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        """The ok rows as an Arrow C stream (``pa.table(results)``, ``pl.DataFrame(results)``)."""
        return self.ok.__arrow_c_stream__(requested_schema)

    # -- display -----------------------------------------------------------------------

    def _stage_counts(self) -> list[tuple[str, int]]:
        counts = self.failed.group_by("stage").len().sort("stage")
        return [(str(s), int(n)) for s, n in counts.iter_rows()]

    def __repr__(self) -> str:
        stages = ", ".join(f"{s}: {n}" for s, n in self._stage_counts())
        failed = f"{len(self.failed)}" + (f" [{stages}]" if stages else "")
        batches = "" if self.batches is None else f", batches={len(self.batches)}"
        return (
            f"BatchResults(endpoint={self.endpoint!r}, ok={len(self.ok)}, failed={failed}{batches})"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>failed: {html.escape(s)}</td><td>{n}</td></tr>"
            for s, n in self._stage_counts()
        )
        batches = (
            "" if self.batches is None else f"<tr><td>batches</td><td>{len(self.batches)}</td></tr>"
        )
        return (
            f"<div><b>BatchResults</b> <code>{html.escape(self.endpoint)}</code>"
            f"<table><tr><td>ok</td><td>{len(self.ok)}</td></tr>"
            f"<tr><td>failed</td><td>{len(self.failed)}</td></tr>{rows}{batches}</table></div>"
        )


def _parquet_names(
    path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None
) -> tuple[Storage, dict[str, str]]:
    from batchframe._storage import Storage

    parent, name = posixpath.split(os.fspath(path))
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, dot + ext) if dot else (name, ".parquet")
    names = {"ok": name, "failed": f"{stem}_failed{ext}", "batches": f"{stem}_batches{ext}"}
    return Storage(parent or ".", storage_options), names


def _fixed_width_embeddings(ok: pl.DataFrame) -> pl.DataFrame:
    """``List(Float32)`` embeddings (from an empty part) back to ``Array`` when widths agree."""
    dtype = ok.schema.get("embedding")
    if not isinstance(dtype, pl.List) or not len(ok):
        return ok
    widths = ok["embedding"].list.len().unique().drop_nulls()
    if len(widths) != 1:
        return ok
    return ok.with_columns(pl.col("embedding").cast(pl.Array(dtype.inner, int(widths[0]))))
