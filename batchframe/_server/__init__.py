"""The local OpenAI Files + Batches API server (``bf.LocalBatchServer``)."""

from __future__ import annotations

from batchframe._server._echo import Executor, echo
from batchframe._server._http import Call
from batchframe._server._local import LocalBatchServer
from batchframe._server._tokens import estimate_body_tokens, estimate_tokens

__all__ = [
    "Call",
    "Executor",
    "LocalBatchServer",
    "echo",
    "estimate_body_tokens",
    "estimate_tokens",
]
