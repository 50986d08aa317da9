"""What became of each row of a finished shard attempt, and child shards for retries.

A shard attempt's rows end in one of three ways: a success line in the output file, a
failure (a line in either file with an error, every row of a batch that failed
validation, or no line at all: "missing"), or a retry in a child attempt. Which
failures are retried is decided by their ``retryable`` flag (429, 5xx,
``request_timeout``, ``batch_expired``, rows never executed) and the attempt budget.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl

from batchframe.exceptions import ResultsError

if TYPE_CHECKING:
    from batchframe._manifest import ShardAttempt
    from batchframe._spill import Spill
    from batchframe._storage import Storage

__all__ = [
    "TOKEN_LIMIT_CODE",
    "ChildShard",
    "Outcome",
    "child_path",
    "is_token_limit_failure",
    "read_chunks",
    "record_outcome",
    "shard_ids",
    "write_child",
]

_log = logging.getLogger("batchframe")

TOKEN_LIMIT_CODE = "token_limit_exceeded"
#: Output and error files are parsed this many bytes at a time (whole lines).
PARSE_CHUNK_BYTES = 4 << 20
_PREFIX = b'{"custom_id":"'
#: Batch-level (validation) error codes that retrying the same lines cannot fix.
PERMANENT_BATCH_CODES = frozenset(
    {
        "invalid_json_line",
        "duplicate_custom_id",
        "url_mismatch",
        "model_mismatch",
        "model_not_found",
        "empty_file",
        "too_many_tasks",
        "invalid_request",
        "invalid_file",
        "file_too_large",
        "input_modified",
        "input_no_permissions",
        "invalid_endpoint",
        "unsupported_model",
    }
)


def is_token_limit_failure(batch_errors: list[dict[str, Any]]) -> bool:
    """Whether a failed batch was refused by the enqueued-token (or request) queue."""
    for e in batch_errors:
        code = str(e.get("code") or "")
        message = str(e.get("message") or "").lower()
        if code == TOKEN_LIMIT_CODE or "enqueued token limit" in message:
            return True
        if "enqueued request limit" in message:
            return True
    return False


def child_path(shard: int, attempt: int) -> str:
    """Relative path of a retry shard file: ``shards/00003.a1.jsonl``."""
    return f"shards/{shard:05d}.a{attempt}.jsonl"


def _iter_lines(storage: Storage, rel: str) -> Iterator[bytes]:
    with storage.open_read(rel) as f:
        for line in f:
            if line.strip():
                yield line


def _custom_id(line: bytes) -> str:
    if line.startswith(_PREFIX):
        end = line.find(b'"', len(_PREFIX))
        if end > 0:
            raw = line[len(_PREFIX) : end]
            if b"\\" not in raw:
                return raw.decode("utf-8")
    try:
        return str(orjson.loads(line)["custom_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        msg = f"a shard line has no readable custom_id: {line[:120]!r}"
        raise ResultsError(msg) from exc


def shard_ids(storage: Storage, rel: str) -> list[str]:
    """Return the custom_ids of a shard file, in file order."""
    return [_custom_id(line) for line in _iter_lines(storage, rel)]


@dataclass(frozen=True, slots=True)
class ChildShard:
    """Facts about a written retry shard file."""

    path: str
    n_requests: int
    n_bytes: int
    sha256: str


def write_child(storage: Storage, parent: str, child: str, ids: set[str]) -> ChildShard:
    """Copy the lines of ``parent`` whose custom_id is in ``ids`` into ``child``, verbatim."""
    digest = hashlib.sha256()
    n = 0
    size = 0
    with storage.open_write(child) as out:
        for line in _iter_lines(storage, parent):
            if _custom_id(line) in ids:
                if not line.endswith(b"\n"):
                    line += b"\n"
                out.write(line)
                digest.update(line)
                n += 1
                size += len(line)
    return ChildShard(path=child, n_requests=n, n_bytes=size, sha256=digest.hexdigest())


def read_chunks(
    storage: Storage, rel: str, size: int | None = None, *, start: int = 0, stop: int | None = None
) -> Iterator[bytes]:
    """The bytes of ``rel`` in pieces of about ``size`` bytes, each made of whole lines.

    Output files are parsed piece by piece: parsing holds several times its input in
    memory, so a whole 50,000-line file at once would cost hundreds of MB. The pieces of
    one file go through one DuckDB statement (``_parse.parse_output_file``). ``start``
    and ``stop`` (byte offsets at line starts) read a part of the file: the lines of
    one window of a big file (``_spill.windows``).
    """
    size = size or PARSE_CHUNK_BYTES
    rest = b""
    with storage.open_read(rel) as f:
        if start:
            f.seek(start)
        left = None if stop is None else stop - start
        while block := f.read(size if left is None else min(size, left)):
            if left is not None:
                left -= len(block)
            if rest:
                block = rest + block
            cut = block.rfind(b"\n")
            if cut < 0:
                rest = block
                continue
            rest = block[cut + 1 :]
            yield block[: cut + 1]
    if rest.strip():
        yield rest


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames of one file's pieces as one; empty pieces (maybe typed looser) are left out."""
    full = [f for f in frames if f.height]
    if not full:
        return frames[0]
    return full[0] if len(full) == 1 else pl.concat(full, how="vertical")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The rows of one shard attempt: ok and ``failed`` rows (every input id once).

    The ok rows are ``ok_frame``, or, for an output file bigger than one parse window,
    in ``spill`` (local Parquet files, ``ok_frame`` then empty). :attr:`ok` gives them
    as one frame either way; :meth:`ok_rows`, :attr:`n_ok` and :attr:`ok_schema` read
    no spilled row into memory.
    """

    ok_frame: pl.DataFrame
    failed: pl.DataFrame
    spill: Spill | None = None

    @property
    def ok(self) -> pl.DataFrame:
        """Every ok row, in memory (a spill is read whole)."""
        return self.ok_frame if self.spill is None else self.spill.lazy().collect()

    def ok_rows(self) -> pl.DataFrame | pl.LazyFrame:
        """The ok rows: the frame, or a lazy scan of the spill."""
        return self.ok_frame if self.spill is None else self.spill.lazy()

    @property
    def n_ok(self) -> int:
        """Number of ok rows."""
        return self.ok_frame.height if self.spill is None else self.spill.rows

    @property
    def ok_schema(self) -> pl.Schema:
        """Schema of the ok rows."""
        if self.spill is None or self.spill.schema is None:
            return self.ok_frame.schema
        return self.spill.schema

    def ok_ids(self) -> pl.Series:
        """The distinct ``custom_id`` values of the ok rows."""
        return _ok_ids(self.ok_frame, self.spill)

    def release(self) -> None:
        """Remove the spill's files (the rows are published, or no longer needed)."""
        if self.spill is not None:
            self.spill.close()


