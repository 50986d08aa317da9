"""Output and error files into typed frames: ``parse_output``, ``parse_errors``, ``BatchResults``.

Parsing needs no network and no job: bytes in, ``(ok, failed)`` frames out. Every
non-blank line lands in exactly one of them (embeddings: one ok row per input of the
request). The rule for ok is the reference's: ``error is None and response is not None
and 200 <= status_code < 300``; anything else is a failed row that keeps its raw line.

A line that is not a JSON object with a ``custom_id`` raises :class:`ResultsError`
naming the line: it means a damaged file (a truncated download), which should be
fetched again rather than silently skipped; nothing is lost, the file stays where it is.
"""

from __future__ import annotations

import html
import os
import posixpath
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, overload

import orjson
import polars as pl

from batchframe._duckdb import (
    as_bytes,
    diagnose,
    embeddings_are_base64,
    iter_lines,
    line_custom_id,
    raw_lines,
    read_lines,
    write_duckdb,
)
from batchframe._schemas import (
    DEFAULT_PRICES,
    FAILED_SCHEMA,
    USAGE_COLUMNS,
    USAGE_NAMES,
    USAGE_PATHS,
    SchemaMismatch,
    compile_json_schema,
    endpoint_key,
    ok_key,
    ok_schema,
    price_for,
)
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

_RETRYABLE_CODES = frozenset(
    {"batch_expired", "request_timeout", "rate_limit_exceeded", "server_error"}
)
_PERMANENT_CODES = frozenset(
    {"batch_cancelled", "content_policy_violation", "content_filter", "invalid_request_error"}
)


