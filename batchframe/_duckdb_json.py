"""DuckDB as the JSON engine that turns output/error lines into typed columns.

The lines come from :mod:`batchframe._lines` as text, most with their
``response.body`` already cut out verbatim (``_span``) and a short ``_head`` holding
custom_id, status_code and request_id. DuckDB then parses only those two per line, on
all cores. Chat bodies are read by JSON path (``json_extract_string``: the values the
columns need, one parse per body) and typed and checked in Polars
(:mod:`batchframe._chat_cut`); the other endpoints' with ``from_json`` and declared
structures (fields absent from a body, or of another JSON type, come back NULL). A line
whose cut is not possible or not valid (other key order, other members, escapes it does
not expect) is parsed whole instead; its ``body`` is then DuckDB's minified rendering of
the same JSON value. Embeddings (whose ``body`` is rebuilt without the vectors) and error
files (no body kept) skip the cut and parse every line whole.

Measured on 50,000-line chat shards given as bytes (benchmarks/bench_parse.py, both
cores free, 2026-12-01): 470-525 MB/s, 4.1-4.7x a per-row ``orjson`` loop. Polars
``read_ndjson``/``str.json_decode`` and pyarrow's JSON reader were slower. Every query
runs as a prepared statement on a cursor kept per thread of a per-process in-memory
database (threads never share a connection), which saves planning it each time; DuckDB
runs a prepared statement on one thread, so a large input is cut into one slice of rows
per core, run side by side (:func:`_run`). A job's output file, read in 4 MB pieces, goes
through one prepared statement per file (:func:`read_file`) over the cut texts of all
its pieces.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import wait
from typing import Any

import duckdb
import orjson
import polars as pl
import pyarrow as pa

from batchframe import _chat_cut
from batchframe._lines import embeddings_are_base64, read_text_lines
from batchframe._schemas import MODERATION_CATEGORIES, endpoint_key
from batchframe._shapes import explain, shape_sql
from batchframe._threads import parse_pool
from batchframe.exceptions import ResultsError

__all__ = ["read_file", "read_lines"]

_S, _I = "VARCHAR", "BIGINT"
_ERROR = {"code": _S, "message": _S, "type": _S}
# `from_json` structures: what each endpoint's body is read as.
_BODY_STRUCTURES: dict[str, dict[str, Any]] = {
    "chat/completions": {
        "model": _S,
        "choices": [
            {
                "message": {
                    "content": _S,
                    "refusal": _S,
                    # JSON text, typed below: absent reads as NULL without a lookup,
                    # and a non-array as its text (a typed list would read both as NULL).
                    "tool_calls": "JSON",
                },
                "finish_reason": _S,
            }
        ],
        "usage": {
            "prompt_tokens": _I,
            "completion_tokens": _I,
            "total_tokens": _I,
            "prompt_tokens_details": {"cached_tokens": _I},
            "completion_tokens_details": {"reasoning_tokens": _I},
        },
        "error": _ERROR,
    },
    "responses": {
        "model": _S,
        "status": _S,
        "output": [{"type": _S, "content": [{"type": _S, "text": _S, "refusal": _S}]}],
        "usage": {
            "input_tokens": _I,
            "output_tokens": _I,
            "total_tokens": _I,
            "input_tokens_details": {"cached_tokens": _I},
            "output_tokens_details": {"reasoning_tokens": _I},
        },
        "error": _ERROR,
    },
    "embeddings": {
        "object": _S,
        "model": _S,
        "data": [{"index": "INTEGER", "embedding": "FLOAT[]"}],
        "usage": "JSON",
        "error": _ERROR,
    },
    "completions": {
        "model": _S,
        "choices": [{"text": _S, "finish_reason": _S}],
        "usage": {"prompt_tokens": _I, "completion_tokens": _I, "total_tokens": _I},
        "error": _ERROR,
    },
    "moderations": {
        "model": _S,
        "results": [
            {
                "flagged": "BOOLEAN",
                "categories": dict.fromkeys(MODERATION_CATEGORIES, "BOOLEAN"),
                "category_scores": dict.fromkeys(MODERATION_CATEGORIES, "DOUBLE"),
            }
        ],
        "error": _ERROR,
    },
    "images": {
        "model": _S,
        "data": [{"b64_json": _S, "url": _S, "revised_prompt": _S}],
        "usage": {"input_tokens": _I, "output_tokens": _I, "total_tokens": _I},
        "error": _ERROR,
    },
    "other": {"model": _S, "error": _ERROR},
}
_HEAD_STRUCTURE: dict[str, Any] = {
    "custom_id": _S,
    "response": {"status_code": "INTEGER", "request_id": _S},
}


def _q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    """Quote an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _moderation_columns() -> list[str]:
    flags = ", ".join(
        f"{_q(c)} := list_bool_or(list_transform(b.results, lambda r: r.categories.{_q(c)}))"
        for c in MODERATION_CATEGORIES
    )
    scores = ", ".join(
        f"{_q(c)} := list_max(list_transform(b.results, lambda r: r.category_scores.{_q(c)}))"
        for c in MODERATION_CATEGORIES
    )
    return [
        "list_bool_or(list_transform(b.results, lambda r: r.flagged)) AS flagged",
        f"struct_pack({flags}) AS categories",
        f"struct_pack({scores}) AS category_scores",
    ]


