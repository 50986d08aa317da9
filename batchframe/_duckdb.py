"""DuckDB as the table sink: :func:`write_duckdb` and the Polars -> DuckDB type map.

:func:`upsert_parts` upserts ``{table}``, ``{table}_failed`` and ``{table}_batches``
atomically (swapped in by one transaction), sqlite-utils' ``upsert_all`` in spirit, one
chunk at a time: the whole of an in-memory ``BatchResults`` (:func:`write_duckdb`), or
one published Parquet file of a job per chunk (``results_to_duckdb``,
``BatchJob.to_duckdb``), so that memory tracks a shard, not the job. (DuckDB is also
the JSON engine that reads output lines: that is :mod:`batchframe._duckdb_json`.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from batchframe._schemas import FAILED_SCHEMA, ok_key
from batchframe.exceptions import ResultsError

if TYPE_CHECKING:
    from batchframe._results import BatchResults

__all__ = ["DUCKDB_MEMORY_LIMIT", "Chunk", "Part", "duckdb_type", "upsert_parts", "write_duckdb"]


def _q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


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


#: ``memory_limit`` of the DuckDB connections these functions open themselves (a
#: database given by path). DuckDB's default (80 % of RAM) lets its buffer cache keep
#: every block written, so memory would grow with the job; with a limit it evicts them
#: to the database file. A connection passed in keeps its own settings.
DUCKDB_MEMORY_LIMIT = "192MB"
#: Row group size of the tables written through a connection opened here (DuckDB's
#: default is 122,880 rows, held in memory until full).
DUCKDB_ROW_GROUP_SIZE = 32_768

#: One chunk of rows: an in-memory frame, or a SQL table expression DuckDB reads itself
#: (``read_parquet('...')``), which keeps the rows out of Python memory.
Chunk = pl.DataFrame | str


@dataclass(frozen=True, slots=True)
class Part:
    """One table's rows, in chunks, so that memory tracks a chunk, not the table.

    ``chunks()`` returns an iterator over the chunks; it is called twice (keys to
    delete, then rows to insert) and must give the same chunks each time. Chunks hold
    disjoint keys: a key repeated within a chunk, or across chunks, is refused.
    """

    schema: pl.Schema
    key: list[str]
    chunks: Callable[[], Iterator[Chunk]]

    @classmethod
    def of(cls, frame: pl.DataFrame, key: list[str]) -> Part:
        """A part of a single in-memory frame."""
        return cls(frame.schema, key, lambda: iter([frame]))


def write_duckdb(
    results: BatchResults,
    database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    table: str,
) -> None:
    """Upsert results into ``{table}``, ``{table}_failed`` and ``{table}_batches``.

    All three tables are swapped in by one transaction (or written inside the caller's,
    if the connection already has one open). ``{table}`` has ``PRIMARY KEY (custom_id)``
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
    upsert_parts(
        database,
        table=table,
        ok=Part.of(results.ok, ok_key(results.endpoint)),
        failed=Part.of(results.failed.select(FAILED_SCHEMA.names()), ["custom_id"]),
        batches=results.batches,
    )


