"""Validated Batch API requests: planning shards and writing them as JSONL."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import polars as pl

from batchframe._config import BatchLimits
from batchframe._encode import (
    escape_json_string,
)
from batchframe._plan import Shard, plan_frame, plan_shards

if TYPE_CHECKING:
    pass

FRAME_SCHEMA = {
    "custom_id": pl.String,
    "body": pl.String,
    "model": pl.String,
    "n_bytes": pl.Int64,
    "n_inputs": pl.Int64,
    "est_tokens": pl.Int64,
}


class Requests:
    """Validated Batch API requests, one per input row, ready to shard and write.

    Made by :func:`build_requests`; not constructed directly.

    Attributes
    ----------
    endpoint
        The Batch API endpoint every request goes to.
    frame
        One row per request: ``custom_id``, ``body`` (the request body as JSON text),
        ``model``, ``n_bytes`` (bytes of the request's final JSONL line, newline
        included), ``n_inputs`` (embedding inputs; 1 for other endpoints) and
        ``est_tokens`` (estimated input tokens).
    json_schema
        The strict JSON schema of a structured output, if the body asked for one.
    response_model
        The pydantic model class given as ``response_format``/``text_format``, if any.
    tokenizer
        How ``est_tokens`` was counted: ``"exact"`` or ``"estimate"``.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        frame: pl.DataFrame,
        json_schema: dict[str, Any] | None = None,
        response_model: Any = None,
        tokenizer: str = "estimate",
    ) -> None:
        self.endpoint = endpoint
        self.frame = frame
        self.json_schema = json_schema
        self.response_model = response_model
        self.tokenizer = tokenizer
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return self.frame.height

    def __repr__(self) -> str:
        models = self.frame["model"].unique(maintain_order=True).to_list()
        mb = int(self.frame["n_bytes"].sum()) / 1e6
        return (
            f"<Requests {self.endpoint}: {len(self):,} rows, {mb:,.1f} MB, "
            f"models={models}, est_tokens={self.frame['est_tokens'].sum():,}>"
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the endpoint and every ``custom_id`` and body, in order.

        Two tables with the same rows and the same template give the same fingerprint,
        so a job can tell whether it is being resumed with the requests it was made from.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(self.endpoint.encode())
            for name in ("custom_id", "body"):
                col = self.frame[name]
                h.update(len(col).to_bytes(8, "little"))
                arr = col.rechunk().to_arrow()
                offsets = arr.buffers()[1]
                data = arr.buffers()[2]
                if offsets is not None:
                    h.update(memoryview(offsets))
                if data is not None:
                    h.update(memoryview(data))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _shards(self, limits: BatchLimits | None) -> list[Shard]:
        limits = limits or BatchLimits()
        return plan_shards(self.frame, limits, embeddings=self.endpoint == "/v1/embeddings")

    def plan(self, limits: BatchLimits | None = None) -> pl.DataFrame:
        """Plan shards that respect ``limits`` (default :class:`BatchLimits`).

        Returns
        -------
        pl.DataFrame
            One row per shard: ``shard``, ``model``, ``n_requests``, ``n_bytes``,
            ``n_inputs``, ``est_tokens``.
        """
        return plan_frame(self._shards(limits))

    def shard_bytes(self, shard: Shard) -> bytes:
        """The exact JSONL bytes of one planned shard."""
        pieces = encode_lines(
            self.endpoint,
            _take(self.frame["custom_id"], shard.rows),
            _take(self.frame["body"], shard.rows),
        )
        return b"".join(pieces)

    def write(
        self,
        root: str | os.PathLike[str],
        limits: BatchLimits | None = None,
        storage_options: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
    ) -> pl.DataFrame:
        """Write one JSONL file per shard under ``root/shards/`` (any fsspec URL).

        Each file is written to a temporary name and moved into place, so it appears
        whole or not at all. Only one shard's bytes are built at a time per worker.

        Parameters
        ----------
        root
            Directory or URL (``"out/"``, ``"memory://x"``, ``"s3://bucket/prefix"``).
        limits
            Shard limits (default :class:`BatchLimits`).
        storage_options
            fsspec options (credentials, endpoint URL, ...).
        executor
            Runs the per-shard writes (default: a small local thread pool).

        Returns
        -------
        pl.DataFrame
            ``shard``, ``path``, ``n_requests``, ``n_bytes`` (bytes written),
            ``sha256``, ``model``, ``n_inputs``, ``est_tokens``.
        """
        from batchframe._storage import Storage

        shards = self._shards(limits)
        storage = Storage(os.fspath(root), storage_options)
        own = executor is None
        pool = executor or ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2))
        try:
            futures = [
                pool.submit(
                    write_shard,
                    storage,
                    shard_path(s.index),
                    self.endpoint,
                    _take(self.frame["custom_id"], s.rows),
                    _take(self.frame["body"], s.rows),
                )
                for s in shards
            ]
            results = [f.result() for f in futures]
        finally:
            if own:
                pool.shutdown()
        out = plan_frame(shards).with_columns(
            pl.Series("path", [storage.url(shard_path(s.index)) for s in shards], pl.String),
            pl.Series("n_bytes", [n for n, _ in results], pl.Int64),
            pl.Series("sha256", [h for _, h in results], pl.String),
        )
        return out.select(
            "shard", "path", "n_requests", "n_bytes", "sha256", "model", "n_inputs", "est_tokens"
        )


