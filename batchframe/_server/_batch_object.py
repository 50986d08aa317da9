"""The Batch object: a new batch with every field of the API's ``Batch``, and its usage sums."""

from __future__ import annotations

from typing import Any

from batchframe._server._store import new_id


def make_batch(
    *,
    input_file_id: str,
    endpoint: str,
    metadata: dict[str, str] | None,
    created: float,
    window_seconds: float | None,
    completion_window: str = "24h",
) -> dict[str, Any]:
    """Return a new batch object in ``validating``, with every field of the API's ``Batch``."""
    return {
        "id": new_id("batch_"),
        "object": "batch",
        "endpoint": endpoint,
        "model": None,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(created),
        "in_progress_at": None,
        "expires_at": None if window_seconds is None else int(created + window_seconds),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": zero_usage(),
        "metadata": metadata,
    }


def zero_usage() -> dict[str, Any]:
    """Return an all-zero ``BatchUsage``."""
    return {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def add_usage(usage: dict[str, Any], body: Any) -> None:
    """Add a response body's ``usage`` (chat, responses, embeddings or images shape)."""
    found = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(found, dict):
        return
    inp = _int(found.get("prompt_tokens", found.get("input_tokens")))
    out = _int(found.get("completion_tokens", found.get("output_tokens")))
    in_details = found.get("prompt_tokens_details") or found.get("input_tokens_details") or {}
    out_details = found.get("completion_tokens_details") or found.get("output_tokens_details") or {}
    usage["input_tokens"] += inp
    usage["output_tokens"] += out
    usage["total_tokens"] += inp + out
    if isinstance(in_details, dict):
        usage["input_tokens_details"]["cached_tokens"] += _int(in_details.get("cached_tokens"))
    if isinstance(out_details, dict):
        usage["output_tokens_details"]["reasoning_tokens"] += _int(
            out_details.get("reasoning_tokens")
        )
