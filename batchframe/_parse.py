"""Output and error files into typed frames: ``parse_output`` and ``parse_errors``.

Parsing needs no network and no job: bytes in, ``(ok, failed)`` frames out. Every
non-blank line lands in exactly one of them (embeddings: one ok row per input of the
request). The rule for ok is the reference's: ``error is None and response is not None
and 200 <= status_code < 300``; anything else is a failed row that keeps its raw line.

A line that is not a JSON object with a ``custom_id`` raises :class:`ResultsError`
naming the line: it means a damaged file (a truncated download), which should be
fetched again rather than silently skipped; nothing is lost, the file stays where it is.

The lines are read by :mod:`batchframe._lines` and typed by DuckDB
(:mod:`batchframe._duckdb_json`); this module sorts rows into ok and failed.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import orjson
import polars as pl

from batchframe._lines import as_bytes, diagnose, embeddings_are_base64
from batchframe._schemas import (
    FAILED_SCHEMA,
    SchemaMismatch,
    compile_json_schema,
    endpoint_key,
    ok_schema,
)
from batchframe.exceptions import ResultsError

__all__ = [
    "at_line",
    "each_piece",
    "parse_errors",
    "parse_output",
    "parse_output_file",
    "renumbered",
]

_T = TypeVar("_T")

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
        ``FAILED_SCHEMA``. Rows keep the file's order. ``ok.body`` is the API's exact
        body text for lines in the layout OpenAI writes (else the same JSON, minified:
        see :mod:`batchframe._schemas`); ``failed.line`` is the line's exact text.

    Raises
    ------
    ResultsError
        A line is not a JSON object with a non-empty ``custom_id`` (the message names
        the line number).
    """
    key = endpoint_key(endpoint)
    raw = as_bytes(data)  # held until the end: measured faster than reading it later
    base64 = key == "embeddings" and embeddings_are_base64(raw)
    rows = _read(raw, endpoint=endpoint, typed=True, base64=base64)
    return _frames(
        rows,
        endpoint=endpoint,
        batch_id=batch_id,
        json_schema=json_schema,
        attempts=attempts,
        embedding_dim=embedding_dim,
        model=model,
        base64=base64,
    )


