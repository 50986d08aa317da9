"""Everything that touches the ``openai`` package lives here.

No other batchframe module imports ``openai`` at run time; they call these functions.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from batchframe.exceptions import APIError

if TYPE_CHECKING:
    import openai

    from batchframe._storage import Storage


def make_client(
    base_url: str | None = None,
    *,
    api_key: str | None = None,
    max_retries: int | None = None,
    timeout: float | None = None,
) -> openai.OpenAI:
    """Build an ``openai.OpenAI`` client; ``None`` arguments fall back to the SDK's defaults.

    Parameters
    ----------
    base_url
        API base URL such as ``"http://127.0.0.1:8000/v1"``. ``None`` reads
        ``OPENAI_BASE_URL`` or uses the public API, as the SDK does.
    api_key
        ``None`` reads ``OPENAI_API_KEY`` as the SDK does.
    max_retries
        The SDK's own retry count for transient HTTP errors.
    timeout
        Seconds per HTTP request.
    """
    import openai

    kwargs: dict[str, Any] = {}
    if base_url is not None:
        kwargs["base_url"] = base_url
    if api_key is not None:
        kwargs["api_key"] = api_key
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    if timeout is not None:
        kwargs["timeout"] = timeout
    return openai.OpenAI(**kwargs)


def strict_json_schema(model: Any) -> dict[str, Any]:
    """Return the strict JSON schema the API expects for a pydantic model class.

    Uses the openai package's own converter, so the result is exactly what
    ``client.chat.completions.parse`` would send.
    """
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(model)


def strict_raw_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a raw JSON schema in the strict form, by the openai package's rules.

    The same walk as for pydantic models (``to_strict_json_schema``): every object
    closed, every property required, ``$ref`` siblings unravelled. It knows the JSON
    Schema keywords, so a *property* named ``properties`` or ``type`` stays a property.
    """
    import copy

    from openai.lib._pydantic import _ensure_strict_json_schema

    out = copy.deepcopy(schema)
    return _ensure_strict_json_schema(out, path=(), root=out)


# ======================================================================================
# Batch/Files adapter used by BatchJob (owned by the job module's author).
#
# Everything below wraps the SDK so the rest of batchframe sees only its own frozen
# dataclasses and `batchframe.exceptions.APIError` (with operation, status_code, code
# and retryable set). Every call runs with the SDK's own retries switched off and is
# retried here instead, with backoff, so that:
#   * `batches.create` can never be silently re-sent by the SDK (it has no idempotency
#     key); before re-sending, the batches list is searched for the metadata tags;
#   * downloads restart from scratch into an atomic write, so a dropped connection never
#     leaves half a file behind.
# ======================================================================================

_log = logging.getLogger("batchframe")
_T = TypeVar("_T")

#: Batch statuses that will not change any more.
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
_RETRY_STATUS_CODES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCounts:
    """Lines of a batch by outcome so far (``Batch.request_counts``)."""

    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchErrorInfo:
    """One batch-level (validation) error: ``Batch.errors.data[i]``."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteBatch:
    """The parts of an API ``Batch`` object batchframe uses. File ids are ``None`` when absent or ``""``."""

    id: str
    status: str
    endpoint: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    model: str | None = None
    created_at: int = 0
    timestamps: dict[str, int] = field(default_factory=dict, hash=False)
    request_counts: RequestCounts | None = None
    errors: tuple[BatchErrorInfo, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    usage: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def is_terminal(self) -> bool:
        """Whether the status is one of completed, failed, expired, cancelled."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFile:
    """The parts of an API ``FileObject`` batchframe uses."""

    id: str
    filename: str = ""
    bytes: int = 0
    created_at: int = 0
    purpose: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How client-level failures (429, 5xx, dropped connections) are retried.

    Parameters
    ----------
    max_tries
        Attempts per call, the first included.
    backoff
        Seconds before the second attempt; doubles each time, with up to 25 % jitter.
    max_backoff
        Cap of one wait (a server's ``Retry-After`` is honoured up to ``max_retry_after``).
    max_retry_after
        Longest ``Retry-After`` honoured, in seconds.
    """

    max_tries: int = 8
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 60.0

    def delay(self, try_index: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``try_index + 1`` (0-based ``try_index``)."""
        if retry_after is not None and 0 <= retry_after <= self.max_retry_after:
            return retry_after
        base = min(self.backoff * (2.0**try_index), self.max_backoff)
        return base * (1.0 - 0.25 * random.random())


def _classify(exc: BaseException) -> tuple[bool, int | None, str | None, float | None] | None:
    """(retryable, status_code, code, retry_after) for SDK/transport errors, else None."""
    import httpx2
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = exc.code if isinstance(exc.code, str) else None
        retry_after = None
        try:
            raw = exc.response.headers.get("retry-after-ms")
            if raw is not None:
                retry_after = float(raw) / 1000.0
            else:
                raw = exc.response.headers.get("retry-after")
                if raw is not None:
                    retry_after = float(raw)
        except (TypeError, ValueError):
            retry_after = None
        retryable = status in _RETRY_STATUS_CODES or status >= 500
        return retryable, status, code, retry_after
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError | httpx2.StreamError):
        return True, None, None, None
    if isinstance(exc, openai.APIError):
        return False, None, getattr(exc, "code", None), None
    return None


