"""DuckDB, twice: the JSON engine that reads output/error lines, and the table sink.

Reading: DuckDB's ``read_json`` with declared columns is the fastest JSON engine
measured here (benchmarks/bench_parse.py: about 2x a per-row ``orjson`` loop on 50k-line
chat shards, about 3x on embeddings; keeping each raw ``body`` as JSON text costs a
second parse of it, without which chat reached ~3.8x). Polars ``str.json_decode`` and
pyarrow's JSON reader were slower. Each call uses its own cursor on a per-process
in-memory database, so threads never share a connection.

Writing: :func:`write_duckdb` upserts ``{table}``, ``{table}_failed`` and
``{table}_batches`` in one transaction, sqlite-utils' ``upsert_all`` in spirit.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import polars as pl

from batchframe._schemas import (
    FAILED_SCHEMA,
    MODERATION_CATEGORIES,
    endpoint_key,
    ok_key,
)
from batchframe.exceptions import ResultsError

if TYPE_CHECKING:
    from batchframe._results import BatchResults

__all__ = [
    "as_bytes",
    "diagnose",
    "embeddings_are_base64",
    "iter_lines",
    "line_custom_id",
    "raw_lines",
    "read_lines",
    "write_duckdb",
]

# -- reading ---------------------------------------------------------------------------

_S, _I = "VARCHAR", "BIGINT"
_ERROR = {"code": _S, "message": _S, "type": _S}
# `from_json` structures: what each endpoint's body is read as. Fields absent from a
# body (or of another JSON type) come back NULL; the raw body is kept regardless.
_BODY_STRUCTURES: dict[str, dict[str, Any]] = {
    "chat/completions": {
        "model": _S,
        "choices": [
            {
                "message": {
                    "content": _S,
                    "refusal": _S,
                    "tool_calls": [
                        {"id": _S, "type": _S, "function": {"name": _S, "arguments": _S}}
                    ],
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


def _q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


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


_PARTS = (
    "flatten(list_transform(list_filter(b.output, lambda o: o.type = 'message'), "
    "lambda o: list_transform(list_filter(o.content, lambda c: c.type = '{kind}'), "
    "lambda c: c.{field})))"
)
_NEEDLE = "'\"b64_json\":' || to_json(b.data[1].b64_json)"
# Select lists per endpoint over `b` (the typed body) and `body` (its JSON text).
_TYPED_COLUMNS = {
    "chat/completions": [
        "body",
        "b.choices[1].message.content AS content",
        "b.choices[1].message.refusal AS refusal",
        "b.choices[1].finish_reason AS finish_reason",
        "b.choices[1].message.tool_calls AS tool_calls",
        "b.usage.prompt_tokens AS prompt_tokens",
        "b.usage.completion_tokens AS completion_tokens",
        "b.usage.total_tokens AS total_tokens",
        "b.usage.prompt_tokens_details.cached_tokens AS cached_tokens",
        "b.usage.completion_tokens_details.reasoning_tokens AS reasoning_tokens",
    ],
    "responses": [
        "body",
        "CASE WHEN len(_text) > 0 THEN array_to_string(_text, '') END AS output_text",
        "b.status AS status",
        "b.usage.input_tokens AS input_tokens",
        "b.usage.output_tokens AS output_tokens",
        "b.usage.total_tokens AS total_tokens",
        "b.usage.input_tokens_details.cached_tokens AS cached_tokens",
        "b.usage.output_tokens_details.reasoning_tokens AS reasoning_tokens",
        "_refusals[1] AS _refusal",
    ],
    "completions": [
        "body",
        "b.choices[1].text AS text",
        "b.choices[1].finish_reason AS finish_reason",
        "b.usage.prompt_tokens AS prompt_tokens",
        "b.usage.completion_tokens AS completion_tokens",
        "b.usage.total_tokens AS total_tokens",
    ],
    "moderations": ["body", *_moderation_columns()],
    "images": [
        # The first image moves from `body` to `b64_json` (set to null in `body`), so a
        # multi-megabyte image is held once; further images (n > 1) stay in `body`.
        f"CASE WHEN instr(body, {_NEEDLE}) > 0 THEN "
        f"substr(body, 1, instr(body, {_NEEDLE}) - 1) || '\"b64_json\":null' || "
        f"substr(body, instr(body, {_NEEDLE}) + length({_NEEDLE})) ELSE body END AS body",
        "b.data[1].b64_json AS b64_json",
        "b.data[1].url AS url",
        "b.data[1].revised_prompt AS revised_prompt",
        "len(b.data)::INTEGER AS n_images",
        "b.usage.input_tokens AS input_tokens",
        "b.usage.output_tokens AS output_tokens",
        "b.usage.total_tokens AS total_tokens",
    ],
    "other": ["body"],
}


def _columns(body: str) -> dict[str, str]:
    """``read_json(columns=...)`` for a line whose ``response.body`` reads as ``body``."""
    response = f"STRUCT(status_code INTEGER, request_id VARCHAR, body {body})"
    return {"custom_id": "VARCHAR", "response": response, "error": "JSON"}


_EMBEDDING_BODY = (
    'STRUCT(object VARCHAR, model VARCHAR, data STRUCT("index" INTEGER, embedding {emb})[], '
    "usage JSON, error JSON)"
)
_COMMON = """
    custom_id, request_id, status_code, model,
    coalesce(error IS NULL AND has_response AND status_code BETWEEN 200 AND 299, false) AS _ok,
    coalesce(
        CASE WHEN json_type(error) = 'OBJECT' THEN error->>'$.code' END, _body_code
    ) AS _error_code,
    coalesce(
        CASE json_type(error) WHEN 'OBJECT' THEN error->>'$.message'
            WHEN 'NULL' THEN NULL ELSE error->>'$' END,
        _body_message
    ) AS _error_message"""


def _kind(endpoint: str) -> str:
    key = endpoint_key(endpoint)
    if key.startswith("images/"):
        return "images"
    return key if key in _BODY_STRUCTURES or key == "embeddings" else "other"


def _query(kind: str, typed: bool, base64: bool) -> tuple[dict[str, str], str]:
    """The ``read_json`` columns and the SQL over them (the view is called ``lines``)."""
    if kind == "embeddings" and typed:
        emb = "VARCHAR" if base64 else "FLOAT[]"
        data = (
            'list_transform(b.data, lambda d: struct_pack("index" := d.index, '
            "embedding := from_base64(d.embedding)))"
            if base64
            else "b.data"
        )
        columns = _columns(_EMBEDDING_BODY.format(emb=emb))
        sql = f"""
        WITH r AS (
            SELECT custom_id, response.status_code AS status_code,
                response.request_id AS request_id, response IS NOT NULL AS has_response,
                error, response.body AS b
            FROM lines),
        s AS (
            SELECT *, b.model AS model,
                CASE WHEN json_type(b.error) = 'OBJECT'
                    THEN coalesce(b.error->>'$.code', b.error->>'$.type') END AS _body_code,
                CASE WHEN json_type(b.error) = 'OBJECT' THEN b.error->>'$.message' END
                    AS _body_message
            FROM r)
        SELECT {_COMMON},
            json_object('object', b.object, 'model', b.model, 'usage', b.usage) AS body,
            TRY_CAST(b.usage->>'$.prompt_tokens' AS BIGINT) AS prompt_tokens,
            {data} AS _data
        FROM s"""
        return columns, sql
    if not typed or kind == "embeddings":
        kind = "other"
    columns = _columns("JSON")
    parts = ""
    if kind == "responses":
        parts = (
            f", {_PARTS.format(kind='output_text', field='text')} AS _text"
            f", {_PARTS.format(kind='refusal', field='refusal')} AS _refusals"
        )
    sql = f"""
    WITH s AS (
        SELECT custom_id, response.status_code AS status_code,
            response.request_id AS request_id, response IS NOT NULL AS has_response,
            error, response.body::VARCHAR AS body,
            from_json(response.body, '{orjson.dumps(_BODY_STRUCTURES[kind]).decode()}') AS b
        FROM lines),
    t AS (
        SELECT *, b.model AS model,
            coalesce(b.error.code, b.error.type) AS _body_code,
            b.error.message AS _body_message{parts}
        FROM s)
    SELECT {_COMMON}, {", ".join(_TYPED_COLUMNS[kind])}
    FROM t"""
    return columns, sql


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


_RAM_DIR = "/dev/shm"


@contextmanager
def _readable(data: bytes | bytearray | memoryview | os.PathLike[str]) -> Iterator[Any]:
    """Something ``read_json`` can scan: a path, a file in RAM, or a file object.

    DuckDB reads a path with its own parallel reader; a Python file object goes
    through fsspec, copying the bytes twice and reading under the GIL (measured
    ~1.4x slower on chat shards). So bytes are put in a RAM-backed temporary file when the machine
    has one with room, and deleted right after.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        yield os.fspath(data)
        return
    path = _ram_copy(data)
    try:
        yield path if path is not None else io.BytesIO(data)
    finally:
        if path is not None:
            with suppress(OSError):
                os.unlink(path)


