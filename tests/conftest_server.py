"""Helpers shared by the LocalBatchServer tests (imported, not a conftest)."""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson
import polars as pl

import batchframe as bf

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def chat_line(
    i: int | str, text: str | None = None, *, model: str = "gpt-4o-mini", **extra: Any
) -> dict[str, Any]:
    """One chat request line; ``extra`` overrides top-level keys."""
    body = {"model": model, "messages": [{"role": "user", "content": text or f"hello {i}"}]}
    line: dict[str, Any] = {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
    }
    line.update(extra)
    return line


def jsonl(lines: list[Any]) -> bytes:
    """Lines to JSONL bytes (strings and bytes are kept as they are)."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(orjson.dumps(line))
    return b"\n".join(out) + b"\n"


def upload(client: openai.OpenAI, lines: list[Any] | bytes, name: str = "in.jsonl") -> str:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, data), purpose="batch").id


def submit(
    client: openai.OpenAI,
    lines: list[Any] | bytes,
    endpoint: str = "/v1/chat/completions",
    **kwargs: Any,
) -> Any:
    file_id = upload(client, lines)
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )


def wait_for(
    client: openai.OpenAI, batch_id: str, until: set[str] | None = None, timeout: float = 15.0
) -> Any:
    """Poll until the batch reaches one of ``until`` (default: a terminal status)."""
    until = until or TERMINAL
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stuck in {batch.status}: {batch}")
        time.sleep(0.01)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """Download a JSONL file; ``None`` gives no lines."""
    if not file_id:
        return []
    return [
        orjson.loads(x) for x in client.files.content(file_id).content.splitlines() if x.strip()
    ]


def run_batch(
    client: openai.OpenAI,
    lines: list[Any] | bytes,
    endpoint: str = "/v1/chat/completions",
    **kw: Any,
) -> Any:
    batch = submit(client, lines, endpoint, **kw)
    return wait_for(client, batch.id)


def chat_requests(n: int) -> bf.Requests:
    """``n`` chat requests (ids ``r0``...; text ``t <i>``) built by ``bf.build_requests``."""
    df = pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"t {i}" for i in range(n)]})
    return bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
    )
