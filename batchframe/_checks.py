"""Request-shape checks: refuse, before anything is written, what the API refuses per line.

The Batch API validates each line's ``body`` only when the line runs, so a body the
endpoint cannot take (an embeddings body on the chat endpoint, an empty ``messages``
list, 2,049 embedding inputs, a struct where ``content`` must be text) is accepted at
upload and fails row by row hours later. These checks follow the official request
schemas: the required and known keys below are those of the ``openai`` package's
``*CreateParams`` TypedDicts (``tests/test_request_checks.py`` compares them with the
installed package, which is never imported here: it is slow to import).

The template is checked once, where it is constant; only expression leaves are checked
per row, vectorised, chunk by chunk (``LeafCheck``), in both the in-memory and the
streamed build. ``batchframe._server._validate`` refuses the same bodies on the local
server, line by line, with the API's error codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import polars as pl

from batchframe._encode import first_rows
from batchframe.exceptions import InputError, InvalidBodyError

__all__ = [
    "CHAT_ROLES",
    "KNOWN_KEYS",
    "MAX_EMBEDDING_INPUTS_PER_REQUEST",
    "REQUIRED_KEYS",
    "RESPONSES_ROLES",
    "LeafCheck",
    "check_template",
    "name_custom_ids",
]

# -- tables from the official request schemas ------------------------------------------

#: Keys a body must have (``Required[...]`` in the openai TypedDicts; ``model`` is
#: required by the Batch API on every endpoint, and image edits take the JSON
#: ``images`` list in a batch instead of the multipart ``image``).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/responses": ("model",),
    "/v1/embeddings": ("model", "input"),
    "/v1/completions": ("model", "prompt"),
    "/v1/moderations": ("model", "input"),
    "/v1/images/generations": ("model", "prompt"),
    "/v1/images/edits": ("model", "prompt", "images"),
}

#: Every key of each endpoint's create params (openai 3.57), plus ``stream``.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "/v1/chat/completions": frozenset(
        [
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "messages",
            "metadata",
            "modalities",
            "model",
            "moderation",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        ]
    ),
    "/v1/responses": frozenset(
        [
            "access_programs",
            "background",
            "background_options",
            "context_management",
            "conversation",
            "image",
            "include",
            "input",
            "instructions",
            "max_output_tokens",
            "max_tool_calls",
            "metadata",
            "model",
            "moderation",
            "parallel_tool_calls",
            "previous_response_id",
            "prompt",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "reasoning",
            "safety_identifier",
            "service_tier",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "truncation",
            "user",
        ]
    ),
    "/v1/embeddings": frozenset(["dimensions", "encoding_format", "input", "model", "user"]),
    "/v1/completions": frozenset(
        [
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "max_tokens",
            "model",
            "n",
            "presence_penalty",
            "prompt",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "suffix",
            "temperature",
            "top_p",
            "user",
        ]
    ),
    "/v1/moderations": frozenset(("input", "model")),
    "/v1/images/generations": frozenset(
        [
            "background",
            "complexity",
            "frame_count",
            "frame_duration_ms",
            "model",
            "moderation",
            "n",
            "output_compression",
            "output_format",
            "partial_images",
            "prompt",
            "quality",
            "response_format",
            "safety_identifier",
            "size",
            "stream",
            "style",
            "svg",
            "user",
        ]
    ),
    "/v1/images/edits": frozenset(
        [
            "background",
            "complexity",
            "frame_count",
            "frame_duration_ms",
            "images",
            "input_fidelity",
            "markup",
            "mask",
            "model",
            "n",
            "output_compression",
            "output_format",
            "partial_images",
            "prompt",
            "quality",
            "response_format",
            "safety_identifier",
            "size",
            "stream",
            "svg",
            "user",
        ]
    ),
}

#: ``messages[].role`` of chat, and the keys each role requires besides ``role``.
CHAT_ROLES: dict[str, tuple[str, ...]] = {
    "developer": ("content",),
    "system": ("content",),
    "user": ("content",),
    "assistant": (),
    "tool": ("content", "tool_call_id"),
    "function": ("content", "name"),
}
#: ``type`` of a chat content part.
CHAT_PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
#: ``role`` of a responses input message.
RESPONSES_ROLES = ("user", "assistant", "system", "developer")
#: "any array must be 2048 dimensions or less" (``EmbeddingCreateParams.input``).
MAX_EMBEDDING_INPUTS_PER_REQUEST = 2048
ENCODING_FORMATS = ("float", "base64")

#: Numeric parameters: (integer only, minimum, maximum), as the API enforces them.
NUMBERS: dict[str, tuple[bool, float | None, float | None]] = {
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "frequency_penalty": (False, -2, 2),
    "presence_penalty": (False, -2, 2),
    "n": (True, 1, 128),
    "max_tokens": (True, 1, None),
    "max_completion_tokens": (True, 1, None),
    "max_output_tokens": (True, 1, None),
    "top_logprobs": (True, 0, 20),
    "dimensions": (True, 1, None),
    "seed": (True, None, None),
    "best_of": (True, 0, 20),
}


def number_specs(endpoint: str) -> dict[str, tuple[bool, float | None, float | None]]:
    """:data:`NUMBERS` as ``endpoint`` enforces them.

    Legacy completions take ``max_tokens=0`` (with ``echo``, to score a prompt).
    """
    if endpoint == "/v1/completions":
        return {**NUMBERS, "max_tokens": (True, 0, None)}
    return NUMBERS


#: Text, as the encoder takes it (binary is decoded as UTF-8 there, or refused).
_TEXT_DTYPES = (pl.String, pl.Categorical, pl.Binary)


def _fail(message: str, path: str, rows: list[int] | None = None) -> InvalidBodyError:
    return InvalidBodyError(message, rows=rows or (), column=path)


def _is_text_dtype(dtype: Any) -> bool:
    return dtype in _TEXT_DTYPES or isinstance(dtype, pl.Enum)


def _empty_text(s: pl.Series) -> pl.Series:
    """Per row: the text (or binary) value is empty."""
    if s.dtype == pl.Binary:
        return s.bin.size() == 0
    return s.cast(pl.String).str.len_bytes() == 0


def _text_in(s: pl.Series, allowed: tuple[str, ...]) -> pl.Series:
    """Per row: the value is one of ``allowed``.

    Binary that is not UTF-8 passes here: the encoder refuses it, naming the rows.
    """
    if s.dtype == pl.Binary:
        try:
            s = s.cast(pl.String)
        except pl.exceptions.PolarsError:
            return pl.repeat(True, len(s), eager=True)
    return s.cast(pl.String).is_in(allowed)


def _describe(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Struct):
        return f"a struct column ({dtype})"
    if isinstance(dtype, (pl.List, pl.Array)):
        return f"a list column ({dtype})"
    return f"a column of type {dtype}"


def _const_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", tuple: "a list", dict: "a dict", type(None): "None"}
    return names.get(type(value), type(value).__name__)


# -- per-row checks of expression leaves ----------------------------------------------


@dataclass(frozen=True)
class LeafCheck:
    """A check of one expression leaf, run on each chunk of its evaluated values.

    ``fn(values, offset)`` raises :class:`InvalidBodyError` naming the rows (their
    position in the whole input: ``offset`` is the chunk's first row).
    """

    path: str
    fn: Callable[[pl.Series, int], None]

    def __call__(self, values: pl.Series, offset: int) -> None:
        """Check one chunk of the leaf's values (nulls are left to the null check)."""
        if values.dtype == pl.Null:
            return
        self.fn(values, offset)


def _refuse_rows(mask: pl.Series, offset: int, path: str, what: str, todo: str) -> None:
    mask = mask.fill_null(False)
    if mask.any():
        rows = first_rows(mask, offset)
        n = int(mask.sum())
        msg = f"`{path}` {what} on {n} row(s), first at row(s) {rows}; {todo}"
        raise _fail(msg, path, rows)


def _refuse_dtype(path: str, dtype: pl.DataType, expected: str, todo: str) -> NoReturn:
    msg = f"`{path}` must be {expected}, but its expression gives {_describe(dtype)}; {todo}"
    raise _fail(msg, path)


def _check_model(s: pl.Series, offset: int) -> None:
    if not _is_text_dtype(s.dtype):
        _refuse_dtype("model", s.dtype, "text (a model name)", "cast it to text")
    empty = _empty_text(s)
    _refuse_rows(empty, offset, "model", "is empty", "give every row a model name")


def _check_text(path: str, *, non_empty: bool) -> Callable[[pl.Series, int], None]:
    def check(s: pl.Series, offset: int) -> None:
        if not _is_text_dtype(s.dtype):
            _refuse_dtype(path, s.dtype, "text", "cast it to text")
        if non_empty:
            empty = _empty_text(s)
            _refuse_rows(empty, offset, path, "is an empty string", "drop or fill those rows")

    return check


def _check_choice(path: str, allowed: tuple[str, ...]) -> Callable[[pl.Series, int], None]:
    def check(s: pl.Series, offset: int) -> None:
        if not _is_text_dtype(s.dtype):
            _refuse_dtype(path, s.dtype, f"one of {list(allowed)}", "cast it to text")
        bad = ~_text_in(s, allowed)
        _refuse_rows(bad, offset, path, f"is not one of {list(allowed)}", "fix those values")

    return check


def _check_number(path: str, spec: tuple[bool, float | None, float | None]) -> LeafCheck:
    integer, lo, hi = spec

    def check(s: pl.Series, offset: int) -> None:
        ok = s.dtype.is_integer() or (
            not integer and (s.dtype.is_float() or isinstance(s.dtype, pl.Decimal))
        )
        if not ok:
            kind = "an integer" if integer else "a number"
            _refuse_dtype(path, s.dtype, kind, "cast it, e.g. `.cast(pl.Int64)`")
        if s.dtype.is_float():
            s = s.fill_nan(None)  # NaN is refused by the encoder, naming it
        if lo is not None:
            _refuse_rows(s < lo, offset, path, f"is below {lo}", f"use values >= {lo}")
        if hi is not None:
            _refuse_rows(s > hi, offset, path, f"is above {hi}", f"use values <= {hi}")

    return LeafCheck(path, check)


def _parts_dtype_ok(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.List, pl.Array)) and (
        isinstance(dtype.inner, pl.Struct) and "type" in {f.name for f in dtype.inner.fields}
    )


