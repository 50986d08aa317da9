"""The local server's token estimate.

The server does not tokenize. It estimates, deterministically and cheaply:

* every string in a request body counts its UTF-8 bytes, except the top-level ``model``
  value and object keys;
* every integer inside a token-id array (``input``/``prompt`` given as token ids) counts 1;
* the total is ``ceil(bytes / 4) + token_ids``, and at least 1.

The same rule gives the ``usage`` numbers of echo answers (prompt and completion
tokens) and the enqueued tokens of a batch checked against ``queue_token_limit``.
"""

from __future__ import annotations

from typing import Any


def _count(value: Any) -> tuple[int, int]:
    """Return ``(string bytes, token ids)`` found in a JSON value."""
    n_bytes = 0
    n_ids = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            n_bytes += len(item.encode("utf-8")) if not item.isascii() else len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            if item and isinstance(item[0], int) and not isinstance(item[0], bool):
                n_ids += sum(1 for x in item if isinstance(x, int))
            else:
                stack.extend(item)
    return n_bytes, n_ids


def estimate_tokens(value: Any) -> int:
    """Estimate the tokens of any JSON value: ~1 token per 4 bytes of text, at least 1."""
    n_bytes, n_ids = _count(value)
    return max(1, -(-n_bytes // 4) + n_ids)


def estimate_body_tokens(body: dict[str, Any]) -> int:
    """Estimate the input tokens of a request body (the top-level ``model`` is not counted)."""
    return estimate_tokens({k: v for k, v in body.items() if k != "model"})
