"""Per-row checks of a template's expression leaves, on each chunk of evaluated values.

Each check looks at the column's dtype first (once per chunk) and at its values only
where the schema constrains them (an empty string, a list length, a role), vectorised.
Nulls are left to the encoder's null check, which names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import polars as pl

from batchframe._encode import first_rows
from batchframe._request_schema import CHAT_PART_TYPES, MAX_EMBEDDING_INPUTS_PER_REQUEST
from batchframe.exceptions import InvalidBodyError

#: A per-row check: ``fn(values, offset)`` raises, naming rows from ``offset`` on.
CheckFn = Callable[[pl.Series, int], None]

#: Text, as the encoder takes it (binary is decoded as UTF-8 there, or refused).
_TEXT_DTYPES = (pl.String, pl.Categorical, pl.Binary)


def fail(message: str, path: str, rows: list[int] | None = None) -> InvalidBodyError:
    """The error for a body the endpoint refuses, at template path ``path``."""
    return InvalidBodyError(message, rows=rows or (), column=path)


def is_text_dtype(dtype: Any) -> bool:
    """Whether a leaf of this dtype becomes a JSON string."""
    return dtype in _TEXT_DTYPES or isinstance(dtype, pl.Enum)


def empty_text(s: pl.Series) -> pl.Series:
    """Per row: the text (or binary) value is empty."""
    if s.dtype == pl.Binary:
        return s.bin.size() == 0
    return s.cast(pl.String).str.len_bytes() == 0


def text_in(s: pl.Series, allowed: tuple[str, ...]) -> pl.Series:
    """Per row: the value is one of ``allowed``.

    Binary that is not UTF-8 passes here: the encoder refuses it, naming the rows.
    """
    if s.dtype == pl.Binary:
        try:
            s = s.cast(pl.String)
        except pl.exceptions.PolarsError:
            return pl.repeat(True, len(s), eager=True)
    return s.cast(pl.String).is_in(allowed)


def describe(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Struct):
        return f"a struct column ({dtype})"
    if isinstance(dtype, (pl.List, pl.Array)):
        return f"a list column ({dtype})"
    return f"a column of type {dtype}"


@dataclass(frozen=True)
class LeafCheck:
    """A check of one expression leaf, run on each chunk of its evaluated values.

    ``fn(values, offset)`` raises :class:`InvalidBodyError` naming the rows (their
    position in the whole input: ``offset`` is the chunk's first row).
    """

    path: str
    fn: CheckFn

    def __call__(self, values: pl.Series, offset: int) -> None:
        """Check one chunk of the leaf's values (nulls are left to the null check)."""
        if values.dtype == pl.Null:
            return
        self.fn(values, offset)


def refuse_rows(mask: pl.Series, offset: int, path: str, what: str, todo: str) -> None:
    mask = mask.fill_null(False)
    if mask.any():
        rows = first_rows(mask, offset)
        n = int(mask.sum())
        msg = f"`{path}` {what} on {n} row(s), first at row(s) {rows}; {todo}"
        raise fail(msg, path, rows)


def refuse_dtype(path: str, dtype: pl.DataType, expected: str, todo: str) -> NoReturn:
    msg = f"`{path}` must be {expected}, but its expression gives {describe(dtype)}; {todo}"
    raise fail(msg, path)


def check_model(s: pl.Series, offset: int) -> None:
    if not is_text_dtype(s.dtype):
        refuse_dtype("model", s.dtype, "text (a model name)", "cast it to text")
    empty = empty_text(s)
    refuse_rows(empty, offset, "model", "is empty", "give every row a model name")


def check_text(path: str, *, non_empty: bool) -> CheckFn:
    def check(s: pl.Series, offset: int) -> None:
        if not is_text_dtype(s.dtype):
            refuse_dtype(path, s.dtype, "text", "cast it to text")
        if non_empty:
            empty = empty_text(s)
            refuse_rows(empty, offset, path, "is an empty string", "drop or fill those rows")

    return check


def check_choice(path: str, allowed: tuple[str, ...]) -> CheckFn:
    def check(s: pl.Series, offset: int) -> None:
        if not is_text_dtype(s.dtype):
            refuse_dtype(path, s.dtype, f"one of {list(allowed)}", "cast it to text")
        bad = ~text_in(s, allowed)
        refuse_rows(bad, offset, path, f"is not one of {list(allowed)}", "fix those values")

    return check


def check_number(path: str, spec: tuple[bool, float | None, float | None]) -> LeafCheck:
    integer, lo, hi = spec

    def check(s: pl.Series, offset: int) -> None:
        ok = s.dtype.is_integer() or (
            not integer and (s.dtype.is_float() or isinstance(s.dtype, pl.Decimal))
        )
        if not ok:
            kind = "an integer" if integer else "a number"
            refuse_dtype(path, s.dtype, kind, "cast it, e.g. `.cast(pl.Int64)`")
        if s.dtype.is_float():
            s = s.fill_nan(None)  # NaN is refused by the encoder, naming it
        if lo is not None:
            refuse_rows(s < lo, offset, path, f"is below {lo}", f"use values >= {lo}")
        if hi is not None:
            refuse_rows(s > hi, offset, path, f"is above {hi}", f"use values <= {hi}")

    return LeafCheck(path, check)


def parts_dtype_ok(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.List, pl.Array)) and (
        isinstance(dtype.inner, pl.Struct) and "type" in {f.name for f in dtype.inner.fields}
    )