def upsert_parts(
    database: str | os.PathLike[str] | duckdb.DuckDBPyConnection,
    *,
    table: str,
    ok: Part,
    failed: Part,
    batches: pl.DataFrame | None,
    filesystem: Any = None,
) -> None:
    """Upsert ``ok``, ``failed`` and ``batches`` chunk by chunk, swapped in atomically.

    The one implementation behind :func:`write_duckdb` (one chunk per part) and
    ``results_to_duckdb`` / ``BatchJob.to_duckdb`` (one ``read_parquet`` per published
    file). A connection this function opens itself is closed again (and gets
    :data:`DUCKDB_MEMORY_LIMIT`); one passed in is left open. ``filesystem`` (an fsspec
    filesystem whose URLs the chunks name) is registered with DuckDB while writing.
    """
    con = database if isinstance(database, duckdb.DuckDBPyConnection) else _connect(database)
    registered = None
    if filesystem is not None:
        protocols = filesystem.protocol
        name = protocols if isinstance(protocols, str) else protocols[0]
        if name not in con.list_filesystems():
            con.register_filesystem(filesystem)
            registered = name
    try:
        if _in_transaction(con):  # the caller's: every step inside it, as they asked
            _swap(con, _stage_all(con, table, ok, failed, batches, flush=None))
        else:
            _upsert_staged(con, table, ok, failed, batches)
    except duckdb.OutOfMemoryException as exc:
        if con is database:
            raise
        msg = (
            f"DuckDB ran out of its memory_limit ({DUCKDB_MEMORY_LIMIT}) writing "
            f"table `{table}`; nothing was written. Pass a connection with a "
            'higher limit: `con = duckdb.connect(path); con.execute("SET '
            "memory_limit = '2GB'\")`"
        )
        raise ResultsError(msg) from exc
    finally:
        if registered is not None:
            con.unregister_filesystem(registered)
        if con is not database:
            con.close()