def _without_first_image() -> str:
    """``_raw_body`` with the first image's base64 text replaced by null.

    The image then lives once, in ``b64_json`` (a multi-megabyte image is not held
    twice); further images (n > 1) stay in ``body``. Both the minified and the
    ``": "`` spelling of the member are recognised; otherwise the body is kept whole.
    """
    out = "_raw_body"
    for sep in (":", ": "):
        needle = f"'\"b64_json\"{sep}' || to_json(b.data[1].b64_json)"
        at = f"instr(_raw_body, {needle})"
        out = (
            f"CASE WHEN {at} > 0 THEN substr(_raw_body, 1, {at} - 1) || '\"b64_json\"{sep}null' "
            f"|| substr(_raw_body, {at} + length({needle})) ELSE {out} END"
        )
    return out


_PARTS = (
    "flatten(list_transform(list_filter(b.output, lambda o: o.type = 'message'), "
    "lambda o: list_transform(list_filter(o.content, lambda c: c.type = '{kind}'), "
    "lambda c: c.{field})))"
)
_EMBEDDING_DATA = (
    'list_transform(b.data, lambda d: struct_pack("index" := d.index, '
    "embedding := try(from_base64(d.embedding))))"
)
# Chat's tool calls, from `_tc` (the JSON text of each call's members).
_TOOL_CALL_COLUMN = (
    "list_transform(_tc, lambda t: struct_pack(\"id\" := t.id->>'$', "
    '"type" := t.type->>\'$\', "function" := struct_pack("name" := '
    "t.function.name->>'$', \"arguments\" := t.function.arguments->>'$'))) AS tool_calls"
)
# Select lists per endpoint over `b` (the typed body). `body` is the raw body where
# this SQL changes it; elsewhere it is only set for lines parsed whole (the reader
# fills in the cut text for the others).
_TYPED_COLUMNS = {
    "chat/completions": [  # over the values of `_chat_cut.VALUES`
        "_content AS content",
        "_refusal AS refusal",
        "_finish AS finish_reason",
        _TOOL_CALL_COLUMN,
        "_pt AS prompt_tokens",
        "_ct AS completion_tokens",
        "_tt AS total_tokens",
        "_cached AS cached_tokens",
        "_reasoning AS reasoning_tokens",
    ],
    "responses": [
        "CASE WHEN len(_text) > 0 THEN array_to_string(_text, '') END AS output_text",
        "b.status AS status",
        "b.usage.input_tokens AS input_tokens",
        "b.usage.output_tokens AS output_tokens",
        "b.usage.total_tokens AS total_tokens",
        "b.usage.input_tokens_details.cached_tokens AS cached_tokens",
        "b.usage.output_tokens_details.reasoning_tokens AS reasoning_tokens",
        "_refusals[1] AS _refusal",
    ],
    "embeddings": [
        # Without `data`: the vectors are in `embedding`.
        "json_object('object', b.object, 'model', b.model, 'usage', b.usage) AS body",
        "TRY_CAST(b.usage->>'$.prompt_tokens' AS BIGINT) AS prompt_tokens",
        "b.data AS _data",
    ],
    "completions": [
        "b.choices[1].text AS text",
        "b.choices[1].finish_reason AS finish_reason",
        "b.usage.prompt_tokens AS prompt_tokens",
        "b.usage.completion_tokens AS completion_tokens",
        "b.usage.total_tokens AS total_tokens",
    ],
    "moderations": _moderation_columns(),
    "images": [
        f"{_without_first_image()} AS body",
        "b.data[1].b64_json AS b64_json",
        "b.data[1].url AS url",
        "b.data[1].revised_prompt AS revised_prompt",
        "len(b.data)::INTEGER AS n_images",
        "b.usage.input_tokens AS input_tokens",
        "b.usage.output_tokens AS output_tokens",
        "b.usage.total_tokens AS total_tokens",
    ],
    "other": [],
}
# The columns every row has, from a line whose body was cut out (`h` is the parsed
# head, `b` the body; the line ended in `"error": null`) ...
_CUT_COMMON = """
    _ordinal, h IS NOT NULL AND b IS NOT NULL AS _cut,
    h.custom_id AS custom_id, h.response.request_id AS request_id,
    h.response.status_code AS status_code, b.model AS model,
    coalesce(h.response.status_code BETWEEN 200 AND 299, false) AS _ok,
    coalesce(b.error.code, b.error.type) AS _error_code, b.error.message AS _error_message"""