def parse_output_file(
    pieces: Callable[[], Iterable[bytes]],
    *,
    endpoint: str,
    batch_id: str,
    json_schema: Mapping[str, Any] | None = None,
    attempts: int = 1,
    embedding_dim: int | None = None,
    model: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`parse_output` of a file given as consecutive pieces of whole lines.

    The frames are those of parsing each piece with :func:`parse_output` and
    concatenating the results (leaving out empty ok frames), which is also what one call
    on the whole file gives. ``pieces`` returns a new iterator over the pieces each time
    it is called (e.g. ``lambda: read_chunks(storage, path)``): the pieces normally go
    through one DuckDB statement per file, read once, holding the cut bodies but never
    the whole lines of the file (``_duckdb_json.read_file``); the lines of failed rows
    are read again, and a
    file that path does not take (lines of another layout, damaged lines) is parsed
    piece by piece, each read again.
    """
    from batchframe._duckdb_json import read_file  # duckdb loads on first parse

    kw: dict[str, Any] = {
        "endpoint": endpoint,
        "batch_id": batch_id,
        "json_schema": json_schema,
        "attempts": attempts,
        "embedding_dim": embedding_dim,
        "model": model,
    }
    read = read_file(pieces(), endpoint=endpoint)
    rows, base64 = read if read is not None else (None, False)
    if rows is not None:
        ids = rows["custom_id"]
        if (ids.is_null() | (ids == "")).any():
            rows = None  # parsed piece by piece below, which names the line
    if rows is None:
        parts = list(each_piece(pieces(), lambda data: parse_output(data, **kw)))
        if not parts:
            return parse_output(b"", **kw)
        oks = [ok for ok, _ in parts if ok.height] or [parts[0][0]]
        ok = oks[0] if len(oks) == 1 else pl.concat(oks, how="vertical")
        return ok, pl.concat([failed for _, failed in parts], how="vertical")
    return _frames(rows, **kw, base64=base64, lines=pieces)


#: The line a parse error names (``diagnose``, a missing ``custom_id``): "line <n>".
_LINE = re.compile(r"^line (\d+)")


def each_piece(pieces: Iterable[bytes], parse: Callable[[bytes], _T]) -> Iterator[_T]:
    """``parse`` of each of a file's consecutive pieces of whole lines, in order.

    A :class:`ResultsError` that names a line of a piece ("line 3 is not valid JSON")
    is raised again naming that line's number in the file.
    """
    first_line = 1
    for data in pieces:
        yield at_line(first_line, functools.partial(parse, data))
        first_line += data.count(b"\n")


def at_line(first_line: int, parse: Callable[[], _T]) -> _T:
    """``parse()`` of a part of a file that starts at line ``first_line``.

    A :class:`ResultsError` that names a line of the part ("line 3 is not valid JSON")
    is raised again naming that line's number in the file.
    """
    try:
        return parse()
    except ResultsError as exc:
        again = renumbered(exc, first_line)
        if again is None:
            raise
        raise again from exc


def renumbered(exc: ResultsError, first_line: int) -> ResultsError | None:
    """``exc`` naming the file's line number, for a part starting at ``first_line``.

    ``None`` when ``exc`` names no line, or the part starts the file.
    """
    msg = str(exc)
    named = _LINE.match(msg)
    if named is None or first_line == 1:
        return None
    return ResultsError(f"line {int(named[1]) + first_line - 1}{msg[named.end() :]}")


def _frames(
    rows: pl.DataFrame,
    *,
    endpoint: str,
    batch_id: str,
    json_schema: Mapping[str, Any] | None,
    attempts: int,
    embedding_dim: int | None,
    model: str | None,
    base64: bool,
    lines: Callable[[], Iterable[bytes]] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``(ok, failed)`` frames of :func:`parse_output` from the rows of ``read_lines``.

    ``lines``: the pieces of the file, where ``rows`` holds no ``line`` text (the lines
    of the failed rows are then read from them).
    """
    key = endpoint_key(endpoint)
    parsed_dtype, convert = compile_json_schema(json_schema) if json_schema else (None, None)
    # `_shape`: why a 2xx body does not have the endpoint's declared shape (else null).
    good = rows["_ok"] & rows["_shape"].is_null()
    if good.all():  # the usual case: skip copying every column through a filter
        ok, bad = rows, rows.clear()
    else:
        ok, bad = rows.filter(good), rows.filter(~good)
    failures = []
    if len(bad):
        shaped = bad["_ok"]
        if not shaped.all():
            failures.append(_request_failures(bad.filter(~shaped)))
        if shaped.any():
            failures.append(_shape_failures(bad.filter(shaped)))

    if key == "embeddings":
        ok, dropped = _explode_embeddings(ok, embedding_dim, base64)
        failures.append(dropped)
        if embedding_dim is None and len(ok):
            embedding_dim = ok.schema["embedding"].size  # type: ignore[attr-defined]
    if convert is not None and key in ("chat/completions", "responses"):
        ok, dropped = _parse_structured(ok, key, convert, parsed_dtype)
        failures.append(dropped)

    schema = ok_schema(endpoint, parsed=parsed_dtype, embedding_dim=embedding_dim)
    # One query for the ok frame, and none for an empty failed frame (a job parses many
    # small pieces: each query costs a fixed ~0.3 ms).
    out = ok.lazy().with_columns(batch_id=pl.lit(batch_id))
    if model is not None:
        out = out.with_columns(pl.col("model").fill_null(model))
    ok = out.select(_casts(schema)).collect()
    failures = [f for f in failures if len(f)]
    if not failures:
        return ok, pl.DataFrame(schema=FAILED_SCHEMA)
    failed = pl.concat(failures)
    if lines is not None:
        failed = _with_lines(failed, lines)
    return ok, _failed_frame(failed, batch_id=batch_id, attempts=attempts)


def _with_lines(failed: pl.DataFrame, pieces: Callable[[], Iterable[bytes]]) -> pl.DataFrame:
    """``failed`` with the text of each row's line (by ``_ordinal``), read from ``pieces``."""
    from batchframe._lines import read_text_lines

    wanted = failed["_ordinal"].sort()
    last = wanted[-1]
    found: list[pl.DataFrame] = []
    offset = 0
    for data in pieces():
        lines = read_text_lines(data, cut=False).select(
            pl.col("_ordinal").cast(wanted.dtype) + offset, "line"
        )
        offset += len(lines)
        found.append(lines.filter(pl.col("_ordinal").is_in(wanted.implode())))
        if offset > last:
            break
    text = pl.concat(found)
    joined = failed.drop("line").join(text, on="_ordinal", how="left", maintain_order="left")
    return joined.select(failed.columns)


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
    rows = _read(as_bytes(data), endpoint=endpoint, typed=False, base64=False)
    rows = rows.with_columns(
        _error_code=pl.when(pl.col("_ok"))
        .then(pl.lit("unexpected_success"))
        .otherwise(pl.col("_error_code")),
        _error_message=pl.when(pl.col("_ok"))
        .then(pl.lit("a success line in the error file; its body is kept in `line`"))
        .otherwise(pl.col("_error_message")),
        _ok=pl.lit(False),
    )
    return _failed_frame(_request_failures(rows), batch_id=batch_id, attempts=attempts)


# -- parsing internals -----------------------------------------------------------------


def _read(data: bytes, *, endpoint: str, typed: bool, base64: bool) -> pl.DataFrame:
    from batchframe._duckdb_json import read_lines  # duckdb loads on first parse

    try:
        rows = read_lines(data, endpoint=endpoint, typed=typed, base64=base64)
    except ResultsError as exc:
        where = diagnose(data)
        msg = (
            f"{where}; the file may be truncated or damaged, download it again"
            if where
            else str(exc)
        )
        raise ResultsError(msg) from exc
    ids = rows["custom_id"]
    missing = ids.is_null() | (ids == "")
    if missing.any():
        msg = (
            f"line {rows['_lineno'].filter(missing)[0]} has no `custom_id`; "
            "the results cannot be matched to requests"
        )
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
    # One chunk per column: Polars 2.1 panics in `pl.format` over a column holding an
    # empty chunk (left by concatenating and filtering parts). Failed rows are few.
    return bad.rechunk().select(
        "_ordinal",
        "custom_id",
        stage=stage,
        status_code=status,
        error_code=code,
        error_message=message,
        retryable=retryable,
        line="line",
    )


def _shape_failures(rows: pl.DataFrame) -> pl.DataFrame:
    """Failed rows for 2xx lines whose body does not have the declared shape."""
    message = pl.format(
        "the answer's body does not have the endpoint's declared shape: {} (the whole "
        "line is kept in `line`)",
        pl.col("_shape"),
    )
    return _parse_failures(rows, pl.lit(SHAPE_ERROR_CODE), message)


#: ``failed.error_code`` of a 2xx answer whose body does not fit the endpoint's schema.
SHAPE_ERROR_CODE = "unexpected_shape"


def _parse_failures(rows: pl.DataFrame, code: pl.Expr, message: pl.Expr) -> pl.DataFrame:
    return rows.rechunk().select(  # see `_request_failures`
        "_ordinal",
        "custom_id",
        stage=pl.lit("parse"),
        status_code="status_code",
        error_code=code,
        error_message=message,
        retryable=pl.lit(False),
        line="line",
    )


def _explode_embeddings(
    ok: pl.DataFrame, dim: int | None, base64: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per input vector; requests with no or odd-sized vectors become failures."""
    in_place = _vectors_in_place(ok, dim, base64)
    if in_place is not None:
        return in_place, _parse_failures(
            ok.clear(), pl.lit(None, pl.String), pl.lit(None, pl.String)
        )
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
    rows = (
        ok.filter(pl.col("_problem").is_null())
        .explode("_data")
        .with_columns(
            index=pl.col("_data").struct.field("index"),
            embedding=pl.col("_data").struct.field("embedding"),
        )
        .with_columns(prompt_tokens=_USAGE_ON_FIRST_ROW)
    )
    if dim is None:  # no vector anywhere to take a width from
        return rows.with_columns(
            pl.lit(None, dtype=pl.List(pl.Float32)).alias("embedding")
        ), failures
    return rows.with_columns(_typed_vectors(dim, base64)), failures


#: Usage is per request: on the request's first row (of one per vector), so sums stay right.
_USAGE_ON_FIRST_ROW = pl.when(pl.col("_ordinal").is_first_distinct()).then("prompt_tokens")


def _typed_vectors(dim: int, base64: bool) -> pl.Expr:
    """``embedding`` (a list of floats, or base64's bytes) as ``Array(Float32, dim)``."""
    target = pl.Array(pl.Float32, dim)
    emb = pl.col("embedding")
    return emb.bin.reinterpret(dtype=target) if base64 else emb.cast(target)


def _vectors_in_place(ok: pl.DataFrame, dim: int | None, base64: bool) -> pl.DataFrame | None:
    """:func:`_explode_embeddings`' rows when every request holds vectors of one width.

    ``None`` otherwise (no vector, an odd width: the general path names the problem).
    The vectors are most of a file's bytes, and DuckDB hands them over in a few chunks,
    while the frame's ``line`` column comes in many: any query over the whole frame
    would first copy every column into one chunk (~60 MB for a 10,000-line file of
    1536-dimensional vectors, ~30 ms). So each chunk of ``_data`` is taken apart on its
    own, with the rows it belongs to, and the vectors are never copied.
    """
    data = ok["_data"]
    counts = data.list.len()
    if not len(ok) or counts.null_count() or not (counts >= 1).all():
        return None
    rows = pl.DataFrame([ok[c] for c in ok.columns if c not in ("_data", "line", "_lineno")])
    parts = []
    start = 0
    for chunk in data.get_chunks():
        if not len(chunk):
            continue
        items = chunk.list.explode()
        vectors = items.struct.field("embedding")
        if vectors.null_count():
            return None
        size = vectors.bin.size() if base64 else vectors.list.len()
        if dim is None:
            dim = size[0] // 4 if base64 else size[0]
        if not (size == (4 * dim if base64 else dim)).all():
            return None
        part = rows.slice(start, len(chunk))
        n = counts.slice(start, len(chunk))
        start += len(chunk)
        if n.max() != 1:  # several inputs in a request: its row once per vector
            part = part.gather(pl.select(pl.int_range(len(n)).repeat_by(n).explode()).to_series())
        parts.append(
            part.with_columns(
                index=items.struct.field("index"),
                embedding=vectors,
                prompt_tokens=_USAGE_ON_FIRST_ROW,
            ).with_columns(_typed_vectors(dim, base64))
        )
    return pl.concat(parts, rechunk=False)


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


def _casts(schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
    """``schema``'s columns cast to their dtypes (the ok frame's final select)."""
    key = tuple(schema.items())
    casts = _CASTS.get(key)
    if casts is None:
        if len(_CASTS) > 64:  # a few (endpoint, schema) pairs per process
            _CASTS.clear()
        casts = _CASTS[key] = [pl.col(name).cast(dtype) for name, dtype in key]
    return casts


_CASTS: dict[tuple[tuple[str, pl.DataType], ...], list[pl.Expr]] = {}


def _failed_frame(failures: pl.DataFrame, *, batch_id: str, attempts: int) -> pl.DataFrame:
    """Attach batch id and attempts; order by position in the file.

    The lines may be views into a whole file's bytes (``_lines._long_lines``): their
    text is copied out, so that a few failed rows do not keep the file in memory.
    """
    failed = (
        failures.sort("_ordinal")
        .with_columns(batch_id=pl.lit(batch_id), attempts=pl.lit(attempts))
        .select(pl.col(name).cast(dtype) for name, dtype in FAILED_SCHEMA.items())
    )
    line = failed["line"].to_arrow(compat_level=pl.CompatLevel.oldest())  # one new buffer
    return failed.with_columns(pl.Series("line", line, dtype=pl.String))
