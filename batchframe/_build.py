"""From a table and a body template to validated :class:`Requests` (``build_requests``)."""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import polars as pl

from batchframe import _tokens
from batchframe._bodies import check_endpoint
from batchframe._config import BatchLimits
from batchframe._encode import (
    Encoded,
    Template,
    compile_template,
    encode_leaf,
    escape_json_chars,
    first_rows,
)
from batchframe._plan import check_rows
from batchframe._requests import META_SCHEMA, Requests, line_affixes
from batchframe._structured import normalize
from batchframe.exceptions import (
    ColumnNotFoundError,
    CustomIdError,
    DuplicateCustomIdError,
    EncodingError,
    InputError,
    StreamingNotSupportedError,
    TemplateError,
)

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK_ROWS = 100_000


def _to_lazy(frame: Any) -> pl.LazyFrame:
    if isinstance(frame, pl.LazyFrame):
        return frame
    if isinstance(frame, pl.DataFrame):
        return frame.lazy()
    mod = type(frame).__module__
    if mod.startswith("pyarrow"):
        return _arrow_to_lazy(frame)
    msg = (
        f"`frame` must be a polars DataFrame or LazyFrame or a pyarrow Table, got "
        f"{type(frame).__name__}" + (" (use `pl.from_pandas(df)`)" if "pandas" in mod else "")
    )
    raise InputError(msg)


def _arrow_to_lazy(table: pa.Table) -> pl.LazyFrame:
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                rows = _bad_utf8_rows(col)
                msg = (
                    f"column `{name}` holds text that is not valid UTF-8 at row(s) {rows}; "
                    "decode or clean it before building requests"
                )
                raise EncodingError(msg, rows=rows, column=name) from None
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out.lazy()


def _bad_utf8_rows(col: Any) -> list[int]:
    import pyarrow as pa

    raw = col.cast(pa.large_binary()) if hasattr(col, "cast") else col
    bad: list[int] = []
    for i, value in enumerate(raw.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            if len(bad) >= 5:
                break
    return bad


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


def _custom_ids(s: pl.Series) -> pl.Series:
    if s.dtype.is_integer():
        _check_unique(s)  # cheaper on integers than on their text
        return s.cast(pl.String).alias("custom_id")
    if s.dtype == pl.Categorical or isinstance(s.dtype, pl.Enum):
        s = s.cast(pl.String)
    elif s.dtype == pl.Binary:
        try:
            s = s.cast(pl.String)
        except pl.exceptions.PolarsError:
            msg = "`custom_id` holds bytes that are not UTF-8; cast it to text first"
            raise EncodingError(msg, column="custom_id") from None
    elif s.dtype != pl.String:
        msg = (
            f"`custom_id` must be text or integers, got {s.dtype}; cast it first, e.g. "
            '`custom_id=pl.col("id").cast(pl.String)`'
        )
        raise CustomIdError(msg, column="custom_id")
    s = s.alias("custom_id")
    _check_unique(s)
    empty = s.str.len_bytes() == 0
    if empty.any():
        rows = first_rows(empty, 0)
        msg = f"`custom_id` is empty on {int(empty.sum())} row(s), first at row(s) {rows}"
        raise CustomIdError(msg, rows=rows, column="custom_id")
    return s


def _check_unique(s: pl.Series) -> None:
    if s.null_count():
        rows = first_rows(s.is_null(), 0)
        msg = (
            f"`custom_id` is null on {s.null_count()} row(s), first at row(s) {rows}; "
            "every request needs an id (drop those rows or pass `custom_id=None` "
            "for ids derived from each row's content)"
        )
        raise CustomIdError(msg, rows=rows, column="custom_id")
    if s.n_unique() == len(s):
        return
    dup = s.is_duplicated()
    rows = first_rows(dup, 0)
    values = s.filter(dup).unique(maintain_order=True).head(5).cast(pl.String).to_list()
    msg = (
        f"`custom_id` must be unique: {int(dup.sum())} row(s) share an id, e.g. "
        f"{values} at row(s) {rows}; de-duplicate the table or pass `custom_id=None`"
    )
    raise DuplicateCustomIdError(msg, rows=rows, column="custom_id")


def _content_ids(bodies: pl.Series) -> pl.Series:
    """Deterministic ids from each body; identical bodies get ``-0``, ``-1``, ..."""
    digests = [hashlib.blake2b(b.encode(), digest_size=8).hexdigest() for b in bodies.to_list()]
    df = pl.DataFrame({"h": digests})
    return df.select(
        pl.concat_str(
            [pl.col("h"), pl.lit("-"), pl.int_range(pl.len()).over("h").cast(pl.String)]
        ).alias("custom_id")
    ).to_series()


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
) -> pl.DataFrame:
    """Encode one slice of rows: each row's JSONL line (or, without ids, its body)."""
    n = chunk.height
    encoded: list[Encoded] = []
    evaluated: dict[str, pl.Series] = {}
    tokens = pl.repeat(const_tokens, n, dtype=pl.Int64, eager=True)
    for i, leaf in enumerate(template.leaves):
        s = chunk[f"__leaf{i}"]
        evaluated[leaf.path] = s
        if leaf.path == "stream" and s.dtype == pl.Boolean and s.any():
            rows = first_rows(s.fill_null(False), offset)
            msg = f'`"stream": true` on row(s) {rows}; the Batch API cannot stream, drop `stream`'
            raise StreamingNotSupportedError(msg, rows=rows, column="stream")
        encoded.append(encode_leaf(s, leaf.path, offset))
        if leaf.path != "model":
            text = _text_parts(s)
            if text is not None:
                tokens = tokens + counter(text.cast(pl.String))
    parts = _body_parts(template, encoded)
    if "model" in evaluated:
        models = evaluated["model"]
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