# ... and from a line parsed whole (`w`; `_rtype` is the JSON type of its response).
_WHOLE_COMMON = """
    _ordinal, false AS _cut,
    w.custom_id AS custom_id, w.response.request_id AS request_id,
    w.response.status_code AS status_code, b.model AS model,
    coalesce(w.error IS NULL AND _rtype = 'OBJECT'
        AND w.response.status_code BETWEEN 200 AND 299, false) AS _ok,
    coalesce(
        CASE WHEN json_type(w.error) = 'OBJECT' THEN w.error->>'$.code' END,
        b.error.code, b.error.type
    ) AS _error_code,
    coalesce(
        CASE json_type(w.error) WHEN 'OBJECT' THEN w.error->>'$.message'
            WHEN 'NULL' THEN NULL ELSE w.error->>'$' END,
        b.error.message
    ) AS _error_message,
    coalesce(_rtype NOT IN ('OBJECT', 'NULL'), false) AS _bad_response"""


def _kind(endpoint: str, typed: bool) -> str:
    key = endpoint_key(endpoint)
    if key.startswith("images/"):
        key = "images"
    return key if typed and key in _BODY_STRUCTURES else "other"


def _query(kind: str, base64: bool, *, cut: bool, body: bool = True, lenient: bool = True) -> str:
    """The SQL over the view ``lines`` (``_ordinal`` and ``line`` or ``_span, _head``).

    ``cut``: parse each line's cut ``_span`` and ``_head`` (``_cut`` is false where
    either does not parse: those lines are then read with ``cut=False``); else parse
    each ``line`` whole. ``body``: whether the raw body text is wanted (for lines
    parsed whole it costs another pass over the line). ``lenient=False`` (with
    ``cut``): a cut that does not parse fails the query instead (~4% less work for
    DuckDB when every cut parses, as in files of the API's layout).
    """
    structure = _BODY_STRUCTURES[kind]
    if base64:
        structure = {**structure, "data": [{"index": "INTEGER", "embedding": _S}]}
    if cut and kind == "chat/completions":  # read by path, typed in `_chat_cut.rows`
        return _chat_cut.query(lenient=lenient)
    if cut:
        # `try`: a cut that is not one JSON value gives NULL, not an error.
        parse = "try(from_json" if lenient else "(from_json"
        source = f"""
            SELECT _ordinal, _span AS _raw_body,
                {parse}(_head, {_lit(orjson.dumps(_HEAD_STRUCTURE).decode())})) AS h,
                {parse}(_span, {_lit(orjson.dumps(structure).decode())})) AS b
            FROM lines"""
        common = _CUT_COMMON
    else:
        whole = {
            "custom_id": _S,
            "response": {**_HEAD_STRUCTURE["response"], "body": structure},
            "error": "JSON",
        }
        raw_body = "json_extract(line, '$.response.body')::VARCHAR" if body else "NULL::VARCHAR"
        # `response` is NULL when null or absent; a non-object reads as a struct of
        # nulls, and only then is its type looked up (it is an error).
        source = f"""
            SELECT _ordinal, line, w, w.response.body AS b, _rtype,
                CASE WHEN _rtype = 'OBJECT' THEN {raw_body} END AS _raw_body
            FROM (
                SELECT *, CASE WHEN w.response IS NULL THEN 'NULL'
                    WHEN w.response.status_code IS NOT NULL THEN 'OBJECT'
                    ELSE json_type(line, '$.response') END AS _rtype
                FROM (
                    SELECT _ordinal, line,
                        from_json(line, {_lit(orjson.dumps(whole).decode())}) AS w
                    FROM lines))"""
        common = _WHOLE_COMMON
    columns = list(_TYPED_COLUMNS[kind])
    if not any(c.endswith(" AS body") for c in columns):
        # Cut lines get their body from the cut text, outside DuckDB.
        columns.insert(0, "_raw_body AS body" if body and not cut else "NULL::VARCHAR AS body")
    if base64:
        columns = [_EMBEDDING_DATA + " AS _data" if c == "b.data AS _data" else c for c in columns]
    if kind == "responses":
        source = f"""
            SELECT *, {_PARTS.format(kind="output_text", field="text")} AS _text,
                {_PARTS.format(kind="refusal", field="refusal")} AS _refusals
            FROM ({source})"""
    # Shape checks (batchframe._shapes): `_types` holds the JSON types of a row's
    # doubtful fields, looked up in the raw text only where a typed value cannot tell.
    if cut:
        raw, prefix = "_raw_body", "$"
        ok = "h IS NOT NULL AND b IS NOT NULL AND h.response.status_code BETWEEN 200 AND 299"
    else:
        raw, prefix = "line", "$.response.body"
        ok = "w.error IS NULL AND _rtype = 'OBJECT' AND w.response.status_code BETWEEN 200 AND 299"
    wrapper, shape = shape_sql(kind, base64, raw=raw, prefix=prefix, ok=ok)
    if kind == "chat/completions":
        # The values `_chat_cut` reads by path, from the typed body.
        values = ", ".join(f"{_chat_cut.from_typed_body(n)} AS {n}" for n in _chat_cut.VALUES)
        source = f"SELECT *, {values}, {_TOOL_CALLS} AS _tc FROM ({source})"
    source = wrapper.replace("{source}", source)
    return f"SELECT {common}, {', '.join(columns)}, {shape} AS _shape FROM ({source})"