def _check_content(path: str, part_types: tuple[str, ...]) -> Callable[[pl.Series, int], None]:
    """Chat message content: text, or a list of parts (structs with a ``type``)."""

    def check(s: pl.Series, offset: int) -> None:
        if _is_text_dtype(s.dtype):
            return
        if not _parts_dtype_ok(s.dtype):
            _refuse_dtype(
                path,
                s.dtype,
                'text or a list of content parts (structs with a "type", e.g. '
                '{"type": "text", "text": ...})',
                "pass a text column, or build the parts with `pl.concat_list(pl.struct(...))`",
            )
        lst = s.cast(pl.List(s.dtype.inner)) if isinstance(s.dtype, pl.Array) else s
        bad = lst.list.eval(~pl.element().struct.field("type").is_in(part_types)).list.any()
        _refuse_rows(
            bad,
            offset,
            path,
            f"has a part whose type is not one of {list(part_types)}",
            "fix those parts",
        )

    return check


def _struct_fields(dtype: Any) -> set[str]:
    return {f.name for f in dtype.fields} if isinstance(dtype, pl.Struct) else set()


def _check_messages_struct(path: str, s: pl.Series, offset: int, roles: tuple[str, ...]) -> None:
    """``s``: one message per row (a struct with ``role`` and ``content``)."""
    fields = _struct_fields(s.dtype)
    if "role" not in fields:
        msg = f"`{path}` must be a message struct with a `role` field, got {_describe(s.dtype)}; build it with `pl.struct(role=..., content=...)`"
        raise _fail(msg, path)
    _check_choice(f"{path}.role", roles)(s.struct.field("role"), offset)
    if "content" in fields:
        _check_content(f"{path}.content", CHAT_PART_TYPES)(s.struct.field("content"), offset)
    elif "tool_calls" not in fields:
        msg = (
            f"`{path}` has no `content` field; every message but an assistant's tool call needs one"
        )
        raise _fail(msg, path)


