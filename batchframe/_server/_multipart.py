"""A small ``multipart/form-data`` parser for file uploads.

The openai client sends ``purpose``, ``file`` and ``expires_after[anchor]`` /
``expires_after[seconds]`` as parts. Parts are returned as memoryview slices of the
request body, so a 200 MB upload is not copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from batchframe._server._errors import bad_request

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class Part:
    """One part of a multipart body."""

    name: str
    filename: str | None
    content_type: str | None
    data: memoryview


def _params(header_value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, raw in _PARAM.findall(";" + header_value.split(";", 1)[-1]):
        value = raw.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key.lower()] = value
    return out


def boundary_of(content_type: str) -> bytes:
    """Return the boundary of a ``multipart/form-data`` content type."""
    if not content_type.lower().startswith("multipart/form-data"):
        msg = "Expected a multipart/form-data request body."
        raise bad_request(msg)
    boundary = _params(content_type).get("boundary")
    if not boundary:
        msg = "The multipart/form-data request body has no boundary."
        raise bad_request(msg)
    return boundary.encode("latin-1")


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a ``multipart/form-data`` body into its parts.

    Raises
    ------
    ApiError
        HTTP 400 when the body is not well-formed multipart.
    """
    delimiter = b"--" + boundary_of(content_type)
    view = memoryview(body)
    parts: list[Part] = []
    pos = body.find(delimiter)
    malformed = "Could not parse the multipart/form-data request body."
    if pos < 0:
        raise bad_request(malformed)
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return parts
        if body[pos : pos + 2] == b"\r\n":
            pos += 2
        header_end = body.find(b"\r\n\r\n", pos)
        if header_end < 0:
            raise bad_request(malformed)
        headers: dict[str, str] = {}
        for line in body[pos:header_end].decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        start = header_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise bad_request(malformed)
        disposition = _params(headers.get("content-disposition", ""))
        parts.append(
            Part(
                name=disposition.get("name", ""),
                filename=disposition.get("filename"),
                content_type=headers.get("content-type"),
                data=view[start:end],
            )
        )
        pos = end + 2
