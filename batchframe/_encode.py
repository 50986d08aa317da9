"""Body templates into JSON text, vectorised.

A template is split once into constant JSON fragments and expression leaves. Each row's
body is then ``fragment0 + leaf0 + fragment1 + ... + fragmentN``, where every leaf is a
column encoded to JSON by Polars' own JSON writer (text, numbers, booleans and flat
lists; nested values fall back to the stdlib encoder, strict about NaN). Nothing is
serialised per row in Python, and each request is encoded exactly once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from batchframe.exceptions import EncodingError, NullValueError, TemplateError

SHOWN_ROWS = 5


@dataclass(frozen=True)
class Leaf:
    """One expression in a template, with where it sits (``messages[1].content``)."""

    path: str
    expr: pl.Expr


@dataclass
class Template:
    """A body template split into constant JSON fragments around expression leaves."""

    fragments: list[str] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    const_text: list[str] = field(default_factory=list)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def compile_template(body: Any) -> Template:
    """Split a template into fragments and leaves, validating its constants."""
    t = Template()
    buf: list[str] = []

    def flush() -> None:
        t.fragments.append("".join(buf))
        buf.clear()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, pl.Expr):
            flush()
            t.leaves.append(Leaf(path or "body", node))
        elif isinstance(node, dict):
            buf.append("{")
            for i, (key, value) in enumerate(node.items()):
                if not isinstance(key, str):
                    msg = f"template keys must be strings; `{path or 'body'}` has key {key!r}"
                    raise TemplateError(msg, column=path or "body")
                buf.append(("," if i else "") + _dumps(key) + ":")
                walk(value, f"{path}.{key}" if path else key)
            buf.append("}")
        elif isinstance(node, (list, tuple)):
            buf.append("[")
            for i, value in enumerate(node):
                if i:
                    buf.append(",")
                walk(value, f"{path}[{i}]")
            buf.append("]")
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as e:
                msg = f"template text at `{path}` is not valid UTF-8 ({e.reason}); fix the string"
                raise EncodingError(msg, column=path) from None
            if path != "model":
                t.const_text.append(node)
            buf.append(_dumps(node))
        elif node is None or isinstance(node, (bool, int)):
            buf.append(_dumps(node))
        elif isinstance(node, float):
            if not math.isfinite(node):
                msg = f"template value at `{path}` is {node}, which JSON cannot carry"
                raise TemplateError(msg, column=path)
            buf.append(_dumps(node))
        else:
            msg = (
                f"template value at `{path or 'body'}` is a {type(node).__name__}; use JSON "
                "material (dict, list, str, int, float, bool, None) or a Polars expression"
            )
            raise TemplateError(msg, column=path or "body")

    walk(body, "")
    flush()
    return t


def escape_json_chars(s: pl.Series) -> pl.Series:
    """Escape every value of a String series for use inside JSON quotes (no quotes added).

    Polars' own JSON writer escapes about 2x faster than finding and replacing special
    characters with string kernels; the one-field wrapper it adds is cut off again.
    """
    return _polars_json(s, '"', '"').alias(s.name)


def escape_json_string(s: pl.Series) -> pl.Series:
    """JSON-quote every value of a String series (``"..."`` with escapes)."""
    return _wrap(escape_json_chars(s), '"', '"')


@dataclass(frozen=True)
class Encoded:
    """A leaf column as JSON text; ``quoted`` means the quotes are still to be added.

    Leaving the quotes to the surrounding template fragments saves one pass over the
    text of every string leaf.
    """

    values: pl.Series
    quoted: bool = False


def _wrap(s: pl.Series, left: str, right: str) -> pl.Series:
    return pl.select(pl.concat_str([pl.lit(left), pl.lit(s), pl.lit(right)])).to_series()


def first_rows(mask: pl.Series, offset: int) -> list[int]:
    """Positions (with ``offset`` added) of the first few true values of ``mask``."""
    return [int(i) + offset for i in mask.arg_true().head(SHOWN_ROWS)]


def _rows_text(rows: list[int]) -> str:
    return str(rows)


def encode_leaf(s: pl.Series, path: str, offset: int) -> Encoded:
    """Encode one evaluated leaf column into JSON text; refuse nulls and non-JSON values."""
    if s.dtype == pl.String:
        _check_nulls(s, path, offset)
        return Encoded(escape_json_chars(s), quoted=True)
    return Encoded(_encode_value(s, path, offset))


def _check_nulls(s: pl.Series, path: str, offset: int) -> bool:
    if s.null_count():
        rows = first_rows(s.is_null(), offset)
        msg = (
            f"template leaf `{path}` is null on {s.null_count()} row(s), first at row(s) "
            f"{_rows_text(rows)}; fill or drop them first (e.g. `.fill_null(...)` or "
            "`.drop_nulls(...)`)"
        )
        raise NullValueError(msg, rows=rows, column=path)
    return True


def _encode_value(s: pl.Series, path: str, offset: int) -> pl.Series:
    _check_nulls(s, path, offset)
    dtype: pl.DataType = s.dtype
    if dtype == pl.Binary:
        s = _decode_utf8(s, path, offset)
        dtype = s.dtype
    if dtype in (pl.Categorical,) or isinstance(dtype, pl.Enum):
        s = s.cast(pl.String)
        dtype = s.dtype
    if dtype == pl.String:
        return escape_json_string(s)
    if dtype == pl.Boolean or dtype.is_integer() or isinstance(dtype, pl.Decimal):
        return s.cast(pl.String)
    if dtype.is_float():
        _refuse_non_finite(~s.is_finite(), path, offset)
        return s.cast(pl.String)
    if isinstance(dtype, (pl.Date, pl.Datetime, pl.Time, pl.Duration)):
        return escape_json_string(s.cast(pl.String))
    if isinstance(dtype, (pl.List, pl.Array)):
        return _encode_list(s, path, offset)
    return _encode_nested(s, path, offset)


def _decode_utf8(s: pl.Series, path: str, offset: int) -> pl.Series:
    try:
        return s.cast(pl.String)
    except pl.exceptions.PolarsError:
        pass
    bad = []
    for i, value in enumerate(s.to_list()):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i + offset)
            if len(bad) >= SHOWN_ROWS:
                break
    msg = (
        f"template leaf `{path}` holds bytes that are not valid UTF-8 at row(s) "
        f"{_rows_text(bad)}; decode them to text (or drop those rows) first"
    )
    raise EncodingError(msg, rows=bad, column=path)


def _encode_list(s: pl.Series, path: str, offset: int) -> pl.Series:
    assert isinstance(s.dtype, (pl.List, pl.Array))
    inner = s.dtype.inner
    if isinstance(s.dtype, pl.Array):
        s = s.cast(pl.List(inner))
    has_null = s.list.eval(pl.element().is_null().any()).list.first()
    if has_null.any():
        rows = first_rows(has_null, offset)
        msg = (
            f"template leaf `{path}` is a list with null elements at row(s) "
            f"{_rows_text(rows)}; fill or drop them first"
        )
        raise NullValueError(msg, rows=rows, column=path)
    if inner.is_float():
        _refuse_non_finite(s.list.eval(~pl.element().is_finite().all()).list.first(), path, offset)
    if inner == pl.String or inner == pl.Boolean or inner.is_integer() or inner.is_float():
        return _polars_json(s, "", "")
    return _encode_nested(s, path, offset)


def _refuse_non_finite(bad: pl.Series, path: str, offset: int) -> None:
    if bad.any():
        rows = first_rows(bad, offset)
        msg = (
            f"template leaf `{path}` holds NaN or infinity at row(s) {_rows_text(rows)}, "
            "which JSON cannot carry; replace them first"
        )
        raise TemplateError(msg, rows=rows, column=path)


def _polars_json(s: pl.Series, open_quote: str, close_quote: str) -> pl.Series:
    """Each value as JSON, written by Polars (``{"s":<value>}`` with the wrapper cut off).

    ``open_quote``/``close_quote`` (``'"'``) also cut a string's own quotes.
    """
    return pl.select(polars_json_expr(pl.lit(s), open_quote, close_quote)).to_series()


def polars_json_expr(e: pl.Expr, open_quote: str = "", close_quote: str = "") -> pl.Expr:
    """The expression behind :func:`_polars_json` (and :func:`escape_json_chars`, with ``'"'``).

    The wrapper is cut by position (its text is ASCII and always there): about twice as
    fast as ``strip_prefix``/``strip_suffix``.
    """
    prefix, suffix = '{"s":' + open_quote, close_quote + "}"
    return (
        pl.struct(e.alias("s")).struct.json_encode().str.slice(len(prefix)).str.head(-len(suffix))
    )


def _encode_nested(s: pl.Series, path: str, offset: int) -> pl.Series:
    """Fallback for structs, nested lists and float lists: the stdlib encoder per row.

    Rare in practice (prompts are text); strict about NaN, which JSON cannot carry.
    """
    out = []
    for i, value in enumerate(s.to_list()):
        try:
            out.append(_dumps(value))
        except (TypeError, ValueError) as e:
            msg = f"template leaf `{path}` at row {i + offset} cannot become JSON: {e}"
            raise TemplateError(msg, rows=[i + offset], column=path) from None
    return pl.Series(s.name, out, dtype=pl.String)