@functools.cache
def _chat_checks() -> str:
    """The SQL :func:`batchframe._chat_cut.rows` runs over the rows it looks at closer."""
    two_xx = "status_code BETWEEN 200 AND 299"
    wrapper, shape = shape_sql("chat/completions", False, raw="_raw_body", prefix="$", ok=two_xx)
    errors = (
        f"CASE WHEN NOT {two_xx} THEN json_extract_string(_raw_body, {_chat_cut.ERROR_PATHS}) END"
    )
    source = wrapper.replace(
        "{source}", f"SELECT *, {_TOOL_CALLS} AS _tc, {errors} AS _e FROM lines"
    )
    return (
        "SELECT _ordinal, coalesce(_e[1], _e[2]) AS _error_code, _e[3] AS _error_message, "
        f"{_TOOL_CALL_COLUMN}, {shape} AS _shape FROM ({source})"
    )


_TOOL_CALLS = (
    "CASE WHEN left(_tool_calls, 1) = '[' THEN "
    "from_json(_tool_calls, "
    + _lit('[{"id":"JSON","type":"JSON","function":{"name":"JSON","arguments":"JSON"}}]')
    + ") END"
)


_ENGINE: dict[int, duckdb.DuckDBPyConnection] = {}
_ENGINE_LOCK = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A private connection to this process's in-memory DuckDB.

    Cursors share one database instance (its thread pool and buffer manager), which
    saves ~10 ms of start-up per parsed file; each is safe to use from its own thread.
    Keyed by pid so a forked worker never touches its parent's instance.
    """
    with _ENGINE_LOCK:
        pid = os.getpid()
        if pid not in _ENGINE:
            _ENGINE.clear()
            _ENGINE[pid] = duckdb.connect(":memory:")
        return _ENGINE[pid].cursor()


#: Bytes of lines per Arrow record batch: DuckDB scans batches in parallel, so a
#: shard must give it several. DuckDB's JSON functions hold each batch's parsed
#: documents at once: a 208 MB embeddings shard (1536 floats a line) parsed ~7 % faster
#: in 2 MB batches than in 4 MB ones, with half the page faults (1 MB: the same; 512 KB
#: and 16 MB: slower). Chat shards take the same time either way.
_BATCH_BYTES = 2 * 2**20
#: Batches per core at least (where there are rows enough): a 4 MB piece of a file, as a
#: job parses it, would otherwise be one batch on one core.
_BATCHES_PER_CORE = 2


def _batches(frame: pl.DataFrame) -> tuple[pa.Table, int]:
    """``frame`` as Arrow record batches, and the bytes of its text."""
    # String views: no copy on the way out of Polars, and DuckDB reads them as they are.
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
    text = next(c for c in ("line", "_span", "_raw_body") if c in frame.columns)
    n_bytes = int(frame[text].str.len_bytes().sum() or 0)
    spread = -(-len(frame) // (_BATCHES_PER_CORE * (os.cpu_count() or 1)))
    rows = max(16, min(8192, spread, len(frame) * _BATCH_BYTES // max(n_bytes, 1)))
    return pa.Table.from_batches(table.to_batches(max_chunksize=rows), schema=table.schema), n_bytes


def read_lines(
    data: bytes | os.PathLike[str], *, endpoint: str, typed: bool = True, base64: bool = False
) -> pl.DataFrame:
    """Read output or error JSONL into one row per non-blank line, in file order.

    Columns: ``_ordinal`` (position among the non-blank lines), ``_lineno`` (line
    number in the file), ``line`` (its text), ``custom_id, request_id, status_code,
    model, _ok, _error_code, _error_message, body`` and, when ``typed``, the endpoint's
    extracted columns (embeddings: ``prompt_tokens`` and ``_data``, a list of ``{index,
    embedding}``). ``base64`` reads embeddings sent with ``encoding_format="base64"``.

    ``body`` is the API's own text of ``response.body`` when the line has the layout
    OpenAI writes (:func:`batchframe._lines.cut_body`), else DuckDB's minified
    rendering of it; embeddings and images change it as ``_schemas`` describes.

    Raises
    ------
    ResultsError
        The bytes are not JSON lines of the expected shape (the message names the
        first bad line when it can).
    """
    kind = _kind(endpoint, typed)
    # Embeddings rebuild their body and error files need none: no cut, lines parsed whole.
    cut = typed and kind != "embeddings"
    try:
        lines = read_text_lines(data, cut=cut)
    except (pl.exceptions.PolarsError, OSError) as exc:
        msg = f"cannot read the lines: {exc}"
        raise ResultsError(msg) from exc
    parts: list[pl.DataFrame] = []
    whole = lines
    try:
        if cut:
            cuts = lines.drop("_lineno", "line")
            try:  # every cut parses (the API's layout): no per-row error handling
                first = _read_cut(kind, base64, cuts, lenient=False)
            except duckdb.Error:  # some cut is not one JSON value: those read as NULL
                first = _read_cut(kind, base64, cuts, lenient=True)
            if first["_cut"].all():  # the usual case: no filtering
                parts.append(first)
                whole = lines.clear()
            else:
                if first["_cut"].any():
                    parts.append(first.filter(pl.col("_cut")))
                whole = lines.filter(~first["_cut"])
        if len(whole) or not parts:
            # Lines without a valid cut are parsed whole; they keep their place by ordinal.
            query = _query(kind, base64, cut=False, body=cut)
            rest = _run(query, whole.select("_ordinal", "line"))
            bad = rest.filter(pl.col("_bad_response"))
            if len(bad):
                lineno = lines["_lineno"][int(bad["_ordinal"][0])]
                msg = f"line {lineno}: `response` is not an object"
                raise ResultsError(msg)
            parts.append(rest.drop("_bad_response"))
    except duckdb.Error as exc:
        msg = f"cannot read JSON lines: {exc}"
        raise ResultsError(msg) from exc
    parsed = parts[0] if len(parts) == 1 else pl.concat(parts).sort("_ordinal")
    parsed = _explain_shapes(parsed, kind, base64)
    # Assembled from Series (no query per step: a job parses many small pieces).
    columns = [lines["_lineno"], lines["line"]]
    for column in parsed.get_columns():
        if column.name == "_cut":
            continue
        if cut and column.name == "body":
            if column.null_count() == len(column) and parsed["_cut"].all():
                column = lines["_span"].alias("body")  # every body is the cut text
            else:
                take = pl.when(parsed["_cut"]).then(lines["_span"])
                column = pl.select(pl.coalesce(column, take).alias("body")).to_series()
        columns.append(column)
    return pl.DataFrame(columns)


def _read_cut(kind: str, base64: bool, cuts: pl.DataFrame, *, lenient: bool) -> pl.DataFrame:
    """The typed rows of ``cuts`` (``_ordinal, _span, _head``), with ``_cut``, as ``_query``."""
    parsed = _run(_query(kind, base64, cut=True, lenient=lenient), cuts)
    if kind == "chat/completions":
        parsed = _chat_cut.rows(parsed, cuts["_span"], _run, _chat_checks())
    return parsed


def _explain_shapes(parsed: pl.DataFrame, kind: str, base64: bool) -> pl.DataFrame:
    """``_shape`` codes as messages (:func:`batchframe._shapes.explain`)."""
    if parsed["_shape"].null_count() == len(parsed):  # the usual case: every body fits
        return parsed
    shape = parsed["_shape"].map_elements(
        lambda code: explain(kind, base64, code), return_dtype=pl.String
    )
    return parsed.with_columns(shape)


class _Stop(Exception):
    """A piece of :func:`read_file` that the one-statement path does not take."""


def read_file(pieces: Iterable[bytes], *, endpoint: str) -> tuple[pl.DataFrame, bool] | None:
    """:func:`read_lines` of a whole file given as consecutive pieces of whole lines.

    The pieces run through one prepared statement per file (this thread's, with the
    optimiser on): binding, planning and the per-query fixed costs are paid once per
    file, not per piece. Lines with a cut body are cut piece by piece first, and the
    statement reads the cut texts as one table: only the spans (which become ``body``)
    and the short heads of the file are held, never its whole lines. Embeddings, parsed
    whole, go in as an Arrow stream that reads each piece's lines as DuckDB asks for
    them, so one piece's lines are held at a time. The rows
    are those of ``read_lines`` over the joined pieces (``_ordinal`` across the file,
    ``_lineno`` within each piece), except that ``line`` is null: the lines are not
    kept (callers read the few they need again). Also returned: whether embeddings
    came as base64 (``read_lines``' ``base64``, from the first piece).

    Returns ``None`` where this path does not apply, for the caller to parse the pieces
    one by one instead: a line that is not in the layout OpenAI writes or whose cut is
    not one JSON value (embeddings: a ``response`` that is not an object), a piece that
    cannot be read as text lines, embeddings of both encodings.
    """
    kind = _kind(endpoint, True)
    whole = kind == "embeddings"  # parsed whole, as in `read_lines`
    spans: list[pl.Series] = []
    linenos: list[pl.Series] = []
    stopped: list[BaseException | None] = []
    base64 = False

    def read(data: bytes, offset: int) -> pa.Table:
        lines = read_text_lines(data, cut=not whole)
        if whole:
            # A piece with vectors in the other encoding (one without any reads alike).
            if b'"embedding"' in data and embeddings_are_base64(data) != base64:
                raise _Stop
            text = lines.select(pl.col("_ordinal") + offset, "line")
        else:
            if lines["_head"].null_count():  # a line of another layout (or no cut)
                raise _Stop
            spans.append(lines["_span"])
            text = lines.select(pl.col("_ordinal") + offset, "_span", "_head")
        linenos.append(lines["_lineno"])
        return text.to_arrow(compat_level=pl.CompatLevel.newest())

    def batches(held: list[pa.Table], rest: Iterator[bytes]) -> Iterator[pa.RecordBatch]:
        first = held.pop()  # not held for the whole statement
        offset = first.num_rows
        yield from first.to_batches()
        del first
        try:
            for data in rest:
                table = read(data, offset)
                offset += table.num_rows
                yield from table.to_batches()
        except Exception:  # the caller parses the pieces one by one, which raises it again
            stopped.append(None)
        except BaseException as exc:  # an interrupt: raised again once DuckDB returns
            stopped.append(exc)

    it = iter(pieces)
    try:
        data = next(it, b"")
        if whole:  # the encoding of the first vector (looked for in a few pieces)
            ahead = [data]
            while b'"embedding"' not in ahead[-1] and len(ahead) < 4:
                ahead.append(next(it, b""))
                if not ahead[-1]:
                    break
            base64 = embeddings_are_base64(ahead[-1])
            it = itertools.chain(ahead[1:], it)
        first = read(data, 0)
    except Exception:  # as above
        return None
    del data
    rows = _result_rows(first.get_total_buffer_size(), first.num_rows)
    sql = _query(kind, base64, cut=not whole, body=not whole, lenient=False)
    source: pa.Table | pa.RecordBatchReader
    if whole:
        # Whole lines (embeddings: mostly vectors) are held one piece at a time.
        source = pa.RecordBatchReader.from_batches(first.schema, batches([first], it))
    else:
        # Cut lines: the spans are kept for `body` anyway, and a table costs DuckDB less
        # than a stream (measured on a 50,000-line chat file: ~40 MB less peak RSS and
        # ~15 % less CPU), so every piece is cut before the statement runs.
        tables = [first]
        offset = first.num_rows
        try:
            for data in it:
                tables.append(read(data, offset))
                offset += tables[-1].num_rows
        except Exception:  # the caller parses the pieces one by one, which raises it again
            return None
        source = pa.concat_tables(tables)
        del tables
    del first
    try:
        result = _prepared(optimize=True).run(sql, source, rows)
    except duckdb.Error:  # some cut is not one JSON value
        result = None
    del source
    if stopped and stopped[0] is not None:
        raise stopped[0]
    if stopped or result is None:
        return None
    parsed = pl.from_arrow(result)
    assert isinstance(parsed, pl.DataFrame)
    lineno = pl.concat(linenos) if len(linenos) > 1 else linenos[0]
    if len(parsed) != len(lineno):
        return None
    if not parsed["_ordinal"].is_sorted():
        parsed = parsed.sort("_ordinal")
    span = None if whole else pl.concat(spans) if len(spans) > 1 else spans[0]
    if whole:
        if parsed["_bad_response"].any():  # the pieces one by one name the line
            return None
        parsed = parsed.drop("_bad_response")
    else:
        assert span is not None
        if kind == "chat/completions":
            parsed = _chat_cut.rows(parsed, span, _run, _chat_checks())
        if not parsed["_cut"].all():
            return None
    parsed = _explain_shapes(parsed, kind, base64)
    columns = [lineno, pl.Series("line", dtype=pl.String).extend_constant(None, len(lineno))]
    for column in parsed.get_columns():
        if column.name == "_cut":
            continue
        columns.append(span.alias("body") if span is not None and column.name == "body" else column)
    return pl.DataFrame(columns), base64


def _run(sql: str, lines: pl.DataFrame) -> pl.DataFrame:
    """Run ``sql`` over ``lines`` (as the view ``lines``); rows in ``_ordinal`` order.

    The statement runs as a prepared statement (:class:`_Prepared`): no parsing,
    binding or planning per call (planning the typed query costs ~15-20 ms, as much as
    parsing 15,000 chat lines). DuckDB executes a prepared statement on one thread, so
    inputs of more than ``_PREPARED_MAX_BYTES`` of text are cut into one slice of rows
    per core, each run on its own cursor by a thread of its own
    (:func:`batchframe._threads.parse_pool`).
    Measured on a 50,000-line chat shard on 2 cores: 48 ms against 63 ms for one
    statement planned per call and scanned on both cores.
    """
    table, n_bytes = _batches(lines)
    rows = _result_rows(n_bytes, table.num_rows)
    slices = min(os.cpu_count() or 1, -(-n_bytes // _PREPARED_MAX_BYTES), table.num_rows)
    if slices <= 1:
        result = _prepared().run(sql, table, rows)
    else:
        step = -(-table.num_rows // slices)
        parts = [table.slice(start, step) for start in range(0, table.num_rows, step)]
        futures = [parse_pool().submit(_run_slice, sql, part, rows) for part in parts]
        wait(futures)  # none left running on a cursor when an error is raised
        result = pa.concat_tables([f.result() for f in futures])
    parsed = pl.from_arrow(result)
    assert isinstance(parsed, pl.DataFrame)
    return parsed if parsed["_ordinal"].is_sorted() else parsed.sort("_ordinal")


def _run_slice(sql: str, table: pa.Table, rows: int) -> pa.Table:
    return _prepared(optimize=True).run(sql, table, rows)


#: Bytes of input text per Arrow batch of a result. DuckDB builds each result batch in
#: buffers it grows by doubling, so a batch of many wide rows copies its values several
#: times into freshly mapped memory: a 10,000-line embeddings shard (1536 floats a line)
#: parsed ~4 % faster in batches of 2,048 rows (one DuckDB vector) than in one batch
#: per slice; chat rows, ~50 times narrower, stay one batch per slice (small batches
#: were no faster there).
_RESULT_BATCH_BYTES = 32 * 2**20
#: Rows of one DuckDB vector: result batches are whole vectors.
_VECTOR_ROWS = 2048


def _result_rows(n_bytes: int, n_rows: int) -> int:
    """Rows per Arrow batch of a result, for an input of ``n_bytes`` over ``n_rows``."""
    per_row = max(1, n_bytes // max(n_rows, 1))
    return max(_VECTOR_ROWS, _RESULT_BATCH_BYTES // per_row // _VECTOR_ROWS * _VECTOR_ROWS)


#: Inputs up to this many bytes of text are parsed by one prepared statement, which
#: DuckDB runs on one thread (less CPU than two threads on a small input: a 4 MB chat
#: piece took 13-14 ms against 18 ms with the query planned per call); larger ones in
#: slices side by side (see `_run`).
_PREPARED_MAX_BYTES = 8 * 2**20


class _Current:
    """An Arrow stream source serving whatever table is set on it at the time it is read."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table: pa.Table | pa.RecordBatchReader | None = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        assert self.table is not None
        return self.table.__arrow_c_stream__(requested_schema)


class _Prepared:
    """One thread's cursor with a prepared statement per (query, input schema).

    Each statement reads its own registered :class:`_Current` (``lines_<n>``, named
    ``lines`` inside the statement by a CTE), which serves the table of the current call;
    the table is dropped again after the call.
    """

    def __init__(self, *, optimize: bool = False) -> None:
        self.pid = os.getpid()
        self.con = _cursor()
        # DuckDB re-optimises a prepared statement at every EXECUTE: for these queries
        # (projections over `from_json`, no joins or filters to push down) that was
        # ~2 of the ~2.8 ms of an empty call, and a 4 MB chat piece took 9.6 ms without
        # it against 14.9 ms with it. This cursor's session only. A statement executed
        # once per file (`read_file`) keeps the optimiser: its plan costs less per line.
        if not optimize:
            self.con.execute("SET SESSION enable_optimizer = false")
        self.statements: dict[tuple[str, pa.Schema], tuple[str, _Current]] = {}

    def run(
        self, sql: str, table: pa.Table | pa.RecordBatchReader, rows: int = 128 * 1024
    ) -> pa.Table:
        """The result of ``sql`` over ``table``, in Arrow batches of ``rows`` rows."""
        key = (sql, table.schema)
        if key not in self.statements:
            n = len(self.statements)
            source = _Current(table if isinstance(table, pa.Table) else table.schema.empty_table())
            self.con.register(f"lines_{n}", source)
            self.con.execute(f"PREPARE q_{n} AS WITH lines AS (SELECT * FROM lines_{n}) {sql}")
            self.statements[key] = (f"q_{n}", source)
        name, source = self.statements[key]
        source.table = table
        try:
            if _submit is not None:
                result = _submit(self.con, f"EXECUTE {name}", None, "arrow", batch_size=rows)
                return result.arrow_table()
            rel = self.con.sql(f"EXECUTE {name}")
            assert rel is not None
            return rel.to_arrow_table(batch_size=rows)
        finally:
            source.table = None


def _find_submit() -> Any:
    """The one-statement runner of duckdb 2.0, straight to Arrow (``None`` if it is not there).

    ``con.sql("EXECUTE ...")`` runs the statement into a result held as rows and then
    reads that back as Arrow (~1.3 ms more per call); ``execute`` warns of the same copy.
    It is private: where it is missing, the public path is used.
    """
    try:
        from duckdb import _seam
    except ImportError:
        return None
    submit = getattr(_seam, "submit", None)
    return submit if callable(submit) else None


_submit = _find_submit()


_LOCAL = threading.local()


def _prepared(*, optimize: bool = False) -> _Prepared:
    """The calling thread's :class:`_Prepared` (a new one in a forked child)."""
    attr = "optimized" if optimize else "prepared"
    state: _Prepared | None = getattr(_LOCAL, attr, None)
    if state is None or state.pid != os.getpid():
        state = _Prepared(optimize=optimize)
        setattr(_LOCAL, attr, state)
    return state