def _connect(path: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """Open the database file at ``path`` for one bounded-memory write.

    The buffer cache is capped (:data:`DUCKDB_MEMORY_LIMIT`) and new row groups hold
    :data:`DUCKDB_ROW_GROUP_SIZE` rows: DuckDB keeps a transaction's rows in memory
    until a row group fills, so smaller groups are written out sooner. One thread: the
    write is bound by the key index, and more threads only held more memory (measured
    on 2 cores, 1.6M chat rows: 7.3 s and +29 MB over the driver's peak, against 8.4 s
    and +44 MB with two).
    """
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        con.execute("SET threads = 1")
        con.execute("SET enable_progress_bar = false")
        con.execute("SET write_buffer_row_group_count = 1")
        target = os.fspath(path).replace("'", "''")
        con.execute(f"ATTACH '{target}' AS bf_target (ROW_GROUP_SIZE {DUCKDB_ROW_GROUP_SIZE})")
        con.execute("USE bf_target")
    except BaseException:
        con.close()
        raise
    return con


def _in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the caller holds a transaction open on ``con``."""
    # A failed BEGIN would abort the caller's transaction, so probe instead: inside a
    # transaction the transaction id stays the same; in autocommit each query gets one.
    probe = "SELECT txid_current()"
    return bool(con.execute(probe).fetchone() == con.execute(probe).fetchone())


#: Rows a staging table takes between checkpoints when batchframe holds the transaction
#: (see :func:`_upsert_staged`).
CHECKPOINT_ROWS = 500_000


class _Checkpoints:
    """Called with each insert's row count; checkpoints every :data:`CHECKPOINT_ROWS`."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self._rows = 0

    def __call__(self, rows: int) -> None:
        self._rows += rows
        if self._rows >= CHECKPOINT_ROWS:
            self._con.execute("CHECKPOINT")
            self._rows = 0


def _upsert_staged(
    con: duckdb.DuckDBPyConnection,
    table: str,
    ok: Part,
    failed: Part,
    batches: pl.DataFrame | None,
) -> None:
    """Build the new tables outside a transaction, then swap them in inside one.

    A table's key index is held in memory until a checkpoint writes it out, and inside
    a transaction nothing is checkpointed: 10M chat rows in one transaction needed
    ~700 MB, and failed at 192 MB. Built in autocommit, checkpointed every
    :data:`CHECKPOINT_ROWS` rows, they took ~230 MB. The staging tables
    (``__bf_new_*``) are not the user's: the swap (``DROP`` + ``RENAME`` of all three,
    one transaction) is what readers see, so a failure or a crash before it leaves the
    tables as they were. Staging tables are dropped on failure; those of a crash are
    replaced by the next write.
    """
    stages: list[tuple[str, str]] = []
    try:
        stages = _stage_all(con, table, ok, failed, batches, flush=_Checkpoints(con))
        con.begin()
        try:
            _swap(con, stages)
            con.commit()
        except BaseException:
            con.rollback()
            raise
    except BaseException:
        for name in _stage_names(table):  # best effort: the next write replaces them
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DROP TABLE IF EXISTS {_q(name)}")
        raise


_VIEW = "__bf_chunk"


@contextmanager
def _source(con: duckdb.DuckDBPyConnection, chunk: Chunk) -> Iterator[str]:
    """A SQL table expression for ``chunk`` (a frame is registered while in use)."""
    if isinstance(chunk, str):
        yield chunk
        return
    con.register(_VIEW, chunk.to_arrow())
    try:
        yield _VIEW
    finally:
        con.unregister(_VIEW)


def _stage_names(table: str) -> list[str]:
    return [f"__bf_new_{name}" for name in (table, f"{table}_failed", f"{table}_batches")]


def _stage_all(
    con: duckdb.DuckDBPyConnection,
    table: str,
    ok: Part,
    failed: Part,
    batches: pl.DataFrame | None,
    *,
    flush: Callable[[int], None] | None,
) -> list[tuple[str, str]]:
    """Build each table's new version as (new rows) + (old rows they do not replace).

    Returns ``(table, staging table)`` pairs for :func:`_swap`. Every step inserts into
    a table made here, which DuckDB writes out as it goes (deleting and re-inserting
    keys of an existing table instead keeps the whole change in memory until the
    commit, and is slow). ``flush`` is called with the rows of each insert (None: the
    old rows are copied in one statement, else in slices of :data:`CHECKPOINT_ROWS`).
    """
    ok_t, failed_t, batches_t = table, f"{table}_failed", f"{table}_batches"
    parts = [(ok_t, ok), (failed_t, failed)]
    if batches is not None:
        # Attempts that never became a batch have no id to key them by.
        frame = batches.filter(pl.col("batch_id").is_not_null())
        parts.append((batches_t, Part.of(frame, ["batch_id"])))
        _rename_old_columns(con, batches_t)
    # Every table is checked before anything is written; a missing one is made by the swap.
    exists = {name: _check_table(con, name, part.schema) for name, part in parts}
    stage = dict(zip((ok_t, failed_t, batches_t), _stage_names(table), strict=True))

    def insert(target: str, select: str) -> None:
        (rows,) = con.execute(f"INSERT INTO {target} BY NAME {select}").fetchone() or (0,)
        if flush is not None:
            flush(int(rows))

    for name, part in parts:
        new, key = _q(stage[name]), _q(part.key[0])
        if exists[name]:  # typed as the table is (a column all null here may be typed there)
            have = con.execute(f"DESCRIBE {_q(name)}").fetchall()
            cols = ", ".join(f"{_q(r[0])} {r[1]}" for r in have)
        else:
            cols = ", ".join(f"{_q(c)} {duckdb_type(t)}" for c, t in part.schema.items())
        pk = ", ".join(_q(k) for k in part.key)
        con.execute(f"CREATE OR REPLACE TABLE {new} ({cols}, PRIMARY KEY ({pk}))")
        names = ", ".join(_q(c) for c in part.schema)
        # A failure is not recorded for an id that succeeded (now or before).
        keep = f" WHERE custom_id NOT IN (SELECT custom_id FROM {_q(stage[ok_t])})"
        for chunk in part.chunks():
            with _source(con, chunk) as src:
                _check_unique(con, name, src, part.key)
                select = f"SELECT {names} FROM {src}" + (keep if name == failed_t else "")
                try:
                    insert(new, select)
                except duckdb.ConstraintException as exc:
                    msg = (
                        f"rows for table `{name}` repeat a key {part.key} across chunks "
                        f"({exc}); the published results hold each key once, so were "
                        "files under results/ changed by hand?"
                    )
                    raise ResultsError(msg) from exc
        # Old rows stay unless a new row has their key; an ok row also removes its id
        # from the failed table.
        if exists[name] and _has_rows(con, name):
            old = f"SELECT {names} FROM {_q(name)} WHERE {key} NOT IN (SELECT {key} FROM {new})"
            if name == failed_t:
                old += f" AND custom_id NOT IN (SELECT custom_id FROM {_q(stage[ok_t])})"
            if flush is None:
                insert(new, old)
            else:
                (end,) = con.execute(f"SELECT max(rowid) + 1 FROM {_q(name)}").fetchone() or (0,)
                for lo in range(0, int(end or 0), CHECKPOINT_ROWS):
                    insert(new, f"{old} AND rowid >= {lo} AND rowid < {lo + CHECKPOINT_ROWS}")
    return [(name, stage[name]) for name, _ in parts]


def _swap(con: duckdb.DuckDBPyConnection, stages: list[tuple[str, str]]) -> None:
    """Replace each table by its staging table (``DROP`` + ``RENAME``).

    Run in one transaction, so readers see either the old tables or the new ones;
    views on them keep working and indexes the user made on them are made again.
    """
    for name, new in stages:
        indexes = con.execute(
            "SELECT sql FROM duckdb_indexes() WHERE table_name = ? "
            "AND schema_name = current_schema() AND database_name = current_database() "
            "AND sql IS NOT NULL",
            [name],
        ).fetchall()
        con.execute(f"DROP TABLE IF EXISTS {_q(name)}")
        con.execute(f"ALTER TABLE {_q(new)} RENAME TO {_q(name)}")
        for (sql,) in indexes:
            con.execute(sql)


#: Columns of ``{table}_batches`` renamed to the names ``BatchJob.status()`` uses.
_RENAMED = {"request_total": "total", "request_completed": "completed", "request_failed": "failed"}


def _rename_old_columns(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Bring a ``{table}_batches`` written by batchframe 0.1 to today's column names."""
    have = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
            "AND schema_name = current_schema() AND database_name = current_database()",
            [name],
        ).fetchall()
    }
    for old, new in _RENAMED.items():
        if old in have and new not in have:
            con.execute(f"ALTER TABLE {_q(name)} RENAME COLUMN {_q(old)} TO {_q(new)}")