def _ok_ids(ok: pl.DataFrame, spill: Spill | None) -> pl.Series:
    if spill is None:
        return ok["custom_id"].unique()
    return spill.lazy().select(pl.col("custom_id").unique()).collect().to_series()


def _failed_rows(
    ids: list[str],
    *,
    stage: str,
    error_code: str | None,
    error_message: str,
    retryable: bool,
    attempts: int,
    batch_id: str | None,
) -> pl.DataFrame:
    from batchframe._schemas import FAILED_SCHEMA

    n = len(ids)
    return pl.DataFrame(
        {
            "custom_id": ids,
            "stage": [stage] * n,
            "status_code": [None] * n,
            "error_code": [error_code] * n,
            "error_message": [error_message] * n,
            "retryable": [retryable] * n,
            "attempts": [attempts] * n,
            "batch_id": [batch_id] * n,
            "line": [None] * n,
        },
        schema=FAILED_SCHEMA,
    )


def record_outcome(
    storage: Storage,
    record: ShardAttempt,
    *,
    endpoint: str,
    json_schema: dict[str, Any] | None,
    embedding_dim: int | None = None,
) -> Outcome:
    """Every row of ``record`` (a settled-able terminal attempt) as ok or failed.

    Rows in neither file are failed with stage ``"missing"`` (retryable: they never
    ran); rows of a batch that failed validation get stage ``"batch"``; rows of an
    attempt withdrawn by ``cancel()`` before it was submitted get stage ``"cancelled"``.
    ``embedding_dim`` (embeddings: the job's vector width, when known) types the
    ``embedding`` column, also of an attempt without a single success; the shard's
    model fills ``model`` where a response names none.
    """
    from batchframe._parse import each_piece
    from batchframe._results import parse_errors, parse_output

    attempts = record.attempt + 1
    batch_id = record.batch_id
    ids = shard_ids(storage, record.path)

    kw: dict[str, Any] = {
        "endpoint": endpoint,
        "batch_id": batch_id or "",
        "json_schema": json_schema,
        "attempts": attempts,
        "embedding_dim": embedding_dim,
        "model": record.model,
    }

    def parse(data: bytes) -> tuple[pl.DataFrame, pl.DataFrame]:
        return parse_output(data, **kw)

    if record.status == "cancelled" and batch_id is None:
        failed = _failed_rows(
            ids,
            stage="cancelled",
            error_code="batch_cancelled",
            error_message="the job was cancelled before this request was submitted",
            retryable=False,
            attempts=attempts,
            batch_id=None,
        )
        return Outcome(parse(b"")[0], failed)
    if record.status == "failed":
        first = record.batch_errors[0] if record.batch_errors else {}
        code = first.get("code")
        message = first.get("message") or "the batch failed validation"
        if first.get("line") is not None:
            message = f"{message} (input line {first['line']})"
        failed = _failed_rows(
            ids,
            stage="batch",
            error_code=code,
            error_message=str(message),
            retryable=code not in PERMANENT_BATCH_CODES and code is not None,
            attempts=attempts,
            batch_id=batch_id,
        )
        return Outcome(parse(b"")[0], failed)
    fails: list[pl.DataFrame] = []
    id_frame = pl.DataFrame({"custom_id": ids}, schema={"custom_id": pl.String})
    known = id_frame["custom_id"]
    spill: Spill | None = None
    foreign = 0
    if record.output_path is not None:
        ok, spill, bad, foreign = _read_output(storage, record.output_path, kw, known)
        fails.extend(bad)
    else:
        ok = parse(b"")[0]
    if record.error_path is not None:
        fails.extend(
            each_piece(
                read_chunks(storage, record.error_path),
                lambda data: parse_errors(
                    data, endpoint=endpoint, batch_id=batch_id or "", attempts=attempts
                ),
            )
        )
    if spill is None:
        foreign = ok.select((~pl.col("custom_id").is_in(known.implode())).sum()).item()
        if foreign:
            ok = ok.filter(pl.col("custom_id").is_in(known.implode()))
    if foreign:
        _log.warning(
            "batch %s returned %d line(s) for custom_ids not in its input; ignored",
            batch_id,
            foreign,
        )
    ok_ids = _ok_ids(ok, spill)
    if fails:
        failed = pl.concat(fails, how="vertical_relaxed")
        failed = failed.filter(
            pl.col("custom_id").is_in(known.implode())
            & ~pl.col("custom_id").is_in(ok_ids.implode())
        ).unique("custom_id", keep="first", maintain_order=True)
    else:
        failed = _failed_rows(
            [],
            stage="missing",
            error_code=None,
            error_message="",
            retryable=True,
            attempts=attempts,
            batch_id=batch_id,
        )
    seen = pl.concat([ok_ids, failed["custom_id"]]).unique()
    missing = id_frame.filter(~pl.col("custom_id").is_in(seen.implode()))["custom_id"].to_list()
    if missing:
        failed = pl.concat(
            [
                failed,
                _failed_rows(
                    missing,
                    stage="missing",
                    error_code=None,
                    error_message=(
                        f"the batch ended ({record.status}) without an output or error line "
                        "for this request"
                    ),
                    retryable=True,
                    attempts=attempts,
                    batch_id=batch_id,
                ),
            ],
            how="vertical_relaxed",
        )
    return Outcome(ok, failed, spill)


def _read_output(
    storage: Storage, rel: str, kw: dict[str, Any], known: pl.Series
) -> tuple[pl.DataFrame, Spill | None, list[pl.DataFrame], int]:
    """The ok rows, their spill (a big file), failed rows and foreign lines of file ``rel``.

    A file up to ``_spill.WHOLE_BYTES`` goes through one DuckDB statement
    (``parse_output_file``) and its ok rows are returned as a frame, as parsed (its
    foreign rows are the caller's to drop). A bigger one is parsed window by window;
    the ok rows of each are kept to the shard's ids (``known``; the others are counted
    as foreign), once per key (the first, as ``finalize_outcome`` keeps), and spilled;
    the frame is then empty. Embeddings take the first window's vector width.
    """
    from batchframe._parse import parse_output_file, renumbered
    from batchframe._schemas import ok_key
    from batchframe._spill import WHOLE_BYTES, Spill, spill_folders, windows

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
    keys = pl.DataFrame(ok.select(key).to_dict(as_series=False), schema=ok.select(key).schema)
    return (keys if seen is None else pl.concat([seen, keys])), foreign
