"""Endpoints the Batch API serves and helpers that return body templates for them.

A body template is plain JSON material (dicts, lists, strings, numbers, booleans, None)
whose leaves may be Polars expressions, evaluated per row by ``build_requests``.
"""

from __future__ import annotations

from typing import Any, Literal

from batchframe.exceptions import EndpointError, TemplateError

Endpoint = Literal[
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
]
ENDPOINTS: tuple[str, ...] = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
)


def check_endpoint(endpoint: object) -> str:
    """Return ``endpoint`` if the Batch API serves it, else raise :class:`EndpointError`."""
    if isinstance(endpoint, str) and endpoint in ENDPOINTS:
        return endpoint
    hint = ""
    if isinstance(endpoint, str) and f"/v1{endpoint}" in ENDPOINTS:
        hint = f" Did you mean {'/v1' + endpoint!r}?"
    valid = ", ".join(ENDPOINTS)
    msg = f"unknown endpoint {endpoint!r}; the Batch API serves: {valid}.{hint}"
    raise EndpointError(msg)


def chat_body(
    model: Any,
    *,
    user: Any = None,
    system: Any = None,
    messages: list[Any] | None = None,
    response_format: Any = None,
    **params: Any,
) -> dict[str, Any]:
    """Body template for ``/v1/chat/completions``.

    Parameters
    ----------
    model
        Model name, or an expression naming it per row.
    user
        The user message: text or a Polars expression (e.g. ``pl.col("text")``).
    system
        Optional system message (text or expression).
    messages
        A full ``messages`` list instead of ``user``/``system``.
    response_format
        A pydantic model class or a JSON schema (dict): the answer must match it and
        comes back parsed into the typed ``parsed`` column. An API-shaped
        ``{"type": "json_schema", ...}`` dict is passed through.
    **params
        Any other body field (``max_tokens``, ``temperature``, ``tools``, ...).

    Returns
    -------
    dict
        The template, to pass as ``body=`` to :func:`build_requests`.

    Examples
    --------
    >>> import polars as pl
    >>> import batchframe as bf
    >>> bf.chat_body("gpt-4o-mini", user=pl.col("text"), system="Be brief.")["messages"][0]
    {'role': 'system', 'content': 'Be brief.'}
    """
    if messages is None:
        if user is None:
            msg = "`chat_body` needs `user=` (text or expression) or a full `messages=` list"
            raise TemplateError(msg)
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user})
    elif user is not None or system is not None:
        msg = "pass either `messages=` or `user=`/`system=` to `chat_body`, not both"
        raise TemplateError(msg)
    body: dict[str, Any] = {"model": model, "messages": messages, **params}
    if response_format is not None:
        body["response_format"] = response_format
    return body


def responses_body(
    model: Any,
    *,
    input: Any,
    instructions: Any = None,
    text_format: Any = None,
    **params: Any,
) -> dict[str, Any]:
    """Body template for ``/v1/responses``.

    Parameters
    ----------
    model
        Model name, or an expression naming it per row.
    input
        Text, expression, or a list of input items.
    instructions
        Optional system-level instructions.
    text_format
        A pydantic model class or JSON schema: the answer is parsed into ``parsed``.
    **params
        Any other body field (``max_output_tokens``, ``reasoning``, ...).
    """
    body: dict[str, Any] = {"model": model, "input": input, **params}
    if instructions is not None:
        body["instructions"] = instructions
    if text_format is not None:
        text = dict(body.get("text") or {})
        text["format"] = text_format
        body["text"] = text
    return body


def embeddings_body(
    model: Any,
    *,
    input: Any,
    dimensions: int | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Body template for ``/v1/embeddings``.

    ``input`` may be a text expression (one input per row) or a list expression (each
    element is one input and counts toward the 50,000-inputs-per-batch limit).
    """
    body: dict[str, Any] = {"model": model, "input": input, **params}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def completions_body(model: Any, *, prompt: Any, **params: Any) -> dict[str, Any]:
    """Body template for the legacy ``/v1/completions`` endpoint."""
    return {"model": model, "prompt": prompt, **params}


def moderations_body(
    *,
    input: Any,
    model: Any = "omni-moderation-latest",
    **params: Any,
) -> dict[str, Any]:
    """Body template for ``/v1/moderations`` (default model ``omni-moderation-latest``)."""
    return {"model": model, "input": input, **params}


def image_body(model: Any, *, prompt: Any, **params: Any) -> dict[str, Any]:
    """Body template for ``/v1/images/generations`` (``size``, ``quality``, ``n``, ...)."""
    return {"model": model, "prompt": prompt, **params}


def image_edit_body(
    model: Any, *, prompt: Any, images: Any, mask: Any = None, **params: Any
) -> dict[str, Any]:
    """Body template for ``/v1/images/edits`` (the JSON form the Batch API accepts).

    Parameters
    ----------
    images
        One image or a list. Each is an ``{"image_url": ...}`` / ``{"file_id": ...}``
        dict, or a URL (text or expression), which becomes ``{"image_url": url}``.
    mask
        Optional ``{"file_id": ...}`` / ``{"image_url": ...}`` dict, or a URL.
    """
    items = images if isinstance(images, list) else [images]
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "images": [i if isinstance(i, dict) else {"image_url": i} for i in items],
        **params,
    }
    if mask is not None:
        body["mask"] = mask if isinstance(mask, dict) else {"image_url": mask}
    return body
