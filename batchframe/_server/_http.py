"""HTTP plumbing: a threading HTTP/1.1 server on loopback, auth, fault injection, call log.

Every answered call is appended to the call log as a :class:`Call`. API errors can be
injected at random (``api_error_rate``: half 429 with ``retry-after``, half 500) or on
purpose (:meth:`Frontend.fail_next`, optionally *after* the call took effect, which is
how a lost response looks to a client).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hmac
import logging
import math
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import orjson

from batchframe._server._errors import SERVER_ERROR_MESSAGE, ApiError, error_body
from batchframe._server._routes import MAX_UPLOAD_BYTES, App, Reply, Request

log = logging.getLogger("batchframe.server")

_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class Call(NamedTuple):
    """One call the server answered.

    Attributes
    ----------
    method
        HTTP method, e.g. ``"POST"``.
    path
        Path without the query, e.g. ``"/v1/batches"``.
    status
        HTTP status sent back.
    object_id
        The object the call created or addressed (file or batch id), if any.
    body
        The parsed JSON body (uploads: ``{"purpose", "filename", "bytes", "expires_after"}``),
        or ``None``.
    query
        Query parameters.
    fault
        ``"api_error_rate"`` or ``"fail_next"`` when the answer was an injected error.
    time
        Unix time when the call was answered.
    """

    method: str
    path: str
    status: int
    object_id: str | None
    body: Any
    query: dict[str, str]
    fault: str | None
    time: float


@dataclass
class _Planned:
    method: str
    pattern: str
    status: int
    remaining: int
    after: bool


def _mask(key: str) -> str:
    return f"{key[:3]}{'*' * 8}{key[-4:]}" if len(key) > 10 else "*" * 8


def rate_limited(retry_after: float) -> ApiError:
    """Return the API's 429 answer, with ``retry-after`` headers."""
    headers = {
        "retry-after": str(max(1, math.ceil(retry_after))),
        "retry-after-ms": str(int(retry_after * 1000)),
    }
    message = "Rate limit reached for requests. Please try again in a moment."
    return ApiError(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


class Frontend:
    """Auth, fault injection and the call log in front of an :class:`App`."""

    def __init__(
        self, app: App, *, api_key: str | None, api_error_rate: float, retry_after: float, seed: int
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.api_error_rate = api_error_rate
        self.retry_after = retry_after
        self._rng = random.Random(f"api:{seed}")
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self._planned: list[_Planned] = []

    def snapshot(self) -> list[Call]:
        """Return a copy of the call log."""
        with self._lock:
            return list(self.calls)

    def clear(self) -> None:
        """Empty the call log."""
        with self._lock:
            self.calls.clear()

    def fail_next(self, method: str, pattern: str, *, status: int, times: int, after: bool) -> None:
        """Answer the next ``times`` matching calls with ``status``."""
        with self._lock:
            self._planned.append(_Planned(method.upper(), pattern, status, times, after))

    def _take_planned(self, method: str, path: str) -> _Planned | None:
        with self._lock:
            for plan in self._planned:
                if plan.method == method and fnmatch.fnmatchcase(path, plan.pattern):
                    plan.remaining -= 1
                    if plan.remaining <= 0:
                        self._planned.remove(plan)
                    return plan
        return None

    def _random_fault(self) -> ApiError | None:
        if self.api_error_rate <= 0:
            return None
        with self._lock:
            hit = self._rng.random() < self.api_error_rate
            limited = self._rng.random() < 0.5
        if not hit:
            return None
        return rate_limited(self.retry_after) if limited else self._server_error()

    def _server_error(self) -> ApiError:
        # Deviation, for fast test suites: the real API's 500s carry no retry-after; these
        # advertise ``retry_after_seconds`` so SDK retries do not back off for seconds.
        headers = {"retry-after-ms": str(int(self.retry_after * 1000))}
        return ApiError(500, SERVER_ERROR_MESSAGE, type="server_error", headers=headers)

    def _check_auth(self, headers: dict[str, str]) -> None:
        if self.api_key is None:
            return
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise ApiError(401, _MISSING_KEY)
        given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            msg = f"Incorrect API key provided: {_mask(given)}. You can find your API key in your server's configuration."
            raise ApiError(401, msg, code="invalid_api_key")

    def serve(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request and log it."""
        parts = urlsplit(target)
        request = Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body)
        fault: str | None = None
        reply: Reply
        try:
            self._check_auth(headers)
            plan = self._take_planned(method, request.path)
            random_fault = None if plan is not None else self._random_fault()
            if plan is not None and not plan.after:
                fault = "fail_next"
                raise self._planned_error(plan.status)
            if random_fault is not None:
                fault = "api_error_rate"
                raise random_fault
            reply = self.app.handle(request)
            if plan is not None:  # the call took effect; its answer is lost
                fault = "fail_next"
                object_id = reply.object_id
                reply = self._error_reply(self._planned_error(plan.status))
                reply.object_id = object_id
        except ApiError as exc:
            reply = self._error_reply(exc)
        except Exception as exc:
            log.exception("error answering %s %s", method, target)
            reply = self._error_reply(
                ApiError(500, f"{SERVER_ERROR_MESSAGE} ({exc!r})", type="server_error")
            )
        call = Call(
            method,
            request.path,
            reply.status,
            reply.object_id,
            request.summary,
            request.query,
            fault,
            time.time(),
        )
        with self._lock:
            self.calls.append(call)
        return reply

    def _planned_error(self, status: int) -> ApiError:
        if status == 429:
            return rate_limited(self.retry_after)
        if status >= 500:
            error = self._server_error()
            error.status = status
            return error
        return ApiError(status, "Injected error.")

    @staticmethod
    def _error_reply(exc: ApiError) -> Reply:
        return Reply(status=exc.status, payload=exc.body(), headers=exc.headers)


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: LoopbackServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_UPLOAD_BYTES + (1 << 20):
                    raise _BodyError(413, "File is too large.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES + (1 << 20):
            raise _BodyError(413, "File is too large.")
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        try:
            body = self._read_body()
        except (_BodyError, ValueError) as exc:
            self.close_connection = True
            status = exc.status if isinstance(exc, _BodyError) else 400
            self._send(Reply(status=status, payload=error_body(str(exc))))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.frontend.serve(method, self.path, headers, body)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        stream = None
        if reply.file is not None:
            try:
                stream = open(reply.file, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                reply = Reply(status=404, payload=error_body("No such File object."))
        try:
            self.send_response(reply.status)
            self.send_header("x-request-id", "req_" + secrets.token_hex(12))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if stream is not None:
                size = reply.file.stat().st_size if reply.file is not None else 0
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.connection.sendfile(stream)
            else:
                data = orjson.dumps(reply.payload)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if stream is not None:
                stream.close()


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server whose open connections can all be closed on shutdown."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, port: int, frontend: Frontend) -> None:
        super().__init__((host, port), _Handler)
        self.frontend = frontend
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._conn_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log (instead of printing) errors of a connection, such as a client hanging up."""
        log.debug("connection from %s failed", client_address, exc_info=True)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        """Remember (or forget) an open connection and its handler thread."""
        with self._conn_lock:
            if add:
                self._connections.add(connection)
                self._handlers.add(threading.current_thread())
            else:
                self._connections.discard(connection)
                self._handlers.discard(threading.current_thread())

    def close_all(self, timeout: float = 5.0) -> None:
        """Stop serving, close the listening socket and every open connection."""
        self.shutdown()
        self.server_close()
        with self._conn_lock:
            connections = list(self._connections)
            threads = list(self._handlers)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
