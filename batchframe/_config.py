"""Per-batch limits of the Batch API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from batchframe.exceptions import LimitError

# Source: shared/reference/batch-api.md §0 (OpenAPI spec `CreateBatchRequest`, observed
# error text "larger than the 209715200 maximum").
MAX_REQUESTS = 50_000
MAX_BYTES = 209_715_200
MAX_EMBEDDING_INPUTS = 50_000


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchLimits:
    """Limits that every shard (one batch input file) must respect.

    Defaults are the OpenAI Batch API's documented limits. All are overridable, e.g.
    ``BatchLimits(max_requests=100_000)`` for Azure OpenAI.

    Parameters
    ----------
    max_requests
        Requests (lines) per input file. OpenAI: 50,000.
    max_bytes
        Bytes of the exact file uploaded (UTF-8, ``\\n`` line endings, no BOM).
        OpenAI: 200 MB, enforced as 209,715,200 bytes.
    max_embedding_inputs
        Sum over an ``/v1/embeddings`` file of the inputs each line carries (each
        element of an ``input`` array counts). OpenAI: 50,000.
    max_tokens
        Optional cap on the estimated input tokens of one shard (``None``: no cap).
        Useful to keep single batches under an organisation's enqueued-token limit.

    Examples
    --------
    >>> import batchframe as bf
    >>> bf.BatchLimits(max_requests=1_000).max_bytes
    209715200
    """

    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES
    max_embedding_inputs: int = MAX_EMBEDDING_INPUTS
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_bytes", "max_embedding_inputs", "max_tokens"):
            value = getattr(self, name)
            if value is None and name == "max_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"`BatchLimits.{name}` must be a positive integer, got {value!r}"
                raise LimitError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchLimits:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{
                k: data[k]
                for k in ("max_requests", "max_bytes", "max_embedding_inputs", "max_tokens")
                if k in data
            }
        )