def _check_message(path: str, roles: tuple[str, ...]) -> Callable[[pl.Series, int], None]:
    def check(s: pl.Series, offset: int) -> None:
        _check_messages_struct(path, s, offset, roles)

    return check


def _check_message_list(path: str, roles: tuple[str, ...]) -> Callable[[pl.Series, int], None]:
    """A whole ``messages`` list per row: a list of message structs."""

    def check(s: pl.Series, offset: int) -> None:
        dtype = s.dtype
        if not isinstance(dtype, (pl.List, pl.Array)) or "role" not in _struct_fields(dtype.inner):
            _refuse_dtype(
                path,
                dtype,
                "a list of message structs with `role` and `content`",
                "build it with `pl.concat_list(pl.struct(role=..., content=...))`",
            )
        if isinstance(dtype, pl.Array):
            s = s.cast(pl.List(dtype.inner))
        fields = _struct_fields(dtype.inner)
        if "content" in fields:
            content = dtype.inner.fields[[f.name for f in dtype.inner.fields].index("content")]  # type: ignore[union-attr]
            if not (_is_text_dtype(content.dtype) or _parts_dtype_ok(content.dtype)):
                _refuse_dtype(
                    f"{path}[].content",
                    content.dtype,
                    "text or a list of content parts",
                    "make `content` a text field",
                )
        else:
            msg = f"`{path}` holds messages without a `content` field; add one"
            raise _fail(msg, path)
        empty = s.list.len() == 0
        _refuse_rows(empty, offset, path, "is an empty list", "give every row at least one message")
        ok = s.list.eval(pl.element().struct.field("role").cast(pl.String).is_in(roles)).list.all()
        _refuse_rows(
            ~ok, offset, f"{path}[].role", f"is not one of {list(roles)}", "fix those roles"
        )

    return check


