"""``LocalBatchServer``: the OpenAI Files + Batches API on 127.0.0.1, for tests and demos."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from batchframe._server._echo import Executor, echo
from batchframe._server._forward import Forwarder
from batchframe._server._http import Call, Frontend, LoopbackServer
from batchframe._server._lifecycle import Lifecycle, RunConfig
from batchframe._server._provider import ServerProfile
from batchframe._server._routes import App
from batchframe._server._store import Store, public_file
from batchframe._server._validate import FileLimits

if TYPE_CHECKING:
    import openai

    from batchframe._providers import Provider


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        msg = f"{name} must be between 0 and 1, got {value!r}."
        raise ValueError(msg)


def _check_positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        msg = f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}."
        raise ValueError(msg)


class LocalBatchServer:
    """A local OpenAI Files + Batches API server over real HTTP on 127.0.0.1.

    It serves ``/v1/files`` and ``/v1/batches`` exactly as the API does (objects,
    statuses, error bodies, limits), runs batches in the background and answers the
    synchronous endpoints (``/v1/chat/completions``, ``/v1/embeddings``, ...) with the
    same executor. It starts serving when constructed; use it as a context manager, or
    call :meth:`close`.

    Parameters
    ----------
    executor
        ``"echo"`` (deterministic realistic answers), ``"forward"`` (send each request
        to ``upstream``) or a callable ``(endpoint, body) -> (status_code, body)``.
    upstream
        Base URL of an OpenAI-compatible server, for ``executor="forward"``.
    upstream_api_key
        Bearer token sent to ``upstream``.
    requests_per_second
        Execution speed of batch requests, shared by all batches; ``None`` runs as fast
        as possible.
    failure_rate
        Share of requests inside batches answered with a 500 ``server_error`` body.
        Drawn per ``custom_id`` and attempt from ``seed``, so a resubmitted request
        gets a fresh draw.
    api_error_rate
        Share of API calls answered 429 (with ``retry-after``) or 500 before they take
        effect, drawn from ``seed`` in call order.
    completion_window_seconds
        Batches not done this long after creation expire, keeping finished lines.
    queue_token_limit
        Enqueued input tokens allowed per model (an int for every model or a mapping
        ``model -> limit``); a batch that would pass it fails ``token_limit_exceeded``.
        Tokens are estimated as in :mod:`batchframe._server._tokens` (~4 bytes each).
    validation_seconds
        Time a batch spends in ``validating``.
    seed
        Makes output order and injected faults reproducible.
    state_dir
        Directory that keeps files and batches, so a restarted server has them (and
        reruns batches that were still running). ``None`` keeps them in a temporary
        directory removed on close.
    api_key
        When given, every call must send ``Authorization: Bearer <api_key>``; others get
        the API's 401. ``None`` accepts any token.
    host, port
        Address to bind; port 0 picks a free port.
    max_concurrency
        Parallel requests per batch for ``"forward"`` and callable executors.
    max_requests_per_file, max_file_bytes, max_embedding_inputs
        Per-batch limits (``None``: the provider's; OpenAI's are 50,000 requests,
        209,715,200 bytes, 50,000 embedding inputs).
    retry_after_seconds
        Delay advertised by injected 429s (``retry-after-ms``; ``retry-after`` is rounded up).
    upstream_timeout
        Seconds per forwarded request before it fails with ``request_timeout``.
    provider
        Emulate a provider profile (``"openai"`` default, ``"azure"``,
        ``"azure-legacy"``, ``"groq"`` or a :class:`~batchframe.Provider`): its
        per-file limits, ``completion_window`` values (a window of ``n`` days lasts
        ``n`` times ``completion_window_seconds``), endpoints, line URLs, file cap,
        Azure's ``/openai/...`` paths and batches that never expire.
    upstream_adapt
        How ``"forward"`` rewrites each body for its upstream: ``"openai"`` (as is,
        default), ``"llama.cpp"`` (structured outputs as ``json_object`` + ``schema``),
        ``"vllm-guided"`` (``guided_json``, vLLM before 0.6) or a callable
        ``(endpoint, body) -> body``.
    max_files
        Files the server holds at most (uploads past it get HTTP 400
        ``quota_exceeded``); ``None``: the provider's cap (Azure: 500, or 10,000
        for uploads with ``expires_after``).

    Examples
    --------
    >>> import batchframe as bf
    >>> line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
    >>> line += b'"body": {"model": "text-embedding-3-small", "input": "hi"}}'
    >>> with bf.LocalBatchServer() as server:
    ...     client = server.client()
    ...     file = client.files.create(file=("in.jsonl", line), purpose="batch")
    ...     batch = client.batches.create(
    ...         input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"
    ...     )
    ...     server.wait_idle(10)
    ...     client.batches.retrieve(batch.id).status
    True
    'completed'
    """

    def __init__(
        self,
        executor: str | Executor = "echo",
        *,
        upstream: str | None = None,
        upstream_api_key: str | None = None,
        requests_per_second: float | None = None,
        failure_rate: float = 0.0,
        api_error_rate: float = 0.0,
        completion_window_seconds: float = 86_400.0,
        queue_token_limit: int | Mapping[str, int] | None = None,
        validation_seconds: float = 0.0,
        seed: int = 0,
        state_dir: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrency: int = 8,
        max_requests_per_file: int | None = None,
        max_file_bytes: int | None = None,
        max_embedding_inputs: int | None = None,
        retry_after_seconds: float = 0.05,
        upstream_timeout: float = 600.0,
        provider: str | Provider | None = None,
        max_files: int | None = None,
        upstream_adapt: str | Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        profile = ServerProfile.of(provider, max_files)
        limits = profile.provider.limits
        max_requests_per_file = max_requests_per_file or limits.max_requests
        max_file_bytes = max_file_bytes or limits.max_bytes
        max_embedding_inputs = max_embedding_inputs or limits.max_embedding_inputs
        run: Executor
        if executor == "echo":
            run, concurrency = echo, 1
        elif executor == "forward":
            if not upstream:
                msg = 'executor="forward" needs upstream=, the base URL of an OpenAI-compatible server.'
                raise ValueError(msg)
            run = Forwarder(
                upstream, api_key=upstream_api_key, timeout=upstream_timeout, adapt=upstream_adapt
            )
            concurrency = max_concurrency
        elif callable(executor):
            run, concurrency = executor, max_concurrency
        else:
            msg = f'executor must be "echo", "forward" or a callable, got {executor!r}.'
            raise ValueError(msg)
        _check_rate("failure_rate", failure_rate)
        _check_rate("api_error_rate", api_error_rate)
        _check_positive("requests_per_second", requests_per_second)
        _check_positive("completion_window_seconds", completion_window_seconds)
        _check_positive("validation_seconds", validation_seconds, allow_zero=True)
        _check_positive("retry_after_seconds", retry_after_seconds)
        for name, value in (
            ("max_concurrency", max_concurrency),
            ("max_requests_per_file", max_requests_per_file),
            ("max_file_bytes", max_file_bytes),
            ("max_embedding_inputs", max_embedding_inputs),
        ):
            _check_positive(name, value)
        config = RunConfig(
            executor=run,
            concurrency=concurrency,
            requests_per_second=requests_per_second,
            failure_rate=failure_rate,
            completion_window_seconds=float(completion_window_seconds),
            queue_token_limit=queue_token_limit,
            validation_seconds=float(validation_seconds),
            seed=seed,
            limits=FileLimits(max_requests_per_file, max_file_bytes, max_embedding_inputs),
        )
        self._api_key = api_key
        self._clients: list[Any] = []
        self._closed = False
        self._store = Store(state_dir)
        try:
            self._lifecycle = Lifecycle(self._store, config)
            app = App(
                self._store,
                self._lifecycle,
                run,
                window_seconds=config.completion_window_seconds,
                profile=profile,
            )
            self._frontend = Frontend(
                app,
                api_key=api_key,
                api_error_rate=api_error_rate,
                retry_after=retry_after_seconds,
                seed=seed,
            )
            self._http = LoopbackServer(host, port, self._frontend)
        except BaseException:
            self._store.close()
            raise
        self._host = host
        self._port: int = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="bf-local-server", daemon=True
        )
        self._thread.start()
        self._lifecycle.resume()

    # -- addresses and clients ----------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL, ``"http://127.0.0.1:<port>/v1"``."""
        return f"http://{self._host}:{self._port}/v1"

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    def client(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> openai.OpenAI:
        """Return an ``openai.OpenAI`` client pointed at this server.

        The client carries the server's ``api_key`` (or a placeholder) and is closed
        with the server.

        Parameters
        ----------
        max_retries
            The SDK's retry count for 429/5xx answers (SDK default: 2).
        timeout
            Seconds per HTTP request.
        """
        from batchframe._api import make_client

        client = make_client(
            self.base_url,
            api_key=self._api_key or "local",
            max_retries=max_retries,
            timeout=timeout,
        )
        self._clients.append(client)
        return client

    # -- inspection ----------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every call answered so far, oldest first.

        Each is a :class:`~batchframe._server._http.Call` named tuple
        ``(method, path, status, object_id, body, query, fault, time)``.
        """
        return self._frontend.snapshot()

    def clear_calls(self) -> None:
        """Forget the calls recorded so far."""
        self._frontend.clear()

    def batches_created(self) -> list[dict[str, Any]]:
        """Return the batches created through ``POST /v1/batches``, in call order, as they are now.

        A call whose answer was lost (``fail_next(..., after=True)``) still counts: the
        batch exists.
        """
        ids = [
            c.object_id
            for c in self.calls
            if c.method == "POST" and c.path == "/v1/batches" and c.object_id is not None
        ]
        return [b for b in (self._store.batch_json(i) for i in ids) if b is not None]

    def batches(self) -> list[dict[str, Any]]:
        """Every batch the server holds, oldest first (deep copies of the API objects)."""
        return list(reversed(self._store.list_batches()))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """One batch object, as ``GET /v1/batches/{id}`` would return it.

        Raises
        ------
        KeyError
            If there is no such batch.
        """
        found = self._store.batch_json(batch_id)
        if found is None:
            raise KeyError(batch_id)
        return found

    def files(self) -> list[dict[str, Any]]:
        """Every live file, oldest first (FileObject dicts)."""
        return [public_file(m) for m in self._store.list_files()]

    def file_content(self, file_id: str) -> bytes:
        """Return the bytes of a file.

        Raises
        ------
        KeyError
            If there is no such file.
        """
        data = self._store.read_content(file_id)
        if data is None:
            raise KeyError(file_id)
        return data

    def enqueued_tokens(self) -> dict[str, int]:
        """Estimated input tokens of the batches running now, per model."""
        return self._lifecycle.enqueued_tokens()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no batch is running; return ``False`` if ``timeout`` passed first."""
        return self._lifecycle.wait_idle(timeout)

    # -- fault injection -----------------------------------------------------------------

    def fail_next(
        self, method: str, path: str, *, status: int = 500, times: int = 1, after: bool = False
    ) -> None:
        """Answer the next ``times`` calls matching ``method`` and ``path`` with an error.

        Parameters
        ----------
        method
            HTTP method, e.g. ``"POST"``.
        path
            Path pattern (``fnmatch`` wildcards), e.g. ``"/v1/batches"`` or ``"/v1/files/*"``.
        status
            HTTP status of the error (429 answers carry ``retry-after``).
        times
            How many matching calls fail.
        after
            Let the call take effect first and lose its answer, as a dropped connection
            would (e.g. a batch is created, the client sees a 500 and may retry).
        """
        self._frontend.fail_next(method, path, status=status, times=times, after=after)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving, stop background work and release every resource (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._http.close_all()
        self._thread.join(5.0)
        self._lifecycle.close()
        self._store.close()

    def __enter__(self) -> LocalBatchServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.base_url
        return f"LocalBatchServer({state})"
