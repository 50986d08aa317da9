"""The API operations: Files, Batches and the synchronous model endpoints.

Pure request -> :class:`Reply` logic over a :class:`Store` and a :class:`Lifecycle`;
the socket side lives in :mod:`batchframe._server._http`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchframe._server._batch_object import make_batch
from batchframe._server._body_checks import check_body
from batchframe._server._echo import Executor
from batchframe._server._errors import ApiError, LineError, bad_request, not_found
from batchframe._server._forward import Forwarder
from batchframe._server._lifecycle import Lifecycle
from batchframe._server._multipart import parse_multipart
from batchframe._server._provider import ServerProfile
from batchframe._server._store import (
    BATCH_FILE_TTL_SECONDS,
    FILE_PURPOSES,
    BatchRecord,
    Store,
    public_file,
)
from batchframe._server._validate import ENDPOINTS, check_create_batch, check_expires_after

#: Largest accepted upload (the Files API's 512 MB per file).
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
_FILE = re.compile(r"^/v1/files/([^/]+)$")
_FILE_CONTENT = re.compile(r"^/v1/files/([^/]+)/content$")
_BATCH = re.compile(r"^/v1/batches/([^/]+)$")
_BATCH_CANCEL = re.compile(r"^/v1/batches/([^/]+)/cancel$")


@dataclass
class Reply:
    """What to answer: a JSON payload or a file to stream."""

    status: int = 200
    payload: Any = None
    file: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    object_id: str | None = None


@dataclass
class Request:
    """A parsed HTTP request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    summary: Any = None


def parse_json(request: Request) -> Any:
    """Parse (once) and return the JSON body of a request."""
    if request.json is None:
        try:
            request.json = orjson.loads(request.body) if request.body else {}
        except orjson.JSONDecodeError:
            msg = (
                "We could not parse the JSON body of your request. The OpenAI API expects a "
                "JSON payload, but what was sent was not valid JSON."
            )
            raise bad_request(msg) from None
        request.summary = request.json
    return request.json