def _embedding_check(s: pl.Series, offset: int) -> None:
    path = "input"
    dtype = s.dtype
    limit = MAX_EMBEDDING_INPUTS_PER_REQUEST
    if _is_text_dtype(dtype):
        empty = _empty_text(s)
        _refuse_rows(
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
        if _is_text_dtype(inner):
            _refuse_rows(
                n == 0, offset, path, "is an empty list", "give every row at least one input"
            )
            _refuse_rows(
                n > limit,
                offset,
                path,
                f"has more than {limit:,} inputs",
                f"split those rows (the API takes at most {limit:,} inputs per request)",
            )
            empty = lst.list.eval(pl.element().cast(pl.String).str.len_bytes() == 0).list.any()
            _refuse_rows(
                empty,
                offset,
                path,
                "holds an empty string",
                "the API refuses empty inputs: drop them",
            )
            return
        if inner.is_integer():  # one input as token ids
            _refuse_rows(n == 0, offset, path, "is an empty token list", "drop those rows")
            return
        if isinstance(inner, (pl.List, pl.Array)) and inner.inner.is_integer():
            _refuse_rows(
                n == 0, offset, path, "is an empty list", "give every row at least one input"
            )
            _refuse_rows(
                n > limit,
                offset,
                path,
                f"has more than {limit:,} inputs",
                f"split those rows (the API takes at most {limit:,} inputs per request)",
            )
            return
    _refuse_dtype(
        path,
        dtype,
        "text, a list of texts, or token ids (a list of integers, or of lists of integers)",
        "cast it to text first",
    )


# -- the template, checked once --------------------------------------------------------

#: Adds a per-row check of the expression leaf at a path.
_Add = Callable[[str, Callable[[pl.Series, int], None]], None]


def _guess_endpoint(endpoint: str, keys: set[str]) -> str | None:
    """Another endpoint whose required keys the body has (an endpoint mix-up)."""
    # The endpoint with the most required keys present wins (a bare {model, input}
    # fits responses too, but is an embeddings body far more often).
    family = endpoint.split("/")[2]
    ranked = sorted(
        REQUIRED_KEYS.items(),
        key=lambda item: (-len(item[1]), item[0].split("/")[2] != family),
    )
    for other, required in ranked:
        if other != endpoint and set(required) <= keys and keys <= KNOWN_KEYS[other]:
            return other
    return None


#: How close an unknown key must be to a known one to be refused as a typo
#: (``max_token``, ``temprature``: 0.95; vLLM's ``top_k`` vs ``top_p``: 0.8, let through).
_TYPO_CUTOFF = 0.88


def _check_keys(endpoint: str, body: Mapping[str, Any]) -> None:
    keys = set(body)
    guess = _guess_endpoint(endpoint, keys)
    hint = (
        f"; it looks like a {guess} body: pass `endpoint={guess!r}`, or build the body "
        "with the helper for this endpoint (`bf.chat_body`, `bf.embeddings_body`, ...)"
        if guess
        else ""
    )
    for key in REQUIRED_KEYS[endpoint]:
        if key == "model":
            continue  # checked with its value below
        if key not in body:
            if endpoint == "/v1/responses":
                continue
            msg = f"the body has no `{key}`, which {endpoint} requires{hint or '; add it'}"
            raise _fail(msg, key)
    if endpoint == "/v1/responses" and not keys & {
        "input",
        "prompt",
        "previous_response_id",
        "conversation",
    }:
        msg = f"the body has no `input` (nor a stored `prompt`), which /v1/responses needs{hint or '; add it'}"
        raise _fail(msg, "input")
    known = KNOWN_KEYS[endpoint]
    for key in body:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=_TYPO_CUTOFF)
        if close:
            # Other keys are let through: a newer API or another provider may take them.
            msg = (
                f"`{key}` is not a parameter of {endpoint}: did you mean `{close[0]}`? "
                "The API refuses every line with an unknown parameter"
            )
            raise _fail(msg, key)
        owners = [e for e, k in KNOWN_KEYS.items() if key in k]
        if owners:
            msg = (
                f"`{key}` is not a parameter of {endpoint} (it belongs to "
                f"{', '.join(owners)}), and the API refuses every line that has it"
                f"{hint or f'; drop `{key}`'}"
            )
            raise _fail(msg, key)