def _take(col: pl.Series, rows: pl.Series) -> pl.Series:
    """Rows of ``col``; a zero-copy slice when they are contiguous (the usual case)."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return col.slice(int(rows[0]), len(rows))
    return col.gather(rows)


def shard_path(index: int) -> str:
    """Relative path of shard ``index``: ``shards/00007.jsonl``."""
    return f"shards/{index:05d}.jsonl"


def line_affixes(endpoint: str) -> tuple[str, str, str]:
    mid = f',"method":"POST","url":"{endpoint}","body":'
    return '{"custom_id":', mid, "}\n"


def encode_lines(endpoint: str, custom_ids: pl.Series, bodies: pl.Series) -> list[memoryview]:
    """JSONL bytes (UTF-8, ``\\n`` after every line) for the given requests.

    Returned as the pieces of one file, in order, without copying when possible: Polars
    lays out a fresh string column's long values back to back in its view buffers, so
    those buffers *are* the file. The layout is checked (total size, first and last
    line); anything unexpected falls back to a contiguous copy.
    """
    head, mid, tail = line_affixes(endpoint)
    cid = escape_json_string(custom_ids)
    lines = (
        pl.select(
            pl.concat_str([pl.lit(head), pl.lit(cid), pl.lit(mid), pl.lit(bodies), pl.lit(tail)])
        )
        .to_series()
        .rechunk()
    )
    if lines.is_empty():
        return []
    sizes = lines.str.len_bytes()
    total = int(sizes.sum())
    view = lines.to_arrow(compat_level=pl.CompatLevel.newest())
    shortest = sizes.min()
    if _is_string_view(view) and isinstance(shortest, int) and shortest > _INLINE_MAX:
        pieces = [memoryview(b) for b in view.buffers()[2:] if b is not None]
        if sum(len(p) for p in pieces) == total and _ends_match(pieces, lines):
            return pieces
    arr = lines.to_arrow()
    _, offsets, data = arr.buffers()
    pos = memoryview(offsets).cast("q")  # large_string: int64 offsets
    return [memoryview(data)[pos[arr.offset] : pos[arr.offset + len(arr)]]]


# Arrow string views keep values of up to 12 bytes inline, outside the data buffers.
_INLINE_MAX = 12


def _is_string_view(arr: Any) -> bool:
    import pyarrow as pa

    return isinstance(arr, pa.Array) and pa.types.is_string_view(arr.type)


def _ends_match(pieces: list[memoryview], lines: pl.Series) -> bool:
    first = str(lines[0]).encode()
    last = str(lines[-1]).encode()
    nonempty = [p for p in pieces if len(p)]
    return (
        bool(nonempty)
        and bytes(nonempty[0][: len(first)]) == first[: len(nonempty[0])]
        and bytes(nonempty[-1][-len(last) :]) == last[-len(nonempty[-1]) :]
    )


def write_shard(
    storage: Any, rel: str, endpoint: str, custom_ids: pl.Series, bodies: pl.Series
) -> tuple[int, str]:
    """Write one shard file atomically; return (bytes written, sha256 hex)."""
    pieces = encode_lines(endpoint, custom_ids, bodies)
    digest = hashlib.sha256()
    with storage.open_write(rel) as f:
        for piece in pieces:
            digest.update(piece)
            f.write(piece)
    return sum(len(p) for p in pieces), digest.hexdigest()