def _body_parts(template: Template, encoded: list[Encoded]) -> list[str | pl.Series]:
    """A body as constant text and encoded columns, in order."""
    parts: list[str | pl.Series] = []
    pieces: list[Encoded | None] = [*encoded, None]
    closing = ""  # the quote that ends the previous string leaf
    for frag, piece in zip(template.fragments, pieces, strict=True):
        literal = closing + frag + ('"' if piece is not None and piece.quoted else "")
        if literal:
            parts.append(literal)
        if piece is not None:
            parts.append(piece.values)
            closing = '"' if piece.quoted else ""
    return parts


def _concat(parts: list[str | pl.Series]) -> pl.Series:
    """Row-wise concatenation of constant text and columns (adjacent texts merged)."""
    merged: list[str | pl.Series] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return pl.select(pl.concat_str([pl.lit(p) for p in merged])).to_series()


def _lines(endpoint: str, id_chars: pl.Series, body: list[str | pl.Series]) -> list[pl.Series]:
    """``line`` (the final JSONL line, newline included), ``n_bytes`` and ``body_start``.

    ``id_chars`` are the ids already escaped for use inside JSON quotes.
    """
    head, mid, tail = line_affixes(endpoint)
    line = _concat([head + '"', id_chars, '"' + mid, *body, tail]).alias("line")
    start = id_chars.str.len_chars().cast(pl.Int64) + len(head + '""' + mid)
    return [line, line.str.len_bytes().cast(pl.Int64).alias("n_bytes"), start.alias("body_start")]


def build_requests(
    frame: pl.DataFrame | pl.LazyFrame | pa.Table,
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
        The input table: ``pl.DataFrame``, ``pl.LazyFrame`` or ``pa.Table`` (same result).
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
        the byte limit, text that is not UTF-8, an unknown endpoint.

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
    model = body_dict.get("model")
    if model is None or (isinstance(model, str) and not model):
        msg = f"the body template needs a `model` (a name or an expression) for {endpoint}"
        raise TemplateError(msg, column="model")
    template = compile_template(body_dict)
    lf = _to_lazy(frame)
    names = list(lf.collect_schema().names())
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
    selects = [leaf.expr.alias(f"__leaf{i}") for i, leaf in enumerate(template.leaves)]
    if id_expr is not None:
        selects.append(id_expr.alias("__cid"))
    if not selects:
        selects = [pl.len().alias("__n")]
    evaluated = lf.select(selects).collect()
    if not template.leaves and id_expr is None:
        msg = "a template without expressions needs `custom_id` (or at least one expression)"
        raise TemplateError(msg)
    escape_ids = False
    if id_expr is not None:
        raw_ids = evaluated["__cid"]
        ids = _custom_ids(raw_ids)
        evaluated = evaluated.with_columns(ids.alias("__cid"))
        # Integers as text never need escaping; other ids are checked once, here.
        escape_ids = not raw_ids.dtype.is_integer() and _ids_need_escaping(ids)
    model_name = model if isinstance(model, str) else None
    resolved = "exact" if tokenizer == "exact" else tokenizer
    counter = _tokens.resolve(resolved, model_name)
    const = template.const_text
    const_tokens = _tokens.REQUEST_OVERHEAD + _message_overhead(body_dict)
    if const:
        const_tokens += int(counter(pl.Series(const, dtype=pl.String)).sum())
    chunks = [
        (evaluated.slice(o, CHUNK_ROWS), o) for o in range(0, max(evaluated.height, 1), CHUNK_ROWS)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = [
            pool.submit(
                _encode_chunk,
                c,
                o,
                template,
                body_dict,
                endpoint,
                counter,
                const_tokens,
                escape_ids,
            )
            for c, o in chunks
        ]
        parts = [f.result() for f in futures]
    out = pl.concat(parts, rechunk=False)
    if id_expr is None:
        ids = _content_ids(out["body"])  # hex and digits: nothing to escape
        out = out.with_columns(ids, *_lines(endpoint, ids, [out["body"]]))
    requests = Requests(
        endpoint=endpoint,
        lines=out["line"],
        meta=out.select(list(META_SCHEMA)).cast(META_SCHEMA),  # type: ignore[arg-type]
        json_schema=json_schema,
        response_model=response_model,
        tokenizer="exact" if counter is not _tokens.estimate_tokens else "estimate",
    )
    # Refuse lines that could never be uploaded, even before a plan is asked for.
    check_rows(requests._meta, BatchLimits(), embeddings=False)
    return requests


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