def _ram_copy(data: bytes | bytearray | memoryview) -> str | None:
    """Write ``data`` to a new file in RAM; None if there is no RAM disk with room."""
    try:
        stat = os.statvfs(_RAM_DIR)
        if stat.f_bavail * stat.f_frsize < 2 * len(data) + 2**26:
            return None
        fd, path = tempfile.mkstemp(prefix="batchframe-", suffix=".jsonl", dir=_RAM_DIR)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError:
        with suppress(OSError):
            os.unlink(path)
        return None
    return path


def _scan(
    con: duckdb.DuckDBPyConnection, source: Any, columns: dict[str, str], sql: str, limit: int
) -> Any:
    if isinstance(source, io.BytesIO):
        source.seek(0)
    rel = con.read_json(
        source,
        format="newline_delimited",
        records="true",
        columns=columns,
        maximum_object_size=limit,
    )
    result = rel.query("lines", sql)
    assert result is not None
    return result.to_arrow_table()


def read_lines(
    data: bytes | os.PathLike[str], *, endpoint: str, typed: bool = True, base64: bool = False
) -> pl.DataFrame:
    """Read output or error JSONL into one row per non-blank line, in file order.

    Columns: ``custom_id, request_id, status_code, model, _ok, _error_code,
    _error_message, body`` and, when ``typed``, the endpoint's extracted columns
    (embeddings: ``prompt_tokens`` and ``_data``, a list of ``{index, embedding}``).
    ``base64`` reads embeddings sent with ``encoding_format="base64"``.

    Raises
    ------
    ResultsError
        The bytes are not JSON lines of the expected shape (DuckDB's message).
    """
    columns, sql = _query(_kind(endpoint), typed, base64)
    size = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else os.path.getsize(data)
    # DuckDB sizes its read buffers by the largest object it allows: keep the default
    # 16 MiB (less memory) and allow up to the whole file only when a line needs it.
    limits = [16 * 2**20] + ([min(size + 1, 2**32 - 1)] if size >= 16 * 2**20 else [])
    con = _cursor()
    try:
        with _readable(data) as source:
            for limit in limits:
                try:
                    table = _scan(con, source, columns, sql, limit)
                    break
                except duckdb.InvalidInputException as exc:
                    if "maximum_object_size" not in str(exc) or limit == limits[-1]:
                        raise
    except duckdb.Error as exc:
        msg = f"cannot read JSON lines: {exc}"
        raise ResultsError(msg) from exc
    finally:
        con.close()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