def _check_unique(con: duckdb.DuckDBPyConnection, name: str, src: str, key: list[str]) -> None:
    cols = ", ".join(_q(k) for k in key)
    dupes = con.execute(
        f"SELECT {cols}, count(*) AS n FROM {src} GROUP BY ALL HAVING n > 1 ORDER BY ALL"
    ).fetchall()
    if dupes:
        shown = [tuple(r[:-1]) if len(key) > 1 else (r[0],) for r in dupes[:5]]
        n = sum(int(r[-1]) for r in dupes)
        msg = (
            f"{n} rows for table `{name}` repeat a key {key}, e.g. {shown}; "
            "combine results with `BatchResults.from_parts`, which keeps one row per key"
        )
        raise ResultsError(msg)


def _exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = current_schema() "
        "AND database_name = current_database()",
        [name],
    ).fetchone()
    return bool(found and found[0])


def _has_rows(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return con.execute(f"SELECT EXISTS (SELECT 1 FROM {_q(name)})").fetchone() == (True,)


def _check_table(con: duckdb.DuckDBPyConnection, name: str, schema: pl.Schema) -> bool:
    """Whether ``name`` exists; if it does, check it has the same columns and types."""
    if not _exists(con, name):
        return False
    cols = ", ".join(f"{_q(c)} {duckdb_type(t)}" for c, t in schema.items())
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
    return True


def query(database: str, sql: str) -> pl.DataFrame:
    """Run one read-only query against a DuckDB file and return the result as Polars."""
    with duckdb.connect(database, read_only=True) as con:
        out: pl.DataFrame = con.sql(sql).pl()
    return out
