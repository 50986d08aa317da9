"""Request-shape checks: refuse, before anything is written, what the API refuses per line.

The Batch API validates each line's ``body`` only when the line runs, so a body the
endpoint cannot take (an embeddings body on the chat endpoint, an empty ``messages``
list, 2,049 embedding inputs, a struct where ``content`` must be text) is accepted at
upload and fails row by row hours later. These checks follow the official request
schemas (``_request_schema``: the keys of the ``openai`` package's TypedDicts).

The template is checked once, here, where it is constant; expression leaves get a
per-row check (``_leaf_checks``) run on each chunk, vectorised, in both the in-memory
and the streamed build. ``batchframe._server._body_checks`` refuses the same bodies on
the local server, line by line, with the API's error codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from batchframe._leaf_checks import (
    CheckFn,
    LeafCheck,
    check_choice,
    check_content,
    check_embedding_input,
    check_message,
    check_message_list,
    check_model,
    check_number,
    check_part,
    check_text,
    fail,
    is_text_dtype,
    refuse_dtype,
    refuse_rows,
    struct_fields,
)
from batchframe._request_schema import (
    CHAT_PART_TYPES,
    CHAT_ROLES,
    ENCODING_FORMATS,
    KNOWN_KEYS,
    MAX_EMBEDDING_INPUTS_PER_REQUEST,
    REQUIRED_KEYS,
    RESPONSES_PART_TYPES,
    RESPONSES_ROLES,
    number_specs,
)
from batchframe.exceptions import InputError

__all__ = ["LeafCheck", "check_template", "name_custom_ids"]


def _const_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", tuple: "a list", dict: "a dict", type(None): "None"}
    return names.get(type(value), type(value).__name__)


# -- the template, checked once --------------------------------------------------------

#: Adds a per-row check of the expression leaf at a path.
_Add = Callable[[str, CheckFn], None]


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
            raise fail(msg, key)
    if endpoint == "/v1/responses" and not keys & {
        "input",
        "prompt",
        "previous_response_id",
        "conversation",
    }:
        msg = f"the body has no `input` (nor a stored `prompt`), which /v1/responses needs{hint or '; add it'}"
        raise fail(msg, "input")
    known = KNOWN_KEYS[endpoint]
    for key in body:
        if key in known:
            continue
        owners = [e for e, k in KNOWN_KEYS.items() if key in k]
        if owners:
            msg = (
                f"`{key}` is not a parameter of {endpoint} (it belongs to "
                f"{', '.join(owners)}), and the API refuses every line that has it"
                f"{hint or f'; drop `{key}`'}"
            )
            raise fail(msg, key)
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=_TYPO_CUTOFF)
        if close:
            # Other keys are let through: a newer API or another provider may take them.
            msg = (
                f"`{key}` is not a parameter of {endpoint}: did you mean `{close[0]}`? "
                "The API refuses every line with an unknown parameter"
            )
            raise fail(msg, key)


def _check_model_const(endpoint: str, body: Mapping[str, Any], add: _Add) -> None:
    model = body.get("model")
    if isinstance(model, pl.Expr):
        add("model", check_model)
    elif not isinstance(model, str) or not model:
        got = "nothing" if model is None else repr(model)
        msg = (
            f"the body template needs a `model` (a name or an expression) for {endpoint}, "
            f"got {got}; pass the model name as text"
        )
        raise fail(msg, "model")


def _check_numbers(endpoint: str, body: Mapping[str, Any], add: _Add) -> None:
    for key, spec in number_specs(endpoint).items():
        if key not in body:
            continue
        value = body[key]
        if isinstance(value, pl.Expr):
            add(key, check_number(key, spec).fn)
            continue
        integer, lo, hi = spec
        if value is None:  # null: the API's default
            continue
        ok = isinstance(value, int) or (not integer and isinstance(value, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if integer else "a number"
            msg = f"`{key}` must be {kind}, got {_const_type(value)} ({value!r})"
            raise fail(msg, key)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = (
                f"between {lo} and {hi}"
                if lo is not None and hi is not None
                else (f">= {lo}" if lo is not None else f"<= {hi}")
            )
            msg = f"`{key}` is {value!r}; the API takes values {bounds}"
            raise fail(msg, key)


def _choice_const(path: str, value: Any, allowed: tuple[str, ...], add: _Add) -> None:
    if isinstance(value, pl.Expr):
        add(path, check_choice(path, allowed))
    elif value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        msg = f"`{path}` is {value!r}{hint}; it must be one of {list(allowed)}"
        raise fail(msg, path)


def _text_const(path: str, value: Any, add: _Add, *, non_empty: bool) -> None:
    if isinstance(value, pl.Expr):
        add(path, check_text(path, non_empty=non_empty))
    elif not isinstance(value, str):
        msg = f"`{path}` must be text, got {_const_type(value)}"
        raise fail(msg, path)
    elif non_empty and not value:
        msg = f"`{path}` is an empty string, which the API refuses; give it text"
        raise fail(msg, path)


def _parts_const(path: str, parts: list[Any], types: tuple[str, ...], add: _Add) -> None:
    for j, part in enumerate(parts):
        where = f"{path}[{j}]"
        if isinstance(part, pl.Expr):
            add(where, check_part(where, types))
            continue
        if not isinstance(part, dict) or "type" not in part:
            msg = (
                f'`{where}` must be a content part (a dict with a "type", e.g. {{"type": '
                f'"text", "text": ...}}), got {_const_type(part)}'
            )
            raise fail(msg, where)
        _choice_const(f"{where}.type", part["type"], types, add)
        kind = part["type"]
        if isinstance(kind, str) and kind in ("text", "input_text") and "text" not in part:
            msg = f'`{where}` is a "{kind}" part without `text`; add it'
            raise fail(msg, where)


def _content_const(path: str, value: Any, types: tuple[str, ...], add: _Add) -> None:
    if isinstance(value, pl.Expr):
        add(path, check_content(path, types))
    elif isinstance(value, list):
        _parts_const(path, value, types, add)
    elif not isinstance(value, str):
        msg = f"`{path}` must be text or a list of content parts, got {_const_type(value)}"
        raise fail(msg, path)


def _chat(body: Mapping[str, Any], add: _Add) -> None:
    messages = body["messages"]
    roles = tuple(CHAT_ROLES)
    if isinstance(messages, pl.Expr):
        add("messages", check_message_list("messages", roles))
        return
    if not isinstance(messages, list):
        msg = f"`messages` must be a list of messages, got {_const_type(messages)}"
        raise fail(msg, "messages")
    if not messages:
        msg = "`messages` is an empty list; the API needs at least one message (e.g. `bf.chat_body(model, user=pl.col(...))`)"
        raise fail(msg, "messages")
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if isinstance(message, pl.Expr):
            add(path, check_message(path, roles))
            continue
        if not isinstance(message, dict):
            msg = f'`{path}` must be a message dict ({{"role": ..., "content": ...}}), got {_const_type(message)}'
            raise fail(msg, path)
        if "role" not in message:
            msg = f"`{path}` has no `role`; use one of {list(roles)}"
            raise fail(msg, f"{path}.role")
        role = message["role"]
        _choice_const(f"{path}.role", role, roles, add)
        needed = CHAT_ROLES[role] if isinstance(role, str) else ("content",)
        if isinstance(role, str) and role == "assistant" and "tool_calls" not in message:
            needed = ("content",)
        for key in needed:
            if key not in message:
                msg = f"`{path}` ({role if isinstance(role, str) else 'a'} message) has no `{key}`; add it"
                raise fail(msg, f"{path}.{key}")
        if "content" in message and not (message["content"] is None and role == "assistant"):
            _content_const(f"{path}.content", message["content"], CHAT_PART_TYPES, add)


def _responses(body: Mapping[str, Any], add: _Add) -> None:
    value = body.get("input")
    if value is None or isinstance(value, str):
        return
    if isinstance(value, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            inner = getattr(s.dtype, "inner", None)
            if not (is_text_dtype(s.dtype) or isinstance(inner, pl.Struct)):
                refuse_dtype(
                    "input", s.dtype, "text or a list of input items (structs)", "cast it to text"
                )

        add("input", check)
        return
    if not isinstance(value, list):
        msg = f"`input` must be text or a list of input items, got {_const_type(value)}"
        raise fail(msg, "input")
    for i, item in enumerate(value):
        path = f"input[{i}]"
        if isinstance(item, pl.Expr):
            continue
        if not isinstance(item, dict):
            msg = f"`{path}` must be an input item (a dict), got {_const_type(item)}"
            raise fail(msg, path)
        if "role" in item and item.get("type", "message") == "message":
            _choice_const(f"{path}.role", item["role"], RESPONSES_ROLES, add)
            if "content" not in item:
                msg = f"`{path}` has no `content`; add it"
                raise fail(msg, f"{path}.content")
            _content_const(f"{path}.content", item["content"], RESPONSES_PART_TYPES, add)
        elif "type" not in item:
            msg = f"`{path}` is neither a message (`role`, `content`) nor a typed item (`type`)"
            raise fail(msg, path)


def _embeddings(body: Mapping[str, Any], add: _Add) -> None:
    value = body["input"]
    limit = MAX_EMBEDDING_INPUTS_PER_REQUEST
    if "encoding_format" in body:
        _choice_const("encoding_format", body["encoding_format"], ENCODING_FORMATS, add)
    if isinstance(value, pl.Expr):
        add("input", check_embedding_input)
        return
    if isinstance(value, str):
        _text_const("input", value, add, non_empty=True)
        return
    if not isinstance(value, list):
        msg = f"`input` must be text or a list of texts, got {_const_type(value)}"
        raise fail(msg, "input")
    if not value:
        msg = "`input` is an empty list, which the API refuses; give at least one input"
        raise fail(msg, "input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return  # one input as token ids
    if len(value) > limit:
        msg = f"`input` has {len(value):,} inputs; the API takes at most {limit:,} per request: split it over several rows"
        raise fail(msg, "input")
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
            ok = is_text_dtype(s.dtype) or (
                inner is not None
                and (
                    is_text_dtype(inner)
                    or inner.is_integer()
                    or (isinstance(inner, (pl.List, pl.Array)) and inner.inner.is_integer())
                )
            )
            if not ok:
                refuse_dtype(
                    "prompt", s.dtype, "text, a list of texts or token ids", "cast it to text"
                )

        add("prompt", check)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, (str, int, list, pl.Expr)) or isinstance(item, bool):
                msg = f"`prompt[{i}]` must be text or token ids, got {_const_type(item)}"
                raise fail(msg, f"prompt[{i}]")
            if isinstance(item, pl.Expr):
                add(f"prompt[{i}]", check_text(f"prompt[{i}]", non_empty=False))
    elif not isinstance(value, str):
        msg = f"`prompt` must be text or a list of texts, got {_const_type(value)}"
        raise fail(msg, "prompt")


def _moderations(body: Mapping[str, Any], add: _Add) -> None:
    value = body["input"]
    types = ("text", "image_url")
    if isinstance(value, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            if is_text_dtype(s.dtype):
                return
            inner = getattr(s.dtype, "inner", None)
            if inner is None or not (is_text_dtype(inner) or "type" in struct_fields(inner)):
                refuse_dtype(
                    "input", s.dtype, "text, a list of texts, or a list of parts", "cast it to text"
                )
            refuse_rows(
                s.list.len() == 0, offset, "input", "is an empty list", "give every row an input"
            )

        add("input", check)
    elif isinstance(value, list):
        if not value:
            msg = "`input` is an empty list, which the API refuses; give at least one input"
            raise fail(msg, "input")
        if any(isinstance(v, dict) for v in value):
            _parts_const("input", value, types, add)
        else:
            for i, item in enumerate(value):
                _text_const(f"input[{i}]", item, add, non_empty=False)
    elif not isinstance(value, str):
        msg = f"`input` must be text, a list of texts or a list of parts, got {_const_type(value)}"
        raise fail(msg, "input")


def _images(body: Mapping[str, Any], add: _Add) -> None:
    _text_const("prompt", body["prompt"], add, non_empty=True)


def _image_edits(body: Mapping[str, Any], add: _Add) -> None:
    _images(body, add)
    images = body["images"]
    if isinstance(images, pl.Expr):

        def check(s: pl.Series, offset: int) -> None:
            inner = getattr(s.dtype, "inner", None)
            if inner is None or not struct_fields(inner) & {"image_url", "file_id"}:
                refuse_dtype(
                    "images",
                    s.dtype,
                    "a list of structs with `image_url` or `file_id`",
                    "build it with `pl.concat_list(pl.struct(image_url=...))`",
                )
            refuse_rows(
                s.list.len() == 0, offset, "images", "is an empty list", "give every row an image"
            )

        add("images", check)
        return
    if not isinstance(images, list) or not images:
        msg = '`images` must be a non-empty list of {"image_url": ...} / {"file_id": ...} dicts'
        raise fail(msg, "images")
    for i, item in enumerate(images):
        path = f"images[{i}]"
        if isinstance(item, dict) and len(item.keys() & {"image_url", "file_id"}) == 1:
            key = "image_url" if "image_url" in item else "file_id"
            _text_const(f"{path}.{key}", item[key], add, non_empty=True)
        elif not isinstance(item, pl.Expr):
            msg = f'`{path}` must be {{"image_url": ...}} or {{"file_id": ...}}, got {item!r}'
            raise fail(msg, path)


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

    def add(path: str, fn: CheckFn) -> None:
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
        # Next to the positions ("row(s) [1]"), never inside a path like `messages[1]`.
        shown = f"row(s) {exc.rows}"
        named = f"{shown} (custom_id {found})"
        message = (
            message.replace(shown, named, 1)
            if shown in message
            else f"{message} (custom_id {found})"
        )
        exc.args = (message, *exc.args[1:])
    return exc