# -- raw lines: DuckDB's rows back to the file's lines ------------------------------


def as_bytes(data: bytes | os.PathLike[str]) -> bytes:
    """The bytes of ``data`` (read from disk if it is a path)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    with open(data, "rb") as f:
        return f.read()


_EMBEDDING_VALUE = re.compile(rb'"embedding"\s*:\s*(\S)')


def embeddings_are_base64(data: bytes | os.PathLike[str]) -> bool:
    """Whether vectors came as base64 strings (``encoding_format="base64"``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        with open(data, "rb") as f:
            data = f.read(1 << 20)
    match = _EMBEDDING_VALUE.search(data)
    return bool(match and match.group(1) == b'"')


def diagnose(data: bytes) -> str | None:
    """Name the first line that is not a JSON object with a ``custom_id``."""
    for lineno, text in iter_lines(data):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return f"line {lineno} is not valid JSON ({exc})"
        if not isinstance(obj, dict):
            return f"line {lineno} is not a JSON object"
        if not isinstance(obj.get("custom_id"), str) or not obj["custom_id"]:
            return f"line {lineno} has no `custom_id`"
        if not isinstance(obj.get("response"), (dict, type(None))):
            return f"line {lineno}: `response` is not an object"
    return None


def iter_lines(data: bytes) -> Iterable[tuple[int, bytes]]:
    """``(1-based line number, line)`` for every non-blank line, as DuckDB counts them."""
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield lineno, line.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else line


def raw_lines(data: bytes, ordinals: list[int]) -> dict[int, tuple[int, str]]:
    """Map ordinals (position among non-blank lines) to ``(line number, text)``.

    Walks the bytes without splitting them, so a big file with a few failures costs
    little memory.
    """
    want = sorted(set(ordinals))
    out: dict[int, tuple[int, str]] = {}
    pos, ordinal, lineno, i, n = 0, 0, 0, 0, len(data)
    while pos < n and i < len(want):
        end = data.find(b"\n", pos)
        end = n if end < 0 else end
        lineno += 1
        first = data[pos : pos + 1]
        blank = first in b" \t\r\x0b\x0c" and not data[pos:end].strip()
        if not blank:
            if ordinal == want[i]:
                raw = data[pos:end].rstrip(b"\r")
                if lineno == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                out[ordinal] = (lineno, raw.decode("utf-8", errors="replace"))
                i += 1
            ordinal += 1
        pos = end + 1
    return out


def line_custom_id(line: str | None) -> Any:
    """The ``custom_id`` of a raw line, or None."""
    try:
        obj = orjson.loads(line) if line is not None else None
    except orjson.JSONDecodeError:
        return None
    return obj.get("custom_id") if isinstance(obj, dict) else None


# -- writing ---------------------------------------------------------------------------


def duckdb_type(dtype: pl.DataType | pl.datatypes.DataTypeClass) -> str:
    """The DuckDB column type for a Polars dtype (``Array(Float32, 8)`` -> ``FLOAT[8]``)."""
    if isinstance(dtype, type):
        dtype = dtype()
    simple = {
        pl.String: "VARCHAR",
        pl.Categorical: "VARCHAR",
        pl.Boolean: "BOOLEAN",
        pl.Int8: "TINYINT",
        pl.Int16: "SMALLINT",
        pl.Int32: "INTEGER",
        pl.Int64: "BIGINT",
        pl.UInt8: "UTINYINT",
        pl.UInt16: "USMALLINT",
        pl.UInt32: "UINTEGER",
        pl.UInt64: "UBIGINT",
        pl.Float32: "FLOAT",
        pl.Float64: "DOUBLE",
        pl.Binary: "BLOB",
        pl.Date: "DATE",
        pl.Null: "VARCHAR",
    }
    for cls, name in simple.items():
        if isinstance(dtype, cls):
            return name
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP WITH TIME ZONE" if dtype.time_zone else "TIMESTAMP"
    if isinstance(dtype, pl.Enum):
        values = ", ".join("'" + str(v).replace("'", "''") + "'" for v in dtype.categories)
        return f"ENUM({values})"
    if isinstance(dtype, pl.Array):
        return f"{duckdb_type(dtype.inner)}[{dtype.size}]"
    if isinstance(dtype, pl.List):
        return f"{duckdb_type(dtype.inner)}[]"
    if isinstance(dtype, pl.Struct):
        fields = ", ".join(f"{_q(f.name)} {duckdb_type(f.dtype)}" for f in dtype.fields)
        return f"STRUCT({fields})"
    msg = f"no DuckDB type for Polars dtype {dtype}"
    raise ResultsError(msg)


def write_duckdb(
    results: BatchResults,
    database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    table: str,
) -> None:
    """Upsert results into ``{table}``, ``{table}_failed`` and ``{table}_batches``.

    All three tables are written in one transaction (or inside the caller's, if the
    connection already has one open). ``{table}`` has ``PRIMARY KEY (custom_id)``
    (``(custom_id, index)`` for embeddings), ``{table}_failed`` ``PRIMARY KEY
    (custom_id)``, ``{table}_batches`` (only when ``results.batches`` is set; rows without
    a batch id are skipped) ``PRIMARY KEY (batch_id)``. Rows are replaced by
    key, so writing the same results twice changes nothing; an ok row removes its
    ``custom_id`` from ``{table}_failed``, and a failure is not recorded for a
    ``custom_id`` that already succeeded.

    Parameters
    ----------
    results
        The results to write.
    database
        A DuckDB file path, or an open connection (left open).
    table
        Name of the ok table; the others are derived from it.

    Raises
    ------
    ResultsError
        A table exists with other columns or types, or a key repeats within the
        results.
    """
    con = (
        database
        if isinstance(database, duckdb.DuckDBPyConnection)
        else duckdb.connect(os.fspath(database))
    )
    try:
        own = _begin(con)
        try:
            _upsert_all(con, results, table)
            if own:
                con.commit()
        except BaseException:
            if own:
                con.rollback()
            raise
    finally:
        if con is not database:
            con.close()


def _begin(con: duckdb.DuckDBPyConnection) -> bool:
    """Start a transaction; False when the caller already holds one."""
    # A failed BEGIN would abort the caller's transaction, so probe first: inside a
    # transaction the transaction id stays the same; in autocommit each query gets one.
    probe = "SELECT txid_current()"
    first, second = con.execute(probe).fetchone(), con.execute(probe).fetchone()
    if first == second:
        return False
    con.begin()
    return True


def _upsert_all(con: duckdb.DuckDBPyConnection, results: BatchResults, table: str) -> None:
    ok_t, failed_t, batches_t = table, f"{table}_failed", f"{table}_batches"
    frames = [
        (ok_t, results.ok, ok_key(results.endpoint)),
        (failed_t, results.failed.select(FAILED_SCHEMA.names()), ["custom_id"]),
    ]
    if results.batches is not None:
        # Attempts that never became a batch have no id to key them by.
        frames.append(
            (batches_t, results.batches.filter(pl.col("batch_id").is_not_null()), ["batch_id"])
        )
    for name, frame, pk in frames:
        _check_unique(name, frame, pk)
        _ensure_table(con, name, frame.schema, pk)
    views = {name: f"__bf_new_{i}" for i, (name, _, _) in enumerate(frames)}
    try:
        for name, frame, _ in frames:
            con.register(views[name], frame.to_arrow())
        ok_v, failed_v = views[ok_t], views[failed_t]
        con.execute(f"DELETE FROM {_q(ok_t)} WHERE custom_id IN (SELECT custom_id FROM {ok_v})")
        con.execute(f"INSERT INTO {_q(ok_t)} BY NAME SELECT * FROM {ok_v}")
        con.execute(
            f"DELETE FROM {_q(failed_t)} WHERE custom_id IN (SELECT custom_id FROM {failed_v}) "
            f"OR custom_id IN (SELECT custom_id FROM {ok_v})"
        )
        con.execute(
            f"INSERT INTO {_q(failed_t)} BY NAME SELECT * FROM {failed_v} "
            f"WHERE custom_id NOT IN (SELECT custom_id FROM {_q(ok_t)})"
        )
        if batches_t in views:
            batches_v = views[batches_t]
            con.execute(
                f"DELETE FROM {_q(batches_t)} WHERE batch_id IN (SELECT batch_id FROM {batches_v})"
            )
            con.execute(f"INSERT INTO {_q(batches_t)} BY NAME SELECT * FROM {batches_v}")
    finally:
        for view in views.values():
            con.unregister(view)


def _check_unique(name: str, frame: pl.DataFrame, key: list[str]) -> None:
    dupes = frame.select(key).filter(pl.struct(key).is_duplicated())
    if len(dupes):
        shown = dupes.unique(maintain_order=True).head(5).rows()
        msg = (
            f"{len(dupes)} rows for table `{name}` repeat a key {key}, e.g. {shown}; "
            "combine results with `BatchResults.from_parts`, which keeps one row per key"
        )
        raise ResultsError(msg)


def _ensure_table(
    con: duckdb.DuckDBPyConnection, name: str, schema: pl.Schema, key: Iterable[str]
) -> None:
    """Create ``name`` if missing; else check it has the same columns and types."""
    cols = ", ".join(f"{_q(c)} {duckdb_type(t)}" for c, t in schema.items())
    pk = ", ".join(_q(k) for k in key)
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = current_schema()",
        [name],
    ).fetchone()
    if not exists or not exists[0]:
        con.execute(f"CREATE TABLE {_q(name)} ({cols}, PRIMARY KEY ({pk}))")
        return
    # Let DuckDB spell the expected types, so the comparison is exact.
    probe = f"__bf_expected_{abs(hash(name))}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_q(probe)} ({cols})")
    try:
        expected = con.execute(f"DESCRIBE {_q(probe)}").fetchall()
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_q(probe)}")
    have = {r[0]: r[1] for r in con.execute(f"DESCRIBE {_q(name)}").fetchall()}
    # An all-null column (Polars dtype Null) fits any existing type.
    want = {r[0]: r[1] for r in expected if not isinstance(schema[r[0]], pl.Null)}
    nulls = {c for c, t in schema.items() if isinstance(t, pl.Null)}
    if set(have) != set(want) | nulls or any(have[c] != t for c, t in want.items() if c in have):
        diff = [
            f"{c}: {have.get(c, '(missing)')} != {t}" for c, t in want.items() if have.get(c) != t
        ]
        diff += [f"{c}: (missing)" for c in nulls if c not in have]
        diff += [f"{c}: unexpected column" for c in have if c not in schema]
        msg = (
            f"table `{name}` exists with a different schema ({'; '.join(diff[:5])}); "
            "write to a new table name or drop the old table"
        )
        raise ResultsError(msg)
