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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from batchframe._config import BatchLimits
from batchframe._plan import Shard, plan_frame, plan_whole

if TYPE_CHECKING:
    from batchframe._storage import Storage
    from batchframe._stream import StreamedInput, Totals

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
        lines: pl.Series | None = None,
        meta: pl.DataFrame | None = None,
        stream: StreamedInput | None = None,
        json_schema: dict[str, Any] | None = None,
        response_model: Any = None,
        tokenizer: str = "estimate",
        custom_id_column: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._stream = stream
        self._lines_ = lines
        self._meta_ = meta
        self.json_schema = json_schema
        self.response_model = response_model
        self.tokenizer = tokenizer
        #: The input column the custom_ids came from, when ``custom_id`` named one.
        self.custom_id_column = custom_id_column
        self._frame: pl.DataFrame | None = None
        self._fingerprint: str | None = None

    @property
    def streamed(self) -> bool:
        """Whether the input is read in chunks at each pass instead of held in memory.

        True for a ``pl.LazyFrame``, a ``pyarrow`` reader or dataset and any
        ``__arrow_c_stream__`` object, until :attr:`frame` reads it into memory.
        """
        return self._lines_ is None

    @property
    def _lines(self) -> pl.Series:
        self._materialize()
        assert self._lines_ is not None
        return self._lines_

    @property
    def _meta(self) -> pl.DataFrame:
        self._materialize()
        assert self._meta_ is not None
        return self._meta_

    def _materialize(self) -> None:
        """Read a streamed input whole (one pass) and keep its lines, as in memory."""
        if self._lines_ is not None:
            return
        from batchframe._ids import check_unique

        assert self._stream is not None
        parts = list(self._stream.chunks())
        if parts:
            out = pl.concat(parts, rechunk=False)
        else:
            out = pl.DataFrame({"line": [], **{c: [] for c in META_SCHEMA}}).cast(
                {"line": pl.String, **META_SCHEMA}  # type: ignore[dict-item]
            )
        check_unique(out["custom_id"])
        self._meta_ = out.select(list(META_SCHEMA)).cast(META_SCHEMA)  # type: ignore[arg-type]
        self._lines_ = out["line"]

    def _totals(self, *, fingerprint: bool = False) -> Totals | None:
        """A streamed input's totals (a pass the first time); None when in memory."""
        if self._lines_ is not None or self._stream is None:
            return None
        return self._stream.ensure_totals(fingerprint=fingerprint)

    @property
    def frame(self) -> pl.DataFrame:
        """One row per request, in input order.

        ``custom_id``, ``body`` (the request body as JSON text), ``model``, ``n_bytes``
        (bytes of the request's final JSONL line, newline included), ``n_inputs``
        (embedding inputs; 1 for other endpoints) and ``est_tokens`` (estimated input
        tokens). Built on first access: the bodies are cut out of the lines that
        :meth:`write` writes, which holds a second copy of the request text. On a
        streamed input this reads the whole input into memory (once; the requests
        then behave as if built from a table in memory).
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
        totals = self._totals()
        return totals.n_requests if totals is not None else self._meta.height

    @property
    def n_bytes(self) -> int:
        """Bytes of all the JSONL lines together: what :meth:`write` writes."""
        totals = self._totals()
        return totals.n_bytes if totals is not None else int(self._meta["n_bytes"].sum())

    @property
    def est_tokens(self) -> int:
        """Estimated input tokens of all the requests together."""
        totals = self._totals()
        return totals.est_tokens if totals is not None else int(self._meta["est_tokens"].sum())

    def __repr__(self) -> str:
        if self._stream is not None and self._lines_ is None and self._stream.totals is None:
            return f"<Requests {self.endpoint}: streamed from a {self._stream.kind}, not read yet>"
        totals = self._totals()
        models = (
            list(totals.models)
            if totals is not None
            else self._meta["model"].unique(maintain_order=True).to_list()
        )
        return (
            f"<Requests {self.endpoint}: {len(self):,} rows, {self.n_bytes / 1e6:,.1f} MB, "
            f"models={models}, est_tokens={self.est_tokens:,}>"
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of every request's JSONL line, in order (custom_id, endpoint and body).

        Two tables with the same rows and the same template give the same fingerprint,
        whether read in memory or streamed, so a job can tell whether it is being
        resumed with the requests it was made from. Requests from a Ray or Dask input,
        whose partitions are built apart, have an order-free form instead (``"set:"``
        and the SHA-256 of the sum of every line's SHA-256, with the count): it does not
        change when the input is partitioned differently, and :meth:`matches` accepts
        either form from the same rows.
        """
        if self._fingerprint is None:
            if self._totals(fingerprint=True) is not None:
                assert self._stream is not None and self._stream.fingerprint is not None
                self._fingerprint = self._stream.fingerprint
            else:
                self._fingerprint = self._v3_fingerprint()
        return self._fingerprint

    def matches(self, fingerprint: str) -> bool:
        """Whether a job's ``fingerprint`` is these requests' (current or earlier form).

        Jobs made by earlier versions of batchframe stored earlier forms (ids and
        bodies hashed as two columns; the lines with their count first). Those are
        computed only when the current form differs; on a streamed input that reads
        the input into memory once.
        """
        if fingerprint == self.fingerprint:
            return True
        mine_set = self.fingerprint.startswith(SET_FINGERPRINT_TAG)
        if fingerprint.startswith(SET_FINGERPRINT_TAG):  # the job came from Ray or Dask
            return not mine_set and fingerprint == self._set_fingerprint()
        older = (self._v2_fingerprint(), self._columns_fingerprint())
        if mine_set:  # these requests come from Ray or Dask: read them through the driver
            return fingerprint == self._v3_fingerprint() or fingerprint in older
        return fingerprint in older

    def _set_fingerprint(self) -> str:
        total = 0
        for start in range(0, len(self._lines), 100_000):
            total += line_set_hash(self._lines.slice(start, 100_000))
        return set_fingerprint(total, len(self._lines))

    def _v3_fingerprint(self) -> str:
        h = hashlib.sha256(FINGERPRINT_PREFIX)
        for piece in jsonl_pieces(self._lines):
            h.update(piece)
        h.update(len(self._lines).to_bytes(8, "little"))
        return h.hexdigest()

    def _v2_fingerprint(self) -> str:
        h = hashlib.sha256(b"batchframe-requests-v2\n")
        h.update(len(self).to_bytes(8, "little"))
        for piece in jsonl_pieces(self._lines):
            h.update(piece)
        return h.hexdigest()

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
        if self._lines_ is None:
            assert self._stream is not None
            return self._stream.plan(limits)
        return plan_whole(self._meta, limits, embeddings=self.endpoint == "/v1/embeddings")[1]

    def embedding_dims(self) -> dict[str, int]:
        """Embeddings: the ``dimensions`` every body of a model asks for, per model.

        ``""`` stands for no model. Models whose bodies name no or several widths are
        left out (their width is learnt from the first vector).
        """
        if self.endpoint != "/v1/embeddings" or not len(self):
            return {}
        totals = self._totals()
        if totals is not None:
            return dict(totals.embedding_dims)
        dims = (
            self._body_values("$.dimensions")
            .lazy()
            .select(pl.col("model").fill_null(""), pl.col("value").alias("dim"))
            .group_by("model")
            .agg(pl.col("dim").unique().alias("dims"))
            .collect()
        )
        out: dict[str, int] = {}
        for model, values in dims.iter_rows():
            if len(values) == 1 and values[0] is not None and values[0].isdigit():
                out[str(model)] = int(values[0])
        return out

    def plan(self, limits: BatchLimits | None = None) -> pl.DataFrame:
        """Plan shards that respect ``limits`` (default :class:`BatchLimits`).

        Returns
        -------
        pl.DataFrame
            One row per shard: ``shard``, ``model``, ``n_requests``, ``n_bytes``,
            ``n_inputs``, ``est_tokens``.
        """
        return plan_frame(self._shards(limits))

    def estimate_cost(
        self,
        provider: Any = None,
        *,
        prices: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ) -> pl.DataFrame:
        """Expected cost in USD per model, before anything is uploaded.

        Input tokens (``est_tokens``: exact where a tokenizer was available) times the
        provider's batch input price, plus output tokens as a range: none (``min_usd``)
        to every request writing its ``max_tokens`` / ``max_completion_tokens`` /
        ``max_output_tokens`` (``max_usd``, null when some request sets no bound).

        Parameters
        ----------
        provider
            Profile name or :class:`Provider` (default ``"openai"``); its deployment
            names are priced as their models.
        prices
            Price overrides (see :func:`batchframe.price_table`).

        Returns
        -------
        pl.DataFrame
            ``model``, ``priced_as``, ``n_requests``, ``input_tokens``,
            ``max_output_tokens``, ``unbounded_requests``, ``input_usd_per_1m``,
            ``output_usd_per_1m``, ``min_usd``, ``max_usd`` (null for unpriced models).
        """
        from batchframe._cost import estimate_frame

        return estimate_frame(self, provider, prices)

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
        encoded again. On a streamed input this is one pass that reads, checks, plans
        and writes: each shard file is appended to as its rows arrive and closed when
        it is full, and a pass refused midway removes the files it wrote.

        Parameters
        ----------
        root
            Directory or URL (``"out/"``, ``"memory://x"``, ``"s3://bucket/prefix"``).
        limits
            Shard limits (default :class:`BatchLimits`).
        storage_options
            fsspec options (credentials, endpoint URL, ...).
        executor
            Runs the per-shard writes (default: a small local thread pool). A streamed
            input's shards are written by the pass itself, as they fill.

        Returns
        -------
        pl.DataFrame
            ``shard``, ``path``, ``n_requests``, ``n_bytes`` (bytes written),
            ``sha256``, ``model``, ``n_inputs``, ``est_tokens``.
        """
        return self._write(root, limits, storage_options, executor)[0].drop("rel")

    def _write(
        self,
        root: str | os.PathLike[str] | Storage,
        limits: BatchLimits | None,
        storage_options: Mapping[str, Any] | None,
        executor: Executor | None,
        *,
        fingerprint: bool = False,
    ) -> tuple[pl.DataFrame, JobFacts]:
        """Write the shards; return them and the facts a job's manifest records.

        On a streamed input this is one pass that reads, checks, plans and writes
        (and, with ``fingerprint``, computes the fingerprint on the way).
        """
        from batchframe._storage import Storage

        limits = limits or BatchLimits()
        # A job's own Storage: it then knows the shards' sizes (no HEAD to upload them).
        storage = root if isinstance(root, Storage) else Storage(os.fspath(root), storage_options)
        if self._lines_ is None:
            assert self._stream is not None
            done = self._stream.run(limits, storage=storage, fingerprint=fingerprint)
            shards = self._stream.plan(limits)
            results = [done[s.index] for s in shards]
            rels = [self._stream.rels.get(s.index, shard_path(s.index)) for s in shards]
        else:
            segments, shards = plan_whole(
                self._meta, limits, embeddings=self.endpoint == "/v1/embeddings"
            )
            own = executor is None
            pool = executor or ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2))
            try:
                futures = [
                    pool.submit(
                        write_shard, storage, shard_path(g.shard), take_rows(self._lines, g.rows)
                    )
                    for g in segments
                ]
                results = [f.result() for f in futures]
            finally:
                if own:
                    pool.shutdown()
            rels = [shard_path(s.index) for s in shards]
        out = plan_frame(shards).with_columns(
            pl.Series("path", [storage.url(r) for r in rels], pl.String),
            pl.Series("rel", rels, pl.String),
            pl.Series("n_bytes", [n for n, _ in results], pl.Int64),
            pl.Series("sha256", [h for _, h in results], pl.String),
        )
        written = out.select(
            "shard",
            "path",
            "n_requests",
            "n_bytes",
            "sha256",
            "model",
            "n_inputs",
            "est_tokens",
            "rel",
        )
        facts = JobFacts(
            n_requests=len(self),
            fingerprint=self.fingerprint if fingerprint else "",
            embedding_dims=self.embedding_dims(),
        )
        return written, facts


@dataclass(frozen=True)
class JobFacts:
    """What a job's manifest records about the requests it was made from."""

    n_requests: int
    fingerprint: str
    embedding_dims: dict[str, int]


def take_rows(col: pl.Series, rows: pl.Series) -> pl.Series:
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


#: Starts the order-free fingerprint of requests from a Ray or Dask input.
SET_FINGERPRINT_TAG = "set:"


def line_set_hash(lines: pl.Series) -> int:
    """The sum of the SHA-256 of each line (an integer; add them up modulo 2**256)."""
    total = 0
    for line in lines.to_list():
        total += int.from_bytes(hashlib.sha256(line.encode()).digest(), "big")
    return total


def set_fingerprint(total: int, n: int) -> str:
    """The order-free fingerprint of ``n`` lines whose :func:`line_set_hash` sum to ``total``."""
    h = hashlib.sha256(b"batchframe-requests-set-v1\n")
    h.update((total % (1 << 256)).to_bytes(32, "big"))
    h.update(n.to_bytes(8, "little"))
    return SET_FINGERPRINT_TAG + h.hexdigest()


#: Starts the fingerprint; the lines follow, then their count (so it can be computed
#: while streaming).
FINGERPRINT_PREFIX = b"batchframe-requests-v3\n"

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
