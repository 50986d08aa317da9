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

    The ok rows are ``ok_frame``, or, for an output file bigger than
    ``_spill.WHOLE_BYTES``, in ``spill`` (local Parquet files; ``ok_frame`` is then
    empty). :attr:`ok` gives them as one frame either way; :meth:`ok_rows`,
    :attr:`n_ok` and :attr:`ok_schema` read no spilled row into memory.
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
    from batchframe._spill import read_output_file

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
        ok, spill, bad, foreign = read_output_file(storage, record.output_path, kw, known)
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
