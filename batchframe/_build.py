"""From a table and a body template to validated :class:`Requests` (``build_requests``)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

from batchframe import _calibrate, _tokens
from batchframe._bodies import check_endpoint
from batchframe._calibrate import Ratios, block_range, blocks_before, leaf_ratios, scale
from batchframe._checks import LeafCheck, check_template, name_custom_ids
from batchframe._config import BatchLimits
from batchframe._encode import (
    Encoded,
    Template,
    compile_template,
    encode_leaf,
    escape_json_chars,
    first_rows,
    polars_json_expr,
)
from batchframe._ids import ContentIds, check_unique, chunk_ids
from batchframe._plan import check_rows
from batchframe._requests import META_SCHEMA, Requests, line_affixes
from batchframe._source import to_source
from batchframe._structured import normalize
from batchframe.exceptions import (
    ColumnNotFoundError,
    CustomIdError,
    EvaluationError,
    InputError,
    StreamingNotSupportedError,
    TemplateError,
)

CHUNK_ROWS = 100_000

_V = TypeVar("_V", pl.Series, pl.Expr)


def _check_columns(template: Template, id_expr: pl.Expr | None, names: list[str]) -> None:
    exprs = [(leaf.path, leaf.expr) for leaf in template.leaves]
    if id_expr is not None:
        exprs.append(("custom_id", id_expr))
    available = set(names)
    for where, expr in exprs:
        for root in expr.meta.root_names():
            if root not in available:
                close = difflib.get_close_matches(root, names, n=3)
                hint = f" Did you mean {close}?" if close else ""
                msg = (
                    f"column {root!r} (used by `{where}`) is not in the input table; "
                    f"its columns are {names}.{hint}"
                )
                raise ColumnNotFoundError(msg, column=root)


def _text_parts(s: pl.Series) -> pl.Series | None:
    """The text a model reads in a leaf (for token estimates), or None."""
    dtype = s.dtype
    if dtype == pl.String:
        return s
    if isinstance(dtype, pl.List) and dtype.inner == pl.String:
        return s.list.join(" ")
    return None


def _n_inputs(template_body: Any, leaves: dict[str, pl.Series], n: int) -> pl.Series:
    value = template_body.get("input") if isinstance(template_body, dict) else None
    if "input" in leaves:
        s = leaves["input"]
        dtype = s.dtype
        if isinstance(dtype, pl.Array) and not dtype.inner.is_integer():
            return pl.Series("n_inputs", [dtype.size] * n, dtype=pl.Int64)
        if isinstance(dtype, pl.List) and not dtype.inner.is_integer():
            return s.list.len().cast(pl.Int64).alias("n_inputs")
        return pl.Series("n_inputs", [1] * n, dtype=pl.Int64)
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return pl.Series("n_inputs", [len(value)] * n, dtype=pl.Int64)
    return pl.Series("n_inputs", [1] * n, dtype=pl.Int64)


def _encode_chunk(
    chunk: pl.DataFrame,
    offset: int,
    template: Template,
    body: dict[str, Any],
    endpoint: str,
    counter: _tokens.Counter,
    const_tokens: int,
    escape_ids: bool,
    ratios: Ratios,
    checks: Mapping[str, LeafCheck],
) -> pl.DataFrame:
    """Encode one slice of rows: each row's JSONL line (or, without ids, its body)."""
    n = chunk.height
    encoded: list[Encoded] = []
    evaluated: dict[str, pl.Series] = {}
    tokens = pl.repeat(const_tokens, n, dtype=pl.Int64, eager=True)
    for i, leaf in enumerate(template.leaves):
        s = chunk[f"__leaf{i}"]
        check = checks.get(leaf.path)
        if check is not None:
            check(s, offset)  # what the endpoint's schema refuses, per row
        evaluated[leaf.path] = s
        if leaf.path == "stream" and s.dtype == pl.Boolean and s.any():
            rows = first_rows(s.fill_null(False), offset)
            msg = f'`"stream": true` on row(s) {rows}; the Batch API cannot stream, drop `stream`'
            raise StreamingNotSupportedError(msg, rows=rows, column="stream")
        try:
            encoded.append(encode_leaf(s, leaf.path, offset))
        except pl.exceptions.PolarsError as exc:
            msg = (
                f"template leaf `{leaf.path}` holds {s.dtype} values, which cannot be written "
                f"as JSON ({exc}); turn them into text or numbers in the expression first, "
                "e.g. `.dt.total_seconds()` for durations"
            )
            raise TemplateError(msg, column=leaf.path) from exc
        if leaf.path != "model":
            text = _text_parts(s)
            if text is not None:
                counted = counter(text.cast(pl.String))
                tokens = tokens + scale(counted, i, offset, ratios, _calibrate.CALIBRATION_ROWS)
    parts = _body_parts(template, [(e.values, e.quoted) for e in encoded])
    if "model" in evaluated:
        models = evaluated["model"]
        if models.dtype == pl.Categorical or isinstance(models.dtype, pl.Enum):
            models = models.cast(pl.String)
        if models.dtype != pl.String:
            msg = f"`model` must be text, got {models.dtype}"
            raise TemplateError(msg, column="model")
    else:
        models = pl.repeat(body.get("model"), n, dtype=pl.String, eager=True)
    out = pl.DataFrame(
        {
            "model": models.alias("model"),
            "n_inputs": _n_inputs(body, evaluated, n)
            if endpoint == "/v1/embeddings"
            else pl.repeat(1, n, dtype=pl.Int64, eager=True),
            "est_tokens": tokens.alias("est_tokens"),
        }
    )
    if "__cid" not in chunk.columns:
        return out.with_columns(_concat(parts).alias("body"))
    ids = chunk["__cid"]
    return out.with_columns(
        ids.alias("custom_id"),
        *_lines(endpoint, escape_json_chars(ids) if escape_ids else ids, parts),
    )


