"""The ``forward`` executor: send each request to an upstream OpenAI-compatible server.

The line's ``url`` (``/v1/chat/completions``) is joined to ``upstream``: when the upstream
base URL already ends in ``/v1`` the prefix is not repeated, so both
``http://127.0.0.1:8080`` and ``http://127.0.0.1:8080/v1`` work. Upstream answers are
recorded as the API records them: any HTTP status with its JSON body (a body without an
``error`` object on a 4xx/5xx is wrapped in one); an unreachable upstream or a non-JSON
answer is a 500 ``server_error``; a timeout is the non-HTTP ``request_timeout`` error.
Only the standard library is used (no proxies, even if the environment names one).

Upstreams differ in what they accept; ``adapt`` rewrites each body for one:

* ``"openai"`` (default): sent as is (OpenAI, vLLM >= 0.6, another LocalBatchServer);
* ``"llama.cpp"``: llama.cpp's server takes a structured output only as
  ``response_format: {"type": "json_object", "schema": ...}`` and answers the
  ``json_schema`` form with HTTP 500, so that form is rewritten;
* ``"vllm-guided"``: vLLM before 0.6 takes the schema as ``guided_json``;
* or any callable ``(endpoint, body) -> body``.

The answer is recorded as is: its JSON content still fills the typed ``parsed``
column, since results are parsed against the schema the request carried.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

from batchframe._server._errors import REQUEST_TIMEOUT_MESSAGE, LineError, error_body


def upstream_url(upstream: str, endpoint: str) -> str:
    """Join an upstream base URL and a ``/v1/...`` endpoint without doubling ``/v1``."""
    base = upstream.rstrip("/")
    if base.endswith("/v1") and endpoint.startswith("/v1/"):
        return base + endpoint[3:]
    return base + endpoint


Adapter = Callable[[str, dict[str, Any]], dict[str, Any]]


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return schema
    return None


def to_llama_cpp(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """``json_schema`` response formats as llama.cpp's ``json_object`` + ``schema``."""
    schema = _schema_of(body)
    if schema is None:
        return body
    return {**body, "response_format": {"type": "json_object", "schema": schema}}


def to_vllm_guided(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """``json_schema`` response formats as vLLM's (pre-0.6) ``guided_json``."""
    schema = _schema_of(body)
    if schema is None:
        return body
    out = {k: v for k, v in body.items() if k != "response_format"}
    out["guided_json"] = schema
    return out


ADAPTERS: dict[str, Adapter | None] = {
    "openai": None,
    "llama.cpp": to_llama_cpp,
    "vllm-guided": to_vllm_guided,
}


def adapter(adapt: str | Adapter | None) -> Adapter | None:
    """The body rewriter for ``adapt`` (a name of :data:`ADAPTERS` or a callable)."""
    if adapt is None or callable(adapt):
        return adapt
    if adapt not in ADAPTERS:
        msg = f"upstream_adapt must be one of {', '.join(map(repr, ADAPTERS))} or a callable, got {adapt!r}."
        raise ValueError(msg)
    return ADAPTERS[adapt]


def _timeout() -> LineError:
    return LineError("request_timeout", REQUEST_TIMEOUT_MESSAGE)


class Forwarder:
    """Callable executor that POSTs each body to ``upstream``.

    Parameters
    ----------
    upstream
        Base URL of an OpenAI-compatible server (llama.cpp, vLLM, Ollama, another
        LocalBatchServer...).
    api_key
        Sent as ``Authorization: Bearer ...`` when given.
    timeout
        Seconds per upstream request; past it the line fails with ``request_timeout``.
    adapt
        Rewrites each body for the upstream: ``"openai"`` (as is), ``"llama.cpp"``,
        ``"vllm-guided"`` or a callable ``(endpoint, body) -> body`` (module docstring).
    """

    def __init__(
        self,
        upstream: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        adapt: str | Adapter | None = None,
    ) -> None:
        self.upstream = upstream
        self._adapt = adapter(adapt)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __call__(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Forward one request; return ``(status_code, body)``."""
        if self._adapt is not None:
            body = self._adapt(endpoint, body)
        request = urllib.request.Request(
            upstream_url(self.upstream, endpoint),
            data=orjson.dumps(body),
            headers=self._headers,
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, data = exc.code, exc.read()
        except TimeoutError as exc:
            raise _timeout() from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise _timeout() from exc
            return 500, error_body(
                f"The upstream model server could not be reached: {reason}", type="server_error"
            )
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            message = f"The upstream model server answered HTTP {status} without a JSON object."
            return (status if status >= 400 else 500), error_body(message, type="server_error")
        if status >= 400 and not isinstance(parsed.get("error"), dict):
            message = str(parsed.get("detail") or parsed.get("message") or parsed)
            kind = "server_error" if status >= 500 else "invalid_request_error"
            return status, error_body(message, type=kind)
        return status, parsed