def parse_output(
    data: bytes | os.PathLike[str],
    *,
    endpoint: str,
    batch_id: str,
    json_schema: Mapping[str, Any] | None = None,
    attempts: int = 1,
    embedding_dim: int | None = None,
    model: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse a batch output file into ``(ok, failed)`` frames with declared schemas.

    Parameters
    ----------
    data
        The file's bytes (or a local path). A trailing empty line, blank lines, CRLF
        endings and very large lines (base64 images) are fine. Any chunk of whole lines
        can be parsed on its own, so a huge file may be fed in pieces.
    endpoint
        The batch's endpoint, e.g. ``"/v1/chat/completions"``.
    batch_id
        Written to the ``batch_id`` column of both frames.
    json_schema
        The structured-output schema the requests carried (bare, or as sent in
        ``response_format`` / ``text.format``). The answer (chat: ``message.content``;
        responses: the output text) is decoded into a typed ``parsed`` column; an answer
        that is not JSON, does not match, or is a refusal becomes a failed row with
        stage ``"parse"`` and its raw line.
    attempts
        Written to ``failed.attempts``.
    embedding_dim
        Width of the ``embedding`` array. ``None``: taken from the first vector; for
        an empty file the column is then ``List(Float32)``.
    model
        Used for ``model`` when a body names none (image endpoints).

    Returns
    -------
    tuple[pl.DataFrame, pl.DataFrame]
        ``ok`` with :func:`~batchframe._schemas.ok_schema` columns and ``failed`` with
        ``FAILED_SCHEMA``. Rows keep the file's order.

    Raises
    ------
    ResultsError
        A line is not a JSON object with a non-empty ``custom_id`` (the message names
        the line number).
    """
    key = endpoint_key(endpoint)
    parsed_dtype, convert = compile_json_schema(json_schema) if json_schema else (None, None)
    base64 = key == "embeddings" and embeddings_are_base64(data)
    rows = _read(data, endpoint=endpoint, typed=True, base64=base64)
    rows = rows.with_row_index("_ordinal")
    ok, bad = rows.filter(pl.col("_ok")), rows.filter(~pl.col("_ok"))
    failures = [_request_failures(bad)]

    if key == "embeddings":
        ok, dropped = _explode_embeddings(ok, embedding_dim, base64)
        failures.append(dropped)
        if embedding_dim is None and len(ok):
            embedding_dim = ok.schema["embedding"].size  # type: ignore[attr-defined]
    if convert is not None and key in ("chat/completions", "responses"):
        ok, dropped = _parse_structured(ok, key, convert, parsed_dtype)
        failures.append(dropped)

    schema = ok_schema(endpoint, parsed=parsed_dtype, embedding_dim=embedding_dim)
    ok = ok.with_columns(batch_id=pl.lit(batch_id))
    if model is not None:
        ok = ok.with_columns(pl.col("model").fill_null(model))
    ok = ok.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    return ok, _failed_frame(data, pl.concat(failures), batch_id=batch_id, attempts=attempts)


def parse_errors(
    data: bytes | os.PathLike[str], *, endpoint: str, batch_id: str, attempts: int = 1
) -> pl.DataFrame:
    """Parse a batch error file into failed rows (``FAILED_SCHEMA``).

    HTTP failures (``response.status_code >= 400``, the error in
    ``response.body.error``) have stage ``"request"``; non-HTTP ones (``response:
    null``, ``error: {code, message}``) have stage ``"expired"`` for
    ``batch_expired``, ``"cancelled"`` for ``batch_cancelled`` and ``"request"``
    otherwise. ``retryable`` is true for 408, 429, 5xx, status 0/none, ``batch_expired``
    and ``request_timeout``; false for other 4xx and ``batch_cancelled``. A line that
    looks like a success is kept as a failed row (error code ``unexpected_success``)
    with its raw line, never dropped.

    Raises
    ------
    ResultsError
        A line is not a JSON object with a non-empty ``custom_id``.
    """
    rows = _read(data, endpoint=endpoint, typed=False, base64=False).with_row_index("_ordinal")
    rows = rows.with_columns(
        _error_code=pl.when(pl.col("_ok"))
        .then(pl.lit("unexpected_success"))
        .otherwise(pl.col("_error_code")),
        _error_message=pl.when(pl.col("_ok"))
        .then(pl.lit("a success line in the error file; its body is kept in `line`"))
        .otherwise(pl.col("_error_message")),
        _ok=pl.lit(False),
    )
    return _failed_frame(data, _request_failures(rows), batch_id=batch_id, attempts=attempts)


# -- parsing internals -----------------------------------------------------------------


def _read(
    data: bytes | os.PathLike[str], *, endpoint: str, typed: bool, base64: bool
) -> pl.DataFrame:
    try:
        rows = read_lines(data, endpoint=endpoint, typed=typed, base64=base64)
    except ResultsError as exc:
        where = diagnose(as_bytes(data))
        msg = (
            f"{where}; the file may be truncated or damaged, download it again"
            if where
            else str(exc)
        )
        raise ResultsError(msg) from exc
    missing = rows.select(pl.arg_where(pl.col("custom_id").fill_null("") == "")).to_series()
    if len(missing):
        lines = raw_lines(as_bytes(data), missing.head(1).to_list())
        lineno = next(iter(lines.values()))[0] if lines else "?"
        msg = f"line {lineno} has no `custom_id`; the results cannot be matched to requests"
        raise ResultsError(msg)
    return rows


def _request_failures(bad: pl.DataFrame) -> pl.DataFrame:
    """Failed rows (minus ``line``) for lines the API answered with an error."""
    code, status = pl.col("_error_code"), pl.col("status_code")
    retryable = (
        pl.when(code.is_in(_PERMANENT_CODES))
        .then(False)
        .when(code.is_in(_RETRYABLE_CODES))
        .then(True)
        .when(status.is_in([408, 429]) | (status >= 500))
        .then(True)
        # No HTTP answer at all (status 0 or absent): the request did not run properly.
        .when(status.is_null() | (status == 0))
        .then(True)
        .otherwise(False)
    )
    stage = (
        pl.when(code == "batch_expired")
        .then(pl.lit("expired"))
        .when(code == "batch_cancelled")
        .then(pl.lit("cancelled"))
        .otherwise(pl.lit("request"))
    )
    message = pl.col("_error_message").fill_null(
        pl.when(status.is_null())
        .then(pl.lit("no response and no error in the line"))
        .otherwise(pl.format("HTTP status {} without an error message", status))
    )
    return bad.select(
        "_ordinal",
        "custom_id",
        stage=stage,
        status_code=status,
        error_code=code,
        error_message=message,
        retryable=retryable,
    )


def _parse_failures(rows: pl.DataFrame, code: pl.Expr, message: pl.Expr) -> pl.DataFrame:
    return rows.select(
        "_ordinal",
        "custom_id",
        stage=pl.lit("parse"),
        status_code="status_code",
        error_code=code,
        error_message=message,
        retryable=pl.lit(False),
    )


def _explode_embeddings(
    ok: pl.DataFrame, dim: int | None, base64: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per input vector; requests with no or odd-sized vectors become failures."""
    vec = pl.element().struct.field("embedding")
    ok = ok.with_columns(
        _sizes=pl.col("_data").list.eval(vec.bin.size() // 4 if base64 else vec.list.len())
    )
    if dim is None and len(ok):
        dim = ok.select(pl.col("_sizes").list.first().drop_nulls().first()).item()
    empty = pl.col("_sizes").list.len().fill_null(0) == 0
    odd = (
        pl.lit(False)
        if dim is None
        else ~pl.col("_sizes").list.eval(pl.element() == dim).list.all()
    )
    problem = pl.when(empty).then(pl.lit("no_embeddings")).when(odd).then(pl.lit("embedding_dim"))
    ok = ok.with_columns(_problem=problem)
    messages = {
        "no_embeddings": "the response holds no embeddings",
        "embedding_dim": f"an embedding does not have the expected {dim} dimensions",
    }
    failures = _parse_failures(
        ok.filter(pl.col("_problem").is_not_null()),
        pl.col("_problem"),
        pl.col("_problem").replace_strict(messages, return_dtype=pl.String),
    )
    target = pl.List(pl.Float32) if dim is None else pl.Array(pl.Float32, dim)
    rows = (
        ok.filter(pl.col("_problem").is_null())
        .explode("_data")
        .with_columns(
            index=pl.col("_data").struct.field("index"),
            embedding=pl.col("_data").struct.field("embedding"),
        )
        # Usage is per request: keep it on the request's first row so sums stay right.
        .with_columns(
            prompt_tokens=pl.when(pl.col("_ordinal").is_first_distinct()).then("prompt_tokens")
        )
    )
    emb = pl.col("embedding")
    if dim is None:  # no vector anywhere to take a width from
        return rows.with_columns(pl.lit(None, dtype=target).alias("embedding")), failures
    return rows.with_columns(
        emb.bin.reinterpret(dtype=target) if base64 else emb.cast(target)
    ), failures


def _parse_structured(
    ok: pl.DataFrame, key: str, convert: Any, dtype: pl.DataType | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decode each answer into ``parsed``; answers that do not fit become failures."""
    text_col = "content" if key == "chat/completions" else "output_text"
    refusal_col = "refusal" if key == "chat/completions" else "_refusal"
    finish = ok["finish_reason"] if "finish_reason" in ok.columns else pl.Series([None] * len(ok))
    values: list[Any] = []
    failed: list[tuple[int, str, str]] = []
    keep: list[bool] = []
    for ordinal, text, refusal, reason in zip(
        ok["_ordinal"], ok[text_col], ok[refusal_col], finish, strict=True
    ):
        problem: tuple[str, str] | None = None
        if text is None:
            problem = (
                ("refusal", refusal)
                if refusal
                else ("no_content", "the answer has no text to parse")
            )
        else:
            try:
                values.append(convert(orjson.loads(text)))
            except orjson.JSONDecodeError as exc:
                hint = (
                    " (finish_reason 'length': the answer was cut off)"
                    if reason == "length"
                    else ""
                )
                problem = ("invalid_json", f"the answer is not valid JSON{hint}: {exc}")
            except SchemaMismatch as exc:
                problem = ("schema_mismatch", f"the answer does not match the schema: {exc}")
        keep.append(problem is None)
        if problem is not None:
            failed.append((ordinal, *problem))
    mask = pl.Series(keep, dtype=pl.Boolean)
    good = ok.filter(mask).with_columns(pl.Series("parsed", values, dtype=dtype, strict=True))
    problems = pl.DataFrame(
        failed,
        schema={"_ordinal": ok.schema["_ordinal"], "_code": pl.String, "_message": pl.String},
        orient="row",
    )
    bad = ok.filter(~mask).join(problems, on="_ordinal")
    return good, _parse_failures(bad, pl.col("_code"), pl.col("_message"))


def _failed_frame(
    data: bytes | os.PathLike[str], failures: pl.DataFrame, *, batch_id: str, attempts: int
) -> pl.DataFrame:
    """Attach raw lines, batch id and attempts; order by position in the file."""
    failures = failures.sort("_ordinal")
    ordinals = failures["_ordinal"].to_list()
    lines: list[str | None] = []
    if ordinals:
        raw = as_bytes(data)
        found = raw_lines(raw, ordinals)
        lines = [found[o][1] if o in found else None for o in ordinals]
        if any(
            line_custom_id(line) != cid
            for line, cid in zip(lines, failures["custom_id"], strict=True)
        ):
            # Positions disagree with DuckDB's count (never seen): match by custom_id.
            texts = (line.decode("utf-8", errors="replace") for _, line in iter_lines(raw))
            by_id = {line_custom_id(text): text.rstrip("\r") for text in texts}
            lines = [by_id.get(cid) for cid in failures["custom_id"]]
    return failures.with_columns(
        batch_id=pl.lit(batch_id),
        attempts=pl.lit(attempts),
        line=pl.Series(lines, dtype=pl.String),
    ).select(pl.col(name).cast(dtype) for name, dtype in FAILED_SCHEMA.items())


def _dig(obj: Any, path: str | None) -> Any:
    for part in path.split(".") if path else ():
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj if path else None


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
    ) -> None:
        if batches is not None and "batch_id" not in batches.columns:
            msg = f"`batches` needs a `batch_id` column; it has {batches.columns}"
            raise ResultsError(msg)
        self.ok = _fixed_width_embeddings(ok)
        self.failed = failed.select(pl.col(c).cast(t) for c, t in FAILED_SCHEMA.items())
        self.endpoint = endpoint
        self.batches = batches

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
    def join(self, frame: pl.LazyFrame, *, on: str = ...) -> pl.LazyFrame: ...
    @overload
    def join(self, frame: pl.DataFrame | pa.Table, *, on: str = ...) -> pl.DataFrame: ...
    def join(
        self, frame: pl.DataFrame | pl.LazyFrame | pa.Table, *, on: str = "custom_id"
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
            lf = pl.DataFrame(frame).lazy()
        names = lf.collect_schema().names()
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
            :data:`PRICES_AS_OF`). ``cached_input`` defaults to ``input``.

        Returns
        -------
        pl.DataFrame
            ``model, requests, input_tokens, cached_tokens, output_tokens,
            reasoning_tokens, cost_usd``; ``cost_usd`` is null for unpriced models.
        """
        table = {**DEFAULT_PRICES, **(prices or {})}
        frame = pl.concat([self._ok_usage(), self._parse_failure_usage()])
        agg = (
            frame.group_by("model")
            .agg(
                pl.col("custom_id").n_unique().cast(pl.Int64).alias("requests"),
                *(pl.col(c).sum() for c in USAGE_NAMES),
            )
            .sort("model", nulls_last=True)
        )
        costs: list[float | None] = []
        for model, inp, cached, out in agg.select(
            "model", "input_tokens", "cached_tokens", "output_tokens"
        ).iter_rows():
            price = price_for(model, table)
            if price is None:
                costs.append(None)
                continue
            p_in = price.get("input", 0.0)
            p_cached = price.get("cached_input", p_in)
            costs.append(
                ((inp - cached) * p_in + cached * p_cached + out * price.get("output", 0.0)) / 1e6
            )
        return agg.with_columns(cost_usd=pl.Series(costs, dtype=pl.Float64))

    def _ok_usage(self) -> pl.DataFrame:
        cols = USAGE_COLUMNS.get(endpoint_key(self.endpoint), (None, None, None, None))
        return self.ok.select(
            "custom_id",
            "model",
            *(
                (pl.col(c) if c else pl.lit(None)).cast(pl.Int64).fill_null(0).alias(name)
                for c, name in zip(cols, USAGE_NAMES, strict=True)
            ),
        )

    def _parse_failure_usage(self) -> pl.DataFrame:
        paths = USAGE_PATHS.get(endpoint_key(self.endpoint), (None, None, None, None))
        rows = []
        for cid, line in (
            self.failed.filter(pl.col("stage") == "parse").select("custom_id", "line").iter_rows()
        ):
            body = _dig(orjson.loads(line), "response.body") if line else None
            usage = body.get("usage") if isinstance(body, dict) else None
            model = body.get("model") if isinstance(body, dict) else None
            rows.append((cid, model, *(_int(_dig(usage, p)) for p in paths)))
        schema = {
            "custom_id": pl.String,
            "model": pl.String,
            **dict.fromkeys(USAGE_NAMES, pl.Int64),
        }
        return pl.DataFrame(rows, schema=schema, orient="row")

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

        See :func:`batchframe._duckdb.write_duckdb`: one transaction, keyed by
        ``custom_id`` (``(custom_id, index)`` for embeddings), idempotent, and a later
        success removes the row from ``{table}_failed``.
        """
        write_duckdb(self, database, table=table)

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


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