#: Rows per slice of the one-query build: at most this many (memory per slice)...
_SLICE_MAX = 250_000
#: ... and at least this many (fixed cost per query).
_SLICE_MIN = 20_000


def _slice_rows(n: int, workers: int) -> int:
    """Rows per slice: two slices per worker at least, whole multiples of workers."""
    k = max(2 * workers, -(-n // _SLICE_MAX))
    k += -k % workers
    return max(_SLICE_MIN, -(-n // k))


def _body_parts(template: Template, encoded: Sequence[tuple[_V, bool]]) -> list[str | _V]:
    """A body as constant text and encoded leaves (``(values, quoted)``), in order."""
    parts: list[str | _V] = []
    pieces: list[tuple[_V, bool] | None] = list(encoded)
    pieces.append(None)
    closing = ""  # the quote that ends the previous string leaf
    for frag, piece in zip(template.fragments, pieces, strict=True):
        literal = closing + frag + ('"' if piece is not None and piece[1] else "")
        if literal:
            parts.append(literal)
        if piece is not None:
            parts.append(piece[0])
            closing = '"' if piece[1] else ""
    return parts


def _merged(parts: Sequence[str | _V]) -> list[str | _V]:
    """``parts`` with adjacent texts joined."""
    merged: list[str | _V] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def _concat(parts: list[str | pl.Series]) -> pl.Series:
    """Row-wise concatenation of constant text and columns (adjacent texts merged)."""
    return pl.select(pl.concat_str([pl.lit(p) for p in _merged(parts)])).to_series()


def _lines(endpoint: str, id_chars: pl.Series, body: list[str | pl.Series]) -> list[pl.Series]:
    """``line`` (the final JSONL line, newline included), ``n_bytes`` and ``body_start``.

    ``id_chars`` are the ids already escaped for use inside JSON quotes.
    """
    head, mid, tail = line_affixes(endpoint)
    line = _concat([head + '"', id_chars, '"' + mid, *body, tail]).alias("line")
    start = id_chars.str.len_chars().cast(pl.Int64) + len(head + '""' + mid)
    return [line, line.str.len_bytes().cast(pl.Int64).alias("n_bytes"), start.alias("body_start")]


def build_requests(
    frame: Any,
    *,
    endpoint: str,
    body: Mapping[str, Any],
    custom_id: str | pl.Expr | None = None,
    tokenizer: str = "auto",
) -> Requests:
    """Build validated Batch API requests from a table and a body template.

    Parameters
    ----------
    frame
        The input table. ``pl.DataFrame`` and ``pa.Table`` are built at once, in memory.
        A ``pl.LazyFrame``, ``pa.RecordBatchReader``, ``pa.dataset.Dataset`` or any
        object with ``__arrow_c_stream__`` (pandas, narwhals, DuckDB) is *streamed*: read
        in chunks, never whole, by each pass that needs it (``write``, ``plan``,
        ``BatchJob.create``; see :attr:`Requests.streamed`). Every kind gives the same
        requests, shards and fingerprint for the same rows. A ``ray.data.Dataset`` or
        ``dask.dataframe.DataFrame`` is built and written by the engine's workers,
        partition by partition (the job root must be storage they share; ``custom_id``
        is required).
    endpoint
        One of the Batch API endpoints, e.g. ``"/v1/chat/completions"``.
    body
        A JSON template (dicts, lists, scalars) whose leaves may be Polars expressions,
        evaluated per row. See :func:`chat_body` and the other helpers.
    custom_id
        A column name or expression (integers become text). ``None`` derives a
        deterministic id from each row's body, unique even for identical rows.
    tokenizer
        How ``est_tokens`` is counted: ``"auto"``, ``"exact"`` or ``"estimate"``.

    Returns
    -------
    Requests
        The validated requests; nothing has been written yet.

    Raises
    ------
    InputError
        Before anything is written, naming the rows or column: unknown column, null or
        empty or duplicate ``custom_id``, a null leaf, ``"stream": true``, a line over
        the byte limit, text that is not UTF-8, an unknown endpoint. On a streamed
        input the row checks run during its first pass (which then removes whatever
        it wrote); the template and column checks run here.

    Examples
    --------
    >>> import polars as pl
    >>> import batchframe as bf
    >>> df = pl.DataFrame({"id": [1, 2], "text": ["great", "awful"]})
    >>> req = bf.build_requests(
    ...     df,
    ...     endpoint="/v1/chat/completions",
    ...     body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
    ...     custom_id="id",
    ... )
    >>> req.frame["custom_id"].to_list()
    ['1', '2']
    """
    endpoint = check_endpoint(endpoint)
    if not isinstance(body, Mapping):
        msg = f"`body` must be a dict template, got {type(body).__name__}"
        raise TemplateError(msg)
    body_dict, json_schema = normalize(endpoint, dict(body))
    response_model = _response_model(endpoint, dict(body))
    if body_dict.get("stream") is True:
        msg = '`"stream": true` is not allowed: the Batch API cannot stream; drop `stream`'
        raise StreamingNotSupportedError(msg, column="stream")
    template = compile_template(body_dict)
    # The endpoint's request schema: constants checked now, expression leaves per row.
    checks = check_template(endpoint, body_dict)
    model = body_dict.get("model")
    source = to_source(frame)
    names = source.schema_names()
    id_expr: pl.Expr | None
    if custom_id is None:
        id_expr = None
    elif isinstance(custom_id, str):
        id_expr = pl.col(custom_id)
    elif isinstance(custom_id, pl.Expr):
        id_expr = custom_id
    else:
        msg = f"`custom_id` must be a column name, an expression or None, got {custom_id!r}"
        raise CustomIdError(msg, column="custom_id")
    _check_columns(template, id_expr, names)
    if not template.leaves and id_expr is None:
        msg = "a template without expressions needs `custom_id` (or at least one expression)"
        raise TemplateError(msg)
    model_name = model if isinstance(model, str) else None
    resolved = "exact" if tokenizer == "exact" else tokenizer
    counter = _tokens.resolve(resolved, model_name)
    const = template.const_text
    const_tokens = _tokens.REQUEST_OVERHEAD + _message_overhead(body_dict)
    if const:
        const_counter = _tokens.const_counter(resolved, model_name)
        const_tokens += int(const_counter(pl.Series(const, dtype=pl.String)).sum())
    # "auto" with bpe-openai: the estimate, scaled per leaf by exact counts of a sample.
    calibrate = tokenizer == "auto" and _tokens.has_exact()
    if calibrate:
        counter = _tokens.quick_estimate_tokens
    builder = Builder(
        endpoint=endpoint,
        template=template,
        body=body_dict,
        id_expr=id_expr,
        counter=counter,
        const_tokens=const_tokens,
        calibrate_with=_tokens.exact_counter(model_name) if calibrate else None,
        checks=checks,
    )
    label = "exact" if tokenizer == "exact" else "estimate"
    options: dict[str, Any] = {
        "endpoint": endpoint,
        "json_schema": json_schema,
        "response_model": response_model,
        "tokenizer": "calibrated" if calibrate else label,
        "custom_id_column": custom_id if isinstance(custom_id, str) else None,
    }
    if source.engine is not None:
        from batchframe._cluster import DistributedInput, require_ids

        require_ids(builder, source.kind)
        return Requests(**options, stream=DistributedInput(builder, source, source.engine))
    if source.streamed:
        from batchframe._stream import StreamedInput

        return Requests(**options, stream=StreamedInput(builder, source))
    lines, meta = builder.build_all(source.as_lazy())
    requests = Requests(**options, lines=lines, meta=meta)
    # Refuse lines that could never be uploaded, even before a plan is asked for.
    try:
        check_rows(meta, BatchLimits(), embeddings=False)
    except InputError as exc:
        name_custom_ids(exc, meta["custom_id"], 0)
        raise
    return requests


@dataclass(frozen=True)
class Builder:
    """Everything needed to turn evaluated rows into request lines, chunk by chunk."""

    endpoint: str
    template: Template
    body: dict[str, Any]
    id_expr: pl.Expr | None
    counter: _tokens.Counter
    const_tokens: int
    #: Counts samples exactly to scale ``counter`` by (``"auto"``; see _calibrate).
    calibrate_with: _tokens.Counter | None = None
    #: Per-row checks of expression leaves, by template path (see _checks).
    checks: Mapping[str, LeafCheck] = field(default_factory=dict)

    def ratios_for(self, sample: pl.DataFrame) -> tuple[float | None, ...]:
        """Per leaf: exact / estimated tokens over ``sample`` (evaluated rows)."""
        assert self.calibrate_with is not None
        texts = [
            None
            if leaf.path == "model" or (t := _text_parts(sample[f"__leaf{i}"])) is None
            else t.cast(pl.String)
            for i, leaf in enumerate(self.template.leaves)
        ]
        return leaf_ratios(texts, self.counter, self.calibrate_with)

    def all_ratios(self, evaluated: pl.DataFrame) -> Ratios:
        """The ratios of every sample block of a whole evaluated table (``{}``: none)."""
        if self.calibrate_with is None:
            return {}
        out: Ratios = {}
        for block in blocks_before(evaluated.height, _calibrate.CALIBRATION_ROWS):
            start, stop = block_range(block, _calibrate.CALIBRATION_ROWS)
            out[block] = self.ratios_for(evaluated.slice(start, stop - start))
        return out

    @property
    def selects(self) -> list[pl.Expr]:
        """The expressions evaluated over the input: ``__leaf<i>`` and ``__cid``."""
        out = [leaf.expr.alias(f"__leaf{i}") for i, leaf in enumerate(self.template.leaves)]
        if self.id_expr is not None:
            out.append(self.id_expr.alias("__cid"))
        return out or [pl.len().alias("__n")]

    def encode(
        self, chunk: pl.DataFrame, offset: int, ratios: Ratios | None = None
    ) -> pl.DataFrame:
        """Lines (or, without ids, bodies) and per-row facts of one chunk of evaluated rows.

        ``offset`` is the position of the chunk's first row in the whole input;
        ``ratios`` (``"auto"``) scale the token estimate of the blocks the chunk spans.
        """
        escape = False
        ids: pl.Series | None = None
        query = None
        if "__cid" in chunk.columns:
            raw = chunk["__cid"]
            ids = chunk_ids(raw, offset)
            query = self.whole_query(chunk)  # ids checked first, as below
            # Integers as text never need escaping; other ids are checked once, here.
            escape = not raw.dtype.is_integer() and _ids_need_escaping(ids)
            chunk = chunk.with_columns(ids.alias("__cid"))
        try:
            if query is not None:
                # Leaves that cannot fail to encode: their checks, then one query.
                self._check_chunk(chunk, offset)
                frame, counted = self._run_whole(chunk, query, workers=1)
                return self._finish_whole(frame, counted, offset, ratios or {})
            return _encode_chunk(
                chunk,
                offset,
                self.template,
                self.body,
                self.endpoint,
                self.counter,
                self.const_tokens,
                escape,
                ratios or {},
                self.checks,
            )
        except InputError as exc:
            # Rows are named by position; their ids are what a user can search for.
            name_custom_ids(exc, ids, offset)
            raise

    def with_content_ids(self, out: pl.DataFrame, content: ContentIds) -> pl.DataFrame:
        """Give bodies built without ids their content-derived ids and lines."""
        ids = content.assign(out["body"])  # hex and digits: nothing to escape
        return out.with_columns(ids, *_lines(self.endpoint, ids, [out["body"]]))

    def build_all(self, lf: pl.LazyFrame) -> tuple[pl.Series, pl.DataFrame]:
        """Lines and per-row facts of a whole in-memory table.

        Tables whose leaves cannot fail to encode (text and integers without nulls, see
        :meth:`whole_query`) are built by one Polars query, run over slices of the rows
        on a thread per core without the GIL, while this thread counts the calibration
        samples exactly (``bpe-openai`` holds the GIL) and runs the checks. Any refusal
        re-runs the build chunk by chunk (:meth:`build_chunks`), so errors are exactly
        those of a chunked build, raised in the same order.
        """
        with evaluating(0):
            evaluated = lf.select(self.selects).collect()
        query = self.whole_query(evaluated)
        if query is None:
            return self.build_chunks(evaluated)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchframe-build") as pool:
            built = pool.submit(self._run_whole, evaluated, query)
            try:
                ratios = self.all_ratios(evaluated)
                self._check_whole(evaluated)
                frame, counted = built.result()
            except InputError:
                built.exception()  # let the query finish before building again
                return self.build_chunks(evaluated)  # raises the chunked build's error
            except pl.exceptions.PolarsError:
                return self.build_chunks(evaluated)
        out = self._finish_whole(frame, counted, 0, ratios)
        meta = pl.DataFrame([out[c].cast(META_SCHEMA[c]) for c in META_SCHEMA])
        return out["line"], meta

    def build_chunks(self, evaluated: pl.DataFrame) -> tuple[pl.Series, pl.DataFrame]:
        """Lines and per-row facts of evaluated rows, chunk by chunk on every core."""
        ratios = self.all_ratios(evaluated)
        if self.id_expr is not None:
            raw = evaluated["__cid"]
            if not raw.dtype.is_integer() or raw.null_count():
                chunk_ids(raw)  # nulls, types and empty ids first, as a chunk would
            check_unique(raw)  # cheaper on integers than on their text
        offsets = range(0, max(evaluated.height, 1), CHUNK_ROWS)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            parts = list(
                pool.map(lambda o: self.encode(evaluated.slice(o, CHUNK_ROWS), o, ratios), offsets)
            )
        out = pl.concat(parts, rechunk=False)
        if self.id_expr is None:
            out = self.with_content_ids(out, ContentIds())
        meta = out.select(list(META_SCHEMA)).cast(META_SCHEMA)  # type: ignore[arg-type]
        return out["line"], meta

    def whole_query(self, evaluated: pl.DataFrame) -> Callable[[pl.LazyFrame], pl.LazyFrame] | None:
        """The query giving ``custom_id``, ``line``, ``n_bytes`` and ``body_start`` of rows.

        None unless every row is sure to encode: ids given (integers or text), every
        leaf text or integers without nulls (a text ``model``). The lines are the ones
        :meth:`encode` makes (the same expressions, applied to any slice of the rows).
        With ``"auto"`` it also gives each text leaf's unscaled estimate (``__tok<i>``).
        """
        if self.id_expr is None or evaluated.height == 0:
            return None
        raw = evaluated["__cid"]
        if not (raw.dtype.is_integer() or raw.dtype == pl.String):
            return None
        encoded: list[tuple[pl.Expr, bool]] = []
        for i, leaf in enumerate(self.template.leaves):
            s = evaluated[f"__leaf{i}"]
            col = pl.col(f"__leaf{i}")
            if s.null_count():
                return None
            if s.dtype == pl.String:
                encoded.append((polars_json_expr(col, '"', '"'), True))  # escape_json_chars
            elif s.dtype.is_integer() and leaf.path != "model":
                encoded.append((col.cast(pl.String), False))  # as _encode_value
            else:
                return None
        cid = pl.col("__cid")
        if raw.dtype.is_integer():
            ids = id_chars = cid.cast(pl.String)
        else:
            ids = cid
            id_chars = polars_json_expr(cid, '"', '"') if _ids_need_escaping(raw) else cid
        head, mid, tail = line_affixes(self.endpoint)
        body = _body_parts(self.template, encoded)
        parts = _merged([head + '"', id_chars, '"' + mid, *body, tail])
        line = pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])
        start = id_chars.str.len_chars().cast(pl.Int64) + len(head + '""' + mid)

        # "auto"'s estimate is counted in the same query (``__tok<i>``, unscaled).
        quick = [
            _tokens.quick_estimate_expr(pl.col(f"__leaf{i}")).alias(f"__tok{i}")
            for i in self._text_leaves(evaluated)
            if self.counter is _tokens.quick_estimate_tokens
        ]

        def query(lf: pl.LazyFrame) -> pl.LazyFrame:
            return lf.select(
                ids.alias("custom_id"), line.alias("line"), start.alias("body_start"), *quick
            ).with_columns(pl.col("line").str.len_bytes().cast(pl.Int64).alias("n_bytes"))

        return query

    def _run_whole(
        self,
        evaluated: pl.DataFrame,
        query: Callable[[pl.LazyFrame], pl.LazyFrame],
        workers: int | None = None,
    ) -> tuple[pl.DataFrame, dict[int, pl.Series]]:
        """The query's frame with ``model`` and ``n_inputs``; each text leaf's token count.

        The counts are unscaled (``"auto"`` scales them once the ratios are known).
        """
        n = evaluated.height
        # Slices run on a thread per core: each query materialises its intermediates (escaped
        # text, lines) for its rows only, so memory is reused from slice to slice instead
        # of faulted in afresh (one query over 1M rows: up to 90k page faults per build).
        workers = workers or max(2, os.cpu_count() or 2)
        step = _slice_rows(n, workers)
        if workers == 1:
            frame = query(evaluated.lazy()).collect(engine="in-memory")
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                frames = list(
                    pool.map(
                        lambda o: query(evaluated.slice(o, step).lazy()).collect(
                            engine="in-memory"
                        ),
                        range(0, n, step),
                    )
                )
            frame = pl.concat(frames, rechunk=False)
        leaves = {leaf.path: evaluated[f"__leaf{i}"] for i, leaf in enumerate(self.template.leaves)}
        if "model" in leaves:
            models = leaves["model"]
        else:
            models = pl.Series([self.body.get("model")], dtype=pl.String).new_from_index(0, n)
        n_inputs = (
            _n_inputs(self.body, leaves, n)
            if self.endpoint == "/v1/embeddings"
            else pl.Series([1], dtype=pl.Int64).new_from_index(0, n)
        )
        frame = frame.with_columns(models.alias("model"), n_inputs.alias("n_inputs"))
        counted = {
            i: frame[f"__tok{i}"]
            if f"__tok{i}" in frame.columns
            else self.counter(evaluated[f"__leaf{i}"])
            for i in self._text_leaves(evaluated)
        }
        return frame, counted

    def _text_leaves(self, evaluated: pl.DataFrame) -> list[int]:
        """The leaves whose text is counted (as :func:`_encode_chunk` counts them)."""
        return [
            i
            for i, leaf in enumerate(self.template.leaves)
            if leaf.path != "model" and evaluated[f"__leaf{i}"].dtype == pl.String
        ]

    def _check_whole(self, evaluated: pl.DataFrame) -> None:
        """The checks a chunked build makes, in its order (ids, then chunks and leaves)."""
        raw = evaluated["__cid"]
        if not raw.dtype.is_integer() or raw.null_count():
            chunk_ids(raw)
        check_unique(raw)
        for offset in range(0, evaluated.height, CHUNK_ROWS):
            self._check_chunk(evaluated.slice(offset, CHUNK_ROWS), offset)

    def _check_chunk(self, chunk: pl.DataFrame, offset: int) -> None:
        """The per-row checks of the template's leaves on one chunk, leaf by leaf."""
        for i, leaf in enumerate(self.template.leaves):
            check = self.checks.get(leaf.path)
            if check is not None:
                check(chunk[f"__leaf{i}"], offset)

    def _finish_whole(
        self, frame: pl.DataFrame, counted: dict[int, pl.Series], offset: int, ratios: Ratios
    ) -> pl.DataFrame:
        """The rows' frame as :func:`_encode_chunk` gives it, est_tokens scaled."""
        tokens = pl.Series([self.const_tokens], dtype=pl.Int64).new_from_index(0, frame.height)
        for i, c in counted.items():
            tokens = tokens + scale(c, i, offset, ratios, _calibrate.CALIBRATION_ROWS)
        # Columns as they are (a select would copy them: ~2 ms per 500k rows).
        names = ("model", "n_inputs", "est_tokens", "custom_id", "line", "n_bytes", "body_start")
        return pl.DataFrame([tokens.alias(c) if c == "est_tokens" else frame[c] for c in names])


@contextmanager
def evaluating(offset: int) -> Iterator[None]:
    """Turn Polars' errors on the input or the template into :class:`EvaluationError`.

    The original error is chained; ``offset`` says where in the input it happened.
    """
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        where = f" (in the rows from {offset:,} on)" if offset else ""
        msg = (
            f"the input could not be read, or the body template and `custom_id` evaluated on "
            f"it{where}: {type(exc).__name__}: {exc}. Check the columns' types against the "
            "template's expressions (e.g. cast them first)"
        )
        raise EvaluationError(msg) from exc


def _ids_need_escaping(ids: pl.Series) -> bool:
    """Whether any id has a character JSON must escape (quote, backslash, control)."""
    if ids.is_empty():
        return False
    specials = ['"', "\\", *(chr(c) for c in range(0x20))]
    return bool(ids.str.contains_any(specials).any())


def _message_overhead(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    return _tokens.MESSAGE_OVERHEAD * len(messages) if isinstance(messages, list) else 0


def _response_model(endpoint: str, body: dict[str, Any]) -> Any:
    fmt: Any = None
    if endpoint == "/v1/chat/completions":
        fmt = body.get("response_format")
    elif endpoint == "/v1/responses" and isinstance(body.get("text"), dict):
        fmt = body["text"].get("format")
    return fmt if isinstance(fmt, type) else None
