"""Validated Batch API requests: planning shards and writing them as JSONL.

A :class:`Requests` holds each request's final JSONL line (built once, by
``build_requests``) and a small frame of per-row facts. Writing a shard copies its lines
out in pieces of about 1 MiB, each hashed and written while it is still in the CPU
cache, so no request is encoded a second time; the ``body`` column of
:attr:`Requests.frame` is cut out of the lines when first asked for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import polars as pl

from batchframe._config import BatchLimits
from batchframe._plan import Shard, plan_frame, plan_shards

FRAME_SCHEMA = {
    "custom_id": pl.String,
    "body": pl.String,
    "model": pl.String,
    "n_bytes": pl.Int64,
    "n_inputs": pl.Int64,
    "est_tokens": pl.Int64,
}
# Per-row facts kept beside the lines; ``body_start`` is the character at which the body
# begins in its line.
META_SCHEMA = {
    "custom_id": pl.String,
    "model": pl.String,
    "n_bytes": pl.Int64,
    "n_inputs": pl.Int64,
    "est_tokens": pl.Int64,
    "body_start": pl.Int64,
}


class Requests:
    """Validated Batch API requests, one per input row, ready to shard and write.

    Made by :func:`build_requests`; not constructed directly.

    Attributes
    ----------
    endpoint
        The Batch API endpoint every request goes to.
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
        lines: pl.Series,
        meta: pl.DataFrame,
        json_schema: dict[str, Any] | None = None,
        response_model: Any = None,
        tokenizer: str = "estimate",
    ) -> None:
        self.endpoint = endpoint
        self._lines = lines
        self._meta = meta
        self.json_schema = json_schema
        self.response_model = response_model
        self.tokenizer = tokenizer
        self._frame: pl.DataFrame | None = None
        self._fingerprint: str | None = None

    @property
    def frame(self) -> pl.DataFrame:
        """One row per request, in input order.

        ``custom_id``, ``body`` (the request body as JSON text), ``model``, ``n_bytes``
        (bytes of the request's final JSONL line, newline included), ``n_inputs``
        (embedding inputs; 1 for other endpoints) and ``est_tokens`` (estimated input
        tokens). Built on first access: the bodies are cut out of the lines that
        :meth:`write` writes, which holds a second copy of the request text.
        """
        if self._frame is None:
            self._frame = self._meta.with_columns(self._bodies()).select(list(FRAME_SCHEMA))
        return self._frame

    def _bodies(self) -> pl.Series:
        """Each request's body, cut out of its line (``body_start`` is in characters)."""
        line, start = pl.col("line"), pl.col("body_start")
        return (
            pl.DataFrame({"line": self._lines, "body_start": self._meta["body_start"]})
            .select(line.str.slice(start, line.str.len_chars() - start - len(LINE_TAIL)))
            .to_series()
            .alias("body")
        )

    def _body_values(self, path: str) -> pl.DataFrame:
        """``model`` and ``value``: each body's value at JSON path ``path`` (text or null)."""
        value = self._lines.str.json_path_match("$.body" + path.removeprefix("$"))
        return pl.DataFrame({"model": self._meta["model"], "value": value})

    def __len__(self) -> int:
        return self._meta.height

    @property
    def n_bytes(self) -> int:
        """Bytes of all the JSONL lines together: what :meth:`write` writes."""
        return int(self._meta["n_bytes"].sum())

    @property
    def est_tokens(self) -> int:
        """Estimated input tokens of all the requests together."""
        return int(self._meta["est_tokens"].sum())

    def __repr__(self) -> str:
        models = self._meta["model"].unique(maintain_order=True).to_list()
        return (
            f"<Requests {self.endpoint}: {len(self):,} rows, {self.n_bytes / 1e6:,.1f} MB, "
            f"models={models}, est_tokens={self.est_tokens:,}>"
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of every request's JSONL line, in order (custom_id, endpoint and body).

        Two tables with the same rows and the same template give the same fingerprint,
        so a job can tell whether it is being resumed with the requests it was made from.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(b"batchframe-requests-v2\n")
            h.update(len(self).to_bytes(8, "little"))
            for piece in jsonl_pieces(self._lines):
                h.update(piece)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def matches(self, fingerprint: str) -> bool:
        """Whether a job's ``fingerprint`` is these requests' (current or earlier form).

        Jobs made by batchframe before 2026-11-30 hashed ids and bodies as two columns;
        that form is computed (one pass over the bodies) only when the current one
        differs, so such jobs still resume instead of being taken for other requests.
        """
        return fingerprint == self.fingerprint or fingerprint == self._columns_fingerprint()

    def _columns_fingerprint(self) -> str:
        h = hashlib.sha256(self.endpoint.encode())
        for col in (self._meta["custom_id"], self._bodies()):
            h.update(len(col).to_bytes(8, "little"))
            arr = col.rechunk().to_arrow(compat_level=_LARGE_STRING)
            for buf in arr.buffers()[1:3]:
                if buf is not None:
                    h.update(memoryview(buf))
        return h.hexdigest()

    def _shards(self, limits: BatchLimits | None) -> list[Shard]:
        limits = limits or BatchLimits()
        return plan_shards(self._meta, limits, embeddings=self.endpoint == "/v1/embeddings")

    def plan(self, limits: BatchLimits | None = None) -> pl.DataFrame:
        """Plan shards that respect ``limits`` (default :class:`BatchLimits`).

        Returns
        -------
        pl.DataFrame
            One row per shard: ``shard``, ``model``, ``n_requests``, ``n_bytes``,
            ``n_inputs``, ``est_tokens``.
        """
        return plan_frame(self._shards(limits))

    def write(
        self,
        root: str | os.PathLike[str],
        limits: BatchLimits | None = None,
        storage_options: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
    ) -> pl.DataFrame:
        """Write one JSONL file per shard under ``root/shards/`` (any fsspec URL).

        Each file is written to a temporary name and moved into place, so it appears
        whole or not at all. The bytes are the lines ``build_requests`` made; nothing is
        encoded again.

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
                pool.submit(write_shard, storage, shard_path(s.index), _take(self._lines, s.rows))
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


LINE_HEAD = '{"custom_id":'
LINE_TAIL = "}\n"


def line_affixes(endpoint: str) -> tuple[str, str, str]:
    """The constant text of a line: before the id, between id and body, after the body."""
    return LINE_HEAD, f',"method":"POST","url":"{endpoint}","body":', LINE_TAIL


# Arrow export as ``large_string``: int64 offsets and one contiguous data buffer.
_LARGE_STRING = pl.CompatLevel.oldest()

# Lines are handed to files and hashes in pieces of about this many bytes: small enough
# to stay in the CPU cache between the copy, the hash and the write, and to keep a
# writer's memory flat however large its shard.
PIECE_BYTES = 1 << 20


def jsonl_pieces(lines: pl.Series) -> Iterator[memoryview]:
    """The bytes of ``lines`` joined, in order, in contiguous pieces of about 1 MiB."""
    total = int(lines.str.len_bytes().sum())
    if not total:
        return
    step = max(1, PIECE_BYTES * len(lines) // total)
    for start in range(0, len(lines), step):
        arr = lines.slice(start, step).to_arrow(compat_level=_LARGE_STRING)  # a copy
        _, offsets, data = arr.buffers()
        pos = memoryview(offsets).cast("q")
        yield memoryview(data)[pos[arr.offset] : pos[arr.offset + len(arr)]]


def write_shard(storage: Any, rel: str, lines: pl.Series) -> tuple[int, str]:
    """Write one shard file atomically; return (bytes written, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    with storage.open_write(rel) as f:
        for piece in jsonl_pieces(lines):
            digest.update(piece)
            f.write(piece)
            size += len(piece)
    return size, digest.hexdigest()