def _describe(exc: BaseException, secret: str = "") -> str:
    """Short text of an SDK error, without request headers or the API key."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    message = " ".join(str(message).split())
    if len(secret) >= 8:
        message = message.replace(secret, "***")
    return f"{name}{f' {status}' if status else ''}: {message[:300]}"


def _to_remote(batch: Any) -> RemoteBatch:
    counts = getattr(batch, "request_counts", None)
    rc = None
    if counts is not None:
        rc = RequestCounts(
            total=int(getattr(counts, "total", 0) or 0),
            completed=int(getattr(counts, "completed", 0) or 0),
            failed=int(getattr(counts, "failed", 0) or 0),
        )
    errors: list[BatchErrorInfo] = []
    errs = getattr(batch, "errors", None)
    for e in (getattr(errs, "data", None) or []) if errs is not None else []:
        errors.append(
            BatchErrorInfo(
                code=getattr(e, "code", None),
                message=getattr(e, "message", None),
                param=getattr(e, "param", None),
                line=getattr(e, "line", None),
            )
        )
    timestamps = {}
    for name in (
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ):
        value = getattr(batch, name, None)
        if value is not None:
            timestamps[name] = int(value)
    usage = getattr(batch, "usage", None)
    return RemoteBatch(
        id=str(batch.id),
        status=str(batch.status),
        endpoint=getattr(batch, "endpoint", None),
        input_file_id=getattr(batch, "input_file_id", None) or None,
        output_file_id=getattr(batch, "output_file_id", None) or None,
        error_file_id=getattr(batch, "error_file_id", None) or None,
        model=getattr(batch, "model", None),
        created_at=int(getattr(batch, "created_at", 0) or 0),
        timestamps=timestamps,
        request_counts=rc,
        errors=tuple(errors),
        metadata={str(k): str(v) for k, v in (getattr(batch, "metadata", None) or {}).items()},
        usage=usage.model_dump() if usage is not None and hasattr(usage, "model_dump") else None,
    )


class BatchAPI:
    """The Files + Batches calls batchframe makes, over an ``openai.OpenAI`` client.

    Parameters
    ----------
    client
        An ``openai.OpenAI`` client. ``None`` builds one from the environment
        (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``).
    retry
        Retry policy for transient failures (429, 5xx, connection errors). The SDK's
        own retries are switched off for every call made here.
    sleep
        Called to wait between retries (tests pass a fake).
    """

    def __init__(
        self,
        client: openai.OpenAI | None = None,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if client is None:
            client = make_client()
        self._client: openai.OpenAI = client.with_options(max_retries=0)
        # Only used to scrub the key out of error texts that echo it back.
        self._scrub = str(getattr(client, "api_key", "") or "")
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle for another process (a Dask or Ray executor) without the API key.

        The copy calls the same base URL with the key of the environment it is
        unpickled in (``OPENAI_API_KEY``), so the key never travels with a task.
        """
        from batchframe._remote_api import RemoteAPI

        return (RemoteAPI, (str(self._client.base_url), self.retry))

    def __repr__(self) -> str:
        # Deliberately no api key, and no base URL credentials.
        return f"{type(self).__name__}(base_url={str(self._client.base_url)!r})"

    # -- retry core ------------------------------------------------------------------------
    def _call(
        self,
        operation: str,
        fn: Callable[[], _T],
        *,
        before_retry: Callable[[], _T | None] | None = None,
    ) -> _T:
        last: BaseException | None = None
        info: tuple[bool, int | None, str | None, float | None] | None = None
        for i in range(self.retry.max_tries):
            if i > 0 and before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
            try:
                return fn()
            except Exception as exc:
                info = _classify(exc)
                if info is None:
                    raise
                retryable, status, code, retry_after = info
                last = exc
                if not retryable:
                    msg = (
                        f"`{operation}` was refused by the API ({_describe(exc, self._scrub)}); "
                        "check the request, the model name and the account's access, then retry"
                    )
                    raise APIError(
                        msg, operation=operation, status_code=status, code=code, retryable=False
                    ) from exc
                if i + 1 < self.retry.max_tries:
                    delay = self.retry.delay(i, retry_after)
                    _log.log(
                        logging.DEBUG if i < 2 else logging.INFO,
                        "%s failed (%s); retrying in %.2f s (try %d of %d)",
                        operation,
                        _describe(exc, self._scrub),
                        delay,
                        i + 2,
                        self.retry.max_tries,
                    )
                    self._sleep(delay)
        assert last is not None
        assert info is not None
        msg = (
            f"`{operation}` kept failing after {self.retry.max_tries} tries "
            f"(last: {_describe(last, self._scrub)}); the job state is saved, call the same method again later"
        )
        raise APIError(
            msg, operation=operation, status_code=info[1], code=info[2], retryable=True
        ) from last

    # -- files -----------------------------------------------------------------------------
    def upload(
        self,
        storage: Storage,
        rel: str,
        *,
        filename: str,
        expires_after: int | None = None,
        n_bytes: int | None = None,
    ) -> str:
        """Upload ``rel`` from ``storage`` as a ``purpose="batch"`` file; return its id.

        ``expires_after`` (seconds after creation) makes the provider delete the file
        by itself. When an attempt fails with its outcome unknown (a lost answer), the
        files list is searched for ``filename`` (of ``n_bytes`` bytes, when given)
        before the next attempt, and a file found there is returned instead of
        uploading a second copy.
        """
        started = int(time.time())

        def once() -> str:
            kwargs: dict[str, Any] = {}
            if expires_after is not None:
                kwargs["expires_after"] = {"anchor": "created_at", "seconds": int(expires_after)}
            with storage.open_read(rel) as f:
                obj = self._client.files.create(
                    file=(filename, f, "application/jsonl"), purpose="batch", **kwargs
                )
            return str(obj.id)

        def reconcile() -> str | None:
            try:
                files = self.list_files(purpose="batch")
            except APIError:
                return None  # cannot tell: upload again (a stray copy is swept later)
            for found in files:
                if (
                    found.filename == filename
                    and (n_bytes is None or found.bytes == n_bytes)
                    and found.created_at >= started - 3600
                ):
                    _log.info(
                        "adopting file %s uploaded by an attempt whose answer was lost", found.id
                    )
                    return found.id
            return None

        return self._call("files.create", once, before_retry=reconcile)

    def list_files(self, *, purpose: str | None = "batch") -> list[RemoteFile]:
        """Every file of ``purpose`` on the account (all pages), newest first."""
        out: list[RemoteFile] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 10_000, "order": "desc"}
            if purpose is not None:
                kwargs["purpose"] = purpose
            if after is not None:
                kwargs["after"] = after

            def page_once(kwargs: dict[str, Any] = kwargs) -> Any:
                return self._client.files.list(**kwargs)

            page = self._call("files.list", page_once)
            data = list(page.data or [])
            out.extend(
                RemoteFile(
                    id=str(f.id),
                    filename=str(getattr(f, "filename", "") or ""),
                    bytes=int(getattr(f, "bytes", 0) or 0),
                    created_at=int(getattr(f, "created_at", 0) or 0),
                    purpose=str(getattr(f, "purpose", "") or ""),
                )
                for f in data
            )
            if not data or getattr(page, "has_more", False) is not True:
                break
            after = str(data[-1].id)
        return out

    def delete_file(self, file_id: str) -> bool:
        """Delete file ``file_id``; ``False`` when it was gone already (404)."""
        try:
            self._call("files.delete", lambda: self._client.files.delete(file_id))
        except APIError as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def download(self, file_id: str, storage: Storage, rel: str) -> int:
        """Stream file ``file_id`` into ``rel`` (atomically); return the bytes written."""

        def once() -> int:
            n = 0
            with (
                self._client.files.with_streaming_response.content(file_id) as response,
                storage.open_write(rel) as out,
            ):
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    n += len(chunk)
            return n

        return self._call("files.content", once)

    # -- batches ---------------------------------------------------------------------------
    def create_batch(
        self,
        input_file_id: str,
        *,
        endpoint: str,
        metadata: Mapping[str, str],
        completion_window: str = "24h",
        created_after: int | None = None,
        output_expires_after: int | None = None,
    ) -> RemoteBatch:
        """Create a batch exactly once.

        The request is sent with no SDK retries. When an attempt fails in a way that
        leaves its outcome unknown, the batches list is searched for ``metadata``
        before the next attempt, and a batch found there is returned instead of
        creating a second one.
        """
        meta = {str(k): str(v) for k, v in metadata.items()}
        extra: dict[str, Any] = {}
        if output_expires_after is not None:
            extra["output_expires_after"] = {
                "anchor": "created_at",
                "seconds": int(output_expires_after),
            }

        def once() -> RemoteBatch:
            batch = self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=endpoint,  # type: ignore[arg-type]  # any endpoint string passes at runtime
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=meta,
                **extra,
            )
            return _to_remote(batch)

        def reconcile() -> RemoteBatch | None:
            found = self.find_batches(meta, created_after=created_after)
            return found[0] if found else None

        return self._call("batches.create", once, before_retry=reconcile)

    def retrieve_batch(self, batch_id: str) -> RemoteBatch:
        """Return the current state of batch ``batch_id``."""
        return self._call(
            "batches.retrieve", lambda: _to_remote(self._client.batches.retrieve(batch_id))
        )

    def cancel_batch(self, batch_id: str) -> RemoteBatch:
        """Ask for ``batch_id`` to be cancelled; a batch already finished is returned as is."""
        try:
            return self._call(
                "batches.cancel", lambda: _to_remote(self._client.batches.cancel(batch_id))
            )
        except APIError as exc:
            if exc.retryable or exc.status_code is None or exc.status_code == 404:
                raise
            # 400/409: not cancellable any more (already terminal); report its state.
            return self.retrieve_batch(batch_id)

    def find_batches(
        self, metadata: Mapping[str, str], *, created_after: int | None = None
    ) -> list[RemoteBatch]:
        """Every batch whose metadata contains all of ``metadata``, oldest first.

        Pages through ``batches.list`` (newest first); stops at the first page that is
        entirely older than ``created_after`` (unix seconds), when given.
        """
        want = {str(k): str(v) for k, v in metadata.items()}
        out: list[RemoteBatch] = []
        after: str | None = None
        previous_created: int | None = None
        descending = True
        while True:
            cursor = after

            def page_once(cursor: str | None = cursor) -> Any:
                if cursor is None:
                    return self._client.batches.list(limit=100)
                return self._client.batches.list(limit=100, after=cursor)

            page = self._call("batches.list", page_once)
            data = list(page.data or [])
            if not data:
                break
            all_old = created_after is not None
            for item in data:
                remote = _to_remote(item)
                if previous_created is not None and remote.created_at > previous_created:
                    descending = False
                previous_created = remote.created_at
                if created_after is not None and remote.created_at >= created_after:
                    all_old = False
                if all(remote.metadata.get(k) == v for k, v in want.items()):
                    out.append(remote)
            if all_old and descending:
                break
            if page.has_more is False:
                break
            after = str(data[-1].id)
        out.sort(key=lambda b: (b.created_at, b.id))
        return out
