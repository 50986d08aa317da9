"""Echo answers for ``/v1/images/generations``, ``/v1/images/edits`` and ``/v1/videos``.

Images are a tiny valid PNG (8x8, one colour from a hash of the prompt) as base64
(``url`` as a ``data:`` URL for ``dall-e`` models asking for URLs); usage follows the
GPT image models' shape. Videos come back as a completed video job.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import time
import zlib
from typing import Any

from batchframe._server._errors import ApiError, bad_request
from batchframe._server._tokens import estimate_tokens


def missing(*, param: str) -> ApiError:
    """Return the API's 400 for a missing required parameter."""
    msg = f"Missing required parameter: '{param}'."
    return bad_request(msg, param=param, code="missing_required_parameter")


def count(value: Any) -> int:
    """Return ``n`` (how many choices or images), at least 1."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def tiny_png(text: str, size: int = 8) -> bytes:
    """Return a valid ``size`` x ``size`` solid-colour PNG whose colour is a hash of ``text``."""
    rgb = hashlib.blake2b(text.encode("utf-8"), digest_size=3).digest()
    raw = b"".join(b"\x00" + rgb * size for _ in range(size))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def images(body: dict[str, Any], *, edit: bool) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise missing(param="prompt")
    images = body.get("images")
    if edit and (not isinstance(images, list) or not images):
        raise missing(param="images")
    n = count(body.get("n"))
    as_url = body["model"].startswith("dall-e") and body.get("response_format", "url") == "url"
    data = []
    for i in range(n):
        b64 = base64.b64encode(tiny_png(f"{prompt}\x00{i}")).decode()
        item: dict[str, Any] = (
            {"url": f"data:image/png;base64,{b64}"} if as_url else {"b64_json": b64}
        )
        data.append(item | {"revised_prompt": prompt})
    text_tokens = estimate_tokens(prompt)
    image_tokens = 65 * len(images) if edit and isinstance(images, list) else 0
    out_tokens = 272 * len(data)
    usage = {
        "input_tokens": text_tokens + image_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens": out_tokens,
        "output_tokens_details": {"text_tokens": 0, "image_tokens": out_tokens},
        "total_tokens": text_tokens + image_tokens + out_tokens,
    }
    return {
        "created": int(time.time()),
        "data": data,
        "background": "opaque",
        "output_format": "png",
        "quality": body.get("quality", "low") if body.get("quality") != "auto" else "low",
        "size": body.get("size", "1024x1024") if body.get("size") != "auto" else "1024x1024",
        "usage": usage,
    }


def videos(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise missing(param="prompt")
    now = int(time.time())
    return {
        "id": "video_" + secrets.token_hex(12),
        "object": "video",
        "created_at": now,
        "completed_at": now,
        "expires_at": now + 86_400,
        "status": "completed",
        "model": body["model"],
        "progress": 100,
        "prompt": prompt,
        "seconds": str(body.get("seconds", "4")),
        "size": body.get("size", "720x1280"),
        "error": None,
        "remixed_from_video_id": None,
    }