def _missing(*, param: str) -> ApiError:
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _limit(query: dict[str, str], default: int, maximum: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        msg = f"Invalid type for 'limit': expected an integer, but got '{raw}' instead."
        raise bad_request(msg, param="limit", code="invalid_type") from None
    if value < 1:
        msg = f"Integer below minimum value. Expected a value >= 1, but got {value} instead."
        raise bad_request(msg, param="limit", code="integer_below_min_value")
    if value > maximum:
        msg = (
            f"Integer above maximum value. Expected a value <= {maximum}, but got {value} instead."
        )
        raise bad_request(msg, param="limit", code="integer_above_max_value")
    return value


def _page(
    items: list[dict[str, Any]], query: dict[str, str], default: int, maximum: int
) -> dict[str, Any]:
    limit = _limit(query, default, maximum)
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


class App:
    """Answers API requests."""

    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        executor: Executor,
        *,
        window_seconds: float,
        profile: ServerProfile | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.executor = executor
        self.window_seconds = window_seconds
        self.profile = profile or ServerProfile()
        # Uploads admitted under the file cap whose bytes are still being stored: they
        # count as files, so concurrent uploads cannot all pass the check at once.
        self._uploading = 0

    def handle(self, request: Request) -> Reply:
        """Route one request."""
        method, path = request.method, request.path.rstrip("/") or "/"
        path = self.profile.route(path)
        if path == "/v1/files":
            if method == "POST":
                return self.upload(request)
            if method == "GET":
                return self.list_files(request)
        elif path == "/v1/batches":
            if method == "POST":
                return self.create_batch(request)
            if method == "GET":
                return Reply(payload=_page(self.store.list_batches(), request.query, 20, 100))
        elif method == "POST" and path in ENDPOINTS:
            return self.sync_endpoint(request)
        elif match := _FILE_CONTENT.match(path):
            if method == "GET":
                return self.file_content(match.group(1))
        elif match := _FILE.match(path):
            if method == "GET":
                return Reply(
                    payload=public_file(self._file(match.group(1))), object_id=match.group(1)
                )
            if method == "DELETE":
                return self.delete_file(match.group(1))
        elif match := _BATCH_CANCEL.match(path):
            if method == "POST":
                return self.cancel_batch(match.group(1))
        elif (match := _BATCH.match(path)) and method == "GET":
            return Reply(payload=self._batch(match.group(1)), object_id=match.group(1))
        msg = f"Invalid URL ({method} {request.path})"
        raise not_found(msg)

    # -- files ---------------------------------------------------------------------------

    def _file(self, file_id: str) -> dict[str, Any]:
        meta = self.store.get_file(file_id)
        if meta is None:
            msg = f"No such File object: {file_id}"
            raise not_found(msg, param="id")
        return meta

    def upload(self, request: Request) -> Reply:
        """``POST /v1/files`` (multipart: ``purpose``, ``file``, ``expires_after[...]``)."""
        parts = {
            p.name: p
            for p in parse_multipart(request.body, request.headers.get("content-type", ""))
        }
        purpose_part = parts.get("purpose")
        if purpose_part is None:
            raise _missing(param="purpose")
        purpose = bytes(purpose_part.data).decode("utf-8", "replace")
        if purpose not in FILE_PURPOSES:
            listed = ", ".join(f"'{p}'" for p in FILE_PURPOSES)
            msg = f"Invalid value: '{purpose}'. Supported values are: {listed}."
            raise bad_request(msg, param="purpose", code="invalid_value")
        file_part = parts.get("file")
        if file_part is None:
            raise _missing(param="file")
        if len(file_part.data) > MAX_UPLOAD_BYTES:
            msg = "File is too large."
            raise bad_request(msg, param="file")
        anchor, seconds = parts.get("expires_after[anchor]"), parts.get("expires_after[seconds]")
        now = int(time.time())
        expires_at = now + BATCH_FILE_TTL_SECONDS if purpose == "batch" else None
        expires_after = None
        if anchor is not None or seconds is not None:
            expires_after = {
                "anchor": bytes(anchor.data).decode() if anchor else None,
                "seconds": bytes(seconds.data).decode() if seconds else None,
            }
            expires_at = now + check_expires_after(expires_after, "expires_after")
        filename = file_part.filename or "upload"
        with self.store.lock:  # the check and the admission are one step
            self.profile.check_file_room(
                len(self.store.list_files()) + self._uploading,
                expiring=expires_after is not None,
            )
            self._uploading += 1
        request.summary = {"purpose": purpose, "filename": filename, "bytes": len(file_part.data)}
        request.summary["expires_after"] = expires_after
        try:
            meta = self.store.add_file(
                file_part.data, filename=filename, purpose=purpose, expires_at=expires_at
            )
        finally:
            with self.store.lock:
                self._uploading -= 1
        return Reply(payload=public_file(meta), object_id=meta["id"])

    def list_files(self, request: Request) -> Reply:
        """``GET /v1/files`` with ``purpose``, ``order``, ``after`` and ``limit``."""
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            msg = f"Invalid value: '{order}'. Supported values are: 'asc', 'desc'."
            raise bad_request(msg, param="order", code="invalid_value")
        files = [
            public_file(m) for m in self.store.list_files(purpose=request.query.get("purpose"))
        ]
        if order == "desc":
            files.reverse()
        return Reply(payload=_page(files, request.query, 10_000, 10_000))

    def delete_file(self, file_id: str) -> Reply:
        """``DELETE /v1/files/{id}``."""
        self._file(file_id)
        self.store.delete_file(file_id)
        return Reply(payload={"id": file_id, "object": "file", "deleted": True}, object_id=file_id)

    def file_content(self, file_id: str) -> Reply:
        """``GET /v1/files/{id}/content``: the raw bytes, streamed from disk."""
        self._file(file_id)
        return Reply(file=self.store.content_path(file_id), object_id=file_id)

    # -- batches -------------------------------------------------------------------------

    def _batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.store.batch_json(batch_id)
        if batch is None:
            msg = f"No batch found with id '{batch_id}'."
            raise not_found(msg, param="batch_id")
        return batch

    def create_batch(self, request: Request) -> Reply:
        """``POST /v1/batches``: check parameters (400/404), then start validating."""
        raw = parse_json(request)
        window, endpoint = self.profile.check_batch_params(raw)
        params = check_create_batch(self.profile.as_openai(raw))
        params["endpoint"] = endpoint if endpoint is not None else params["endpoint"]
        file_id = params["input_file_id"]
        meta = self.store.get_file(file_id)
        if meta is None:
            msg = f"No such File object: {file_id}"
            raise not_found(msg, param="input_file_id")
        if meta["purpose"] != "batch":
            msg = (
                f"Invalid 'input_file_id': the file {file_id} has purpose '{meta['purpose']}', but a "
                "batch input file must be uploaded with purpose 'batch'."
            )
            raise bad_request(msg, param="input_file_id", code="invalid_value")
        created = time.time()
        batch = make_batch(
            input_file_id=file_id,
            endpoint=params["endpoint"],
            metadata=params["metadata"],
            created=created,
            window_seconds=self.profile.window_seconds(window, self.window_seconds),
            completion_window=window or "24h",
        )
        record = BatchRecord(
            batch=batch,
            seq=self.store.next_seq(),
            created=created,
            output_expires_seconds=params["output_expires_seconds"],
            extra={"window_seconds": self.profile.window_seconds(window, self.window_seconds)},
        )
        self.store.add_batch(record)
        # Answer with the batch as created (`validating`), as the API does, even if the
        # background lifecycle moves it on before the reply is written.
        payload = self._batch(batch["id"])
        self.lifecycle.start(batch["id"])
        return Reply(payload=payload, object_id=batch["id"])

    def cancel_batch(self, batch_id: str) -> Reply:
        """``POST /v1/batches/{id}/cancel``."""
        self._batch(batch_id)
        self.lifecycle.cancel(batch_id)
        return Reply(payload=self._batch(batch_id), object_id=batch_id)

    # -- synchronous endpoints -----------------------------------------------------------

    def sync_endpoint(self, request: Request) -> Reply:
        """``POST /v1/chat/completions`` and friends, answered by the executor."""
        body = parse_json(request)
        if not isinstance(body, dict):
            msg = "The request body must be a JSON object."
            raise bad_request(msg)
        if body.get("stream"):
            msg = "LocalBatchServer does not stream responses: remove 'stream' or set it to false."
            raise bad_request(msg, param="stream", code="unsupported_value")
        # The endpoint's request validation, as for a line in a batch (see _body_checks).
        strict = not isinstance(self.executor, Forwarder)
        refused = check_body(request.path.rstrip("/"), body, strict_keys=strict)
        if refused is not None:
            raise refused
        try:
            status, payload = self.executor(request.path.rstrip("/"), body)
        except LineError as exc:
            raise ApiError(500, exc.message, type="server_error", code=exc.code) from exc
        except Exception as exc:  # a user executor that raised
            raise ApiError(500, f"The model server failed: {exc!r}", type="server_error") from exc
        return Reply(status=status, payload=payload)