def check_content(path: str, part_types: tuple[str, ...]) -> CheckFn:
    """Chat message content: text, or a list of parts (structs with a ``type``)."""

    def check(s: pl.Series, offset: int) -> None:
        if is_text_dtype(s.dtype):
            return
        if not parts_dtype_ok(s.dtype):
            refuse_dtype(
                path,
                s.dtype,
                'text or a list of content parts (structs with a "type", e.g. '
                '{"type": "text", "text": ...})',
                "pass a text column, or build the parts with `pl.concat_list(pl.struct(...))`",
            )
        lst = s.cast(pl.List(s.dtype.inner)) if isinstance(s.dtype, pl.Array) else s
        bad = lst.list.eval(~pl.element().struct.field("type").is_in(part_types)).list.any()
        refuse_rows(
            bad,
            offset,
            path,
            f"has a part whose type is not one of {list(part_types)}",
            "fix those parts",
        )

    return check


def struct_fields(dtype: Any) -> set[str]:
    return {f.name for f in dtype.fields} if isinstance(dtype, pl.Struct) else set()


def check_messages_struct(path: str, s: pl.Series, offset: int, roles: tuple[str, ...]) -> None:
    """``s``: one message per row (a struct with ``role`` and ``content``)."""
    fields = struct_fields(s.dtype)
    if "role" not in fields:
        msg = f"`{path}` must be a message struct with a `role` field, got {describe(s.dtype)}; build it with `pl.struct(role=..., content=...)`"
        raise fail(msg, path)
    check_choice(f"{path}.role", roles)(s.struct.field("role"), offset)
    if "content" in fields:
        check_content(f"{path}.content", CHAT_PART_TYPES)(s.struct.field("content"), offset)
    elif "tool_calls" not in fields:
        msg = (
            f"`{path}` has no `content` field; every message but an assistant's tool call needs one"
        )
        raise fail(msg, path)


def check_message(path: str, roles: tuple[str, ...]) -> CheckFn:
    def check(s: pl.Series, offset: int) -> None:
        check_messages_struct(path, s, offset, roles)

    return check


def check_message_list(path: str, roles: tuple[str, ...]) -> CheckFn:
    """A whole ``messages`` list per row: a list of message structs."""

    def check(s: pl.Series, offset: int) -> None:
        dtype = s.dtype
        if not isinstance(dtype, (pl.List, pl.Array)) or "role" not in struct_fields(dtype.inner):
            refuse_dtype(
                path,
                dtype,
                "a list of message structs with `role` and `content`",
                "build it with `pl.concat_list(pl.struct(role=..., content=...))`",
            )
        if isinstance(dtype, pl.Array):
            s = s.cast(pl.List(dtype.inner))
        fields = struct_fields(dtype.inner)
        if "content" in fields:
            content = dtype.inner.fields[[f.name for f in dtype.inner.fields].index("content")]  # type: ignore[union-attr]
            if not (is_text_dtype(content.dtype) or parts_dtype_ok(content.dtype)):
                refuse_dtype(
                    f"{path}[].content",
                    content.dtype,
                    "text or a list of content parts",
                    "make `content` a text field",
                )
        else:
            msg = f"`{path}` holds messages without a `content` field; add one"
            raise fail(msg, path)
        empty = s.list.len() == 0
        refuse_rows(empty, offset, path, "is an empty list", "give every row at least one message")
        ok = s.list.eval(pl.element().struct.field("role").cast(pl.String).is_in(roles)).list.all()
        refuse_rows(
            ~ok, offset, f"{path}[].role", f"is not one of {list(roles)}", "fix those roles"
        )

    return check


def check_embedding_input(s: pl.Series, offset: int) -> None:
    path = "input"
    dtype = s.dtype
    limit = MAX_EMBEDDING_INPUTS_PER_REQUEST
    if is_text_dtype(dtype):
        empty = empty_text(s)
        refuse_rows(
            empty,
            offset,
            path,
            "is an empty string",
            "the API refuses empty inputs: drop or fill those rows",
        )
        return
    if isinstance(dtype, (pl.List, pl.Array)):
        inner = dtype.inner
        lst = s.cast(pl.List(inner)) if isinstance(dtype, pl.Array) else s
        n = lst.list.len()
        if is_text_dtype(inner):
            refuse_rows(
                n == 0, offset, path, "is an empty list", "give every row at least one input"
            )
            refuse_rows(
                n > limit,
                offset,
                path,
                f"has more than {limit:,} inputs",
                f"split those rows (the API takes at most {limit:,} inputs per request)",
            )
            empty = lst.list.eval(pl.element().cast(pl.String).str.len_bytes() == 0).list.any()
            refuse_rows(
                empty,
                offset,
                path,
                "holds an empty string",
                "the API refuses empty inputs: drop them",
            )
            return
        if inner.is_integer():  # one input as token ids
            refuse_rows(n == 0, offset, path, "is an empty token list", "drop those rows")
            return
        if isinstance(inner, (pl.List, pl.Array)) and inner.inner.is_integer():
            refuse_rows(
                n == 0, offset, path, "is an empty list", "give every row at least one input"
            )
            refuse_rows(
                n > limit,
                offset,
                path,
                f"has more than {limit:,} inputs",
                f"split those rows (the API takes at most {limit:,} inputs per request)",
            )
            return
    refuse_dtype(
        path,
        dtype,
        "text, a list of texts, or token ids (a list of integers, or of lists of integers)",
        "cast it to text first",
    )


def check_part(path: str, types: tuple[str, ...]) -> CheckFn:
    def check(s: pl.Series, offset: int) -> None:
        if "type" not in struct_fields(s.dtype):
            refuse_dtype(
                path,
                s.dtype,
                'a content part (a struct with a "type")',
                'build it with `pl.struct(type=pl.lit("text"), text=...)`',
            )
        check_choice(f"{path}.type", types)(s.struct.field("type"), offset)

    return check