def _check_model_const(endpoint: str, body: Mapping[str, Any], add: _Add) -> None:
    model = body.get("model")
    if isinstance(model, pl.Expr):
        add("model", _check_model)
    elif not isinstance(model, str) or not model:
        got = "nothing" if model is None else repr(model)
        msg = (
            f"the body template needs a `model` (a name or an expression) for {endpoint}, "
            f"got {got}; pass the model name as text"
        )
        raise _fail(msg, "model")


def _check_numbers(endpoint: str, body: Mapping[str, Any], add: _Add) -> None:
    for key, spec in number_specs(endpoint).items():
        if key not in body:
            continue
        value = body[key]
        if isinstance(value, pl.Expr):
            add(key, _check_number(key, spec).fn)
            continue
        integer, lo, hi = spec
        if value is None:  # null: the API's default
            continue
        ok = isinstance(value, int) or (not integer and isinstance(value, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            msg = f"`{key}` must be {kind}, got {_const_type(value)} ({value!r})"
            raise _fail(msg, key)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = (
                f"between {lo} and {hi}"
                if lo is not None and hi is not None
                else (f">= {lo}" if lo is not None else f"<= {hi}")
            )
            msg = f"`{key}` is {value!r}; the API takes values {bounds}"
            raise _fail(msg, key)


def _choice_const(path: str, value: Any, allowed: tuple[str, ...], add: _Add) -> None:
    if isinstance(value, pl.Expr):
        add(path, _check_choice(path, allowed))
    elif value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        msg = f"`{path}` is {value!r}{hint}; it must be one of {list(allowed)}"
        raise _fail(msg, path)


def _text_const(path: str, value: Any, add: _Add, *, non_empty: bool) -> None:
    if isinstance(value, pl.Expr):
        add(path, _check_text(path, non_empty=non_empty))
    elif not isinstance(value, str):
        msg = f"`{path}` must be text, got {_const_type(value)}"
        raise _fail(msg, path)
    elif non_empty and not value:
        msg = f"`{path}` is an empty string, which the API refuses; give it text"
        raise _fail(msg, path)


def _parts_const(path: str, parts: list[Any], types: tuple[str, ...], add: _Add) -> None:
    for j, part in enumerate(parts):
        where = f"{path}[{j}]"
        if isinstance(part, pl.Expr):
            add(where, _check_part(where, types))
            continue
        if not isinstance(part, dict) or "type" not in part:
            msg = (
                f'`{where}` must be a content part (a dict with a "type", e.g. {{"type": '
                f'"text", "text": ...}}), got {_const_type(part)}'
            )
            raise _fail(msg, where)
        _choice_const(f"{where}.type", part["type"], types, add)
        kind = part["type"]
        if isinstance(kind, str) and kind in ("text", "input_text") and "text" not in part:
            msg = f'`{where}` is a "{kind}" part without `text`; add it'
            raise _fail(msg, where)


def _check_part(path: str, types: tuple[str, ...]) -> Callable[[pl.Series, int], None]:
    def check(s: pl.Series, offset: int) -> None:
        if "type" not in _struct_fields(s.dtype):
            _refuse_dtype(
                path,
                s.dtype,
                'a content part (a struct with a "type")',
                'build it with `pl.struct(type=pl.lit("text"), text=...)`',
            )
        _check_choice(f"{path}.type", types)(s.struct.field("type"), offset)

    return check


def _content_const(path: str, value: Any, types: tuple[str, ...], add: _Add) -> None:
    if isinstance(value, pl.Expr):
        add(path, _check_content(path, types))
    elif isinstance(value, list):
        _parts_const(path, value, types, add)
    elif not isinstance(value, str):
        msg = f"`{path}` must be text or a list of content parts, got {_const_type(value)}"
        raise _fail(msg, path)


def _chat(body: Mapping[str, Any], add: _Add) -> None:
    messages = body["messages"]
    roles = tuple(CHAT_ROLES)
    if isinstance(messages, pl.Expr):
        add("messages", _check_message_list("messages", roles))
        return
    if not isinstance(messages, list):
        msg = f"`messages` must be a list of messages, got {_const_type(messages)}"
        raise _fail(msg, "messages")
    if not messages:
        msg = "`messages` is an empty list; the API needs at least one message (e.g. `bf.chat_body(model, user=pl.col(...))`)"
        raise _fail(msg, "messages")
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if isinstance(message, pl.Expr):
            add(path, _check_message(path, roles))
            continue
        if not isinstance(message, dict):
            msg = f'`{path}` must be a message dict ({{"role": ..., "content": ...}}), got {_const_type(message)}'
            raise _fail(msg, path)
        if "role" not in message:
            msg = f"`{path}` has no `role`; use one of {list(roles)}"
            raise _fail(msg, f"{path}.role")
        role = message["role"]
        _choice_const(f"{path}.role", role, roles, add)
        needed = CHAT_ROLES[role] if isinstance(role, str) else ("content",)
        if isinstance(role, str) and role == "assistant" and "tool_calls" not in message:
            needed = ("content",)
        for key in needed:
            if key not in message:
                msg = f"`{path}` ({role if isinstance(role, str) else 'a'} message) has no `{key}`; add it"
                raise _fail(msg, f"{path}.{key}")
        if "content" in message and not (message["content"] is None and role == "assistant"):
            _content_const(f"{path}.content", message["content"], CHAT_PART_TYPES, add)


_RESPONSES_PARTS = (
    "input_text",
    "input_image",
    "input_file",
    "input_audio",
    "output_text",
    "refusal",
)


def _responses(body: Mapping[str, Any], add: _Add) -> None:
    value = body.get("input")
    if value is None or isinstance(value, str):
        return
    if isinstance(value, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            inner = getattr(s.dtype, "inner", None)
            if not (_is_text_dtype(s.dtype) or isinstance(inner, pl.Struct)):
                _refuse_dtype(
                    "input", s.dtype, "text or a list of input items (structs)", "cast it to text"
                )

        add("input", check)
        return
    if not isinstance(value, list):
        msg = f"`input` must be text or a list of input items, got {_const_type(value)}"
        raise _fail(msg, "input")
    for i, item in enumerate(value):
        path = f"input[{i}]"
        if isinstance(item, pl.Expr):
            continue
        if not isinstance(item, dict):
            msg = f"`{path}` must be an input item (a dict), got {_const_type(item)}"
            raise _fail(msg, path)
        if "role" in item and item.get("type", "message") == "message":
            _choice_const(f"{path}.role", item["role"], RESPONSES_ROLES, add)
            if "content" not in item:
                msg = f"`{path}` has no `content`; add it"
                raise _fail(msg, f"{path}.content")
            _content_const(f"{path}.content", item["content"], _RESPONSES_PARTS, add)
        elif "type" not in item:
            msg = f"`{path}` is neither a message (`role`, `content`) nor a typed item (`type`)"
            raise _fail(msg, path)


def _embeddings(body: Mapping[str, Any], add: _Add) -> None:
    value = body["input"]
    limit = MAX_EMBEDDING_INPUTS_PER_REQUEST
    if "encoding_format" in body:
        _choice_const("encoding_format", body["encoding_format"], ENCODING_FORMATS, add)
    if isinstance(value, pl.Expr):
        add("input", _embedding_check)
        return
    if isinstance(value, str):
        _text_const("input", value, add, non_empty=True)
        return
    if not isinstance(value, list):
        msg = f"`input` must be text or a list of texts, got {_const_type(value)}"
        raise _fail(msg, "input")
    if not value:
        msg = "`input` is an empty list, which the API refuses; give at least one input"
        raise _fail(msg, "input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return  # one input as token ids
    if len(value) > limit:
        msg = f"`input` has {len(value):,} inputs; the API takes at most {limit:,} per request: split it over several rows"
        raise _fail(msg, "input")
    for i, item in enumerate(value):
        path = f"input[{i}]"
        if (
            isinstance(item, list)
            and item
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            continue
        _text_const(path, item, add, non_empty=True)


def _completions(body: Mapping[str, Any], add: _Add) -> None:
    value = body["prompt"]
    if isinstance(value, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            inner = getattr(s.dtype, "inner", None)
            ok = _is_text_dtype(s.dtype) or (
                inner is not None
                and (
                    _is_text_dtype(inner)
                    or inner.is_integer()
                    or (isinstance(inner, (pl.List, pl.Array)) and inner.inner.is_integer())
                )
            )
            if not ok:
                _refuse_dtype(
                    "prompt", s.dtype, "text, a list of texts or token ids", "cast it to text"
                )

        add("prompt", check)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, (str, int, list, pl.Expr)) or isinstance(item, bool):
                msg = f"`prompt[{i}]` must be text or token ids, got {_const_type(item)}"
                raise _fail(msg, f"prompt[{i}]")
            if isinstance(item, pl.Expr):
                add(f"prompt[{i}]", _check_text(f"prompt[{i}]", non_empty=False))
    elif not isinstance(value, str):
        msg = f"`prompt` must be text or a list of texts, got {_const_type(value)}"
        raise _fail(msg, "prompt")


def _moderations(body: Mapping[str, Any], add: _Add) -> None:
    value = body["input"]
    types = ("text", "image_url")
    if isinstance(value, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            if _is_text_dtype(s.dtype):
                return
            inner = getattr(s.dtype, "inner", None)
            if inner is None or not (_is_text_dtype(inner) or "type" in _struct_fields(inner)):
                _refuse_dtype(
                    "input", s.dtype, "text, a list of texts, or a list of parts", "cast it to text"
                )
            _refuse_rows(
                s.list.len() == 0, offset, "input", "is an empty list", "give every row an input"
            )

        add("input", check)
    elif isinstance(value, list):
        if not value:
            msg = "`input` is an empty list, which the API refuses; give at least one input"
            raise _fail(msg, "input")
        if any(isinstance(v, dict) for v in value):
            _parts_const("input", value, types, add)
        else:
            for i, item in enumerate(value):
                _text_const(f"input[{i}]", item, add, non_empty=False)
    elif not isinstance(value, str):
        msg = f"`input` must be text, a list of texts or a list of parts, got {_const_type(value)}"
        raise _fail(msg, "input")


def _images(body: Mapping[str, Any], add: _Add) -> None:
    _text_const("prompt", body["prompt"], add, non_empty=True)


def _image_edits(body: Mapping[str, Any], add: _Add) -> None:
    _images(body, add)
    images = body["images"]
    if isinstance(images, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            inner = getattr(s.dtype, "inner", None)
            if inner is None or not _struct_fields(inner) & {"image_url", "file_id"}:
                _refuse_dtype(
                    "images",
                    s.dtype,
                    "a list of structs with `image_url` or `file_id`",
                    "build it with `pl.concat_list(pl.struct(image_url=...))`",
                )
            _refuse_rows(
                s.list.len() == 0, offset, "images", "is an empty list", "give every row an image"
            )

        add("images", check)
        return
    if not isinstance(images, list) or not images:
        msg = '`images` must be a non-empty list of {"image_url": ...} / {"file_id": ...} dicts'
        raise _fail(msg, "images")
    for i, item in enumerate(images):
        path = f"images[{i}]"
        if isinstance(item, dict) and len(item.keys() & {"image_url", "file_id"}) == 1:
            key = "image_url" if "image_url" in item else "file_id"
            _text_const(f"{path}.{key}", item[key], add, non_empty=True)
        elif not isinstance(item, pl.Expr):
            msg = f'`{path}` must be {{"image_url": ...}} or {{"file_id": ...}}, got {item!r}'
            raise _fail(msg, path)


_ENDPOINT_CHECKS: dict[str, Callable[[Mapping[str, Any], _Add], None]] = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
    "/v1/moderations": _moderations,
    "/v1/images/generations": _images,
    "/v1/images/edits": _image_edits,
}


def check_template(endpoint: str, body: Mapping[str, Any]) -> dict[str, LeafCheck]:
    """Check a body template against the endpoint's request schema, once.

    Constant parts are checked here; returns the per-row checks of expression leaves,
    keyed by their template path (``messages[1].content``), as ``compile_template``
    names them.

    Raises
    ------
    InvalidBodyError
        A required key is missing, a key of another endpoint is present, or a constant
        has a type or value the endpoint refuses.
    """
    checks: dict[str, LeafCheck] = {}

    def add(path: str, fn: Callable[[pl.Series, int], None]) -> None:
        checks[path] = LeafCheck(path, fn)

    _check_keys(endpoint, body)
    _check_model_const(endpoint, body, add)
    _check_numbers(endpoint, body, add)
    _ENDPOINT_CHECKS[endpoint](body, add)
    return checks


def name_custom_ids(exc: InputError, ids: pl.Series | None, offset: int) -> InputError:
    """Add the ``custom_id`` of each row ``exc`` names (``ids``: the chunk's, from ``offset``).

    The ids go into the message next to the positions (``row(s) [1] (custom_id
    ['b'])``), since an id is what a user can search for in a LazyFrame, and into
    ``exc.custom_ids``. Returns ``exc``, changed in place.
    """
    if ids is None or not exc.rows or exc.custom_ids:
        return exc
    at = [r - offset for r in exc.rows]
    if any(i < 0 or i >= len(ids) for i in at):
        return exc
    found = [str(v) for v in ids.gather(at).to_list()]
    exc.custom_ids = found
    message = str(exc)
    if "(custom_id " not in message:
        shown = str(exc.rows)
        named = f"{shown} (custom_id {found})"
        message = (
            message.replace(shown, named, 1)
            if shown in message
            else f"{message} (custom_id {found})"
        )
        exc.args = (message, *exc.args[1:])
    return exc
