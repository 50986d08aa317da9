"""Error bodies of the OpenAI API, as the local server sends them.

Every failing call is answered with ``{"error": {"message", "type", "param", "code"}}``
and the HTTP status the real API uses (400 bad parameters, 401 auth, 404 unknown object
or route, 409 conflicting state, 429 rate limit, 500 server error).
"""

from __future__ import annotations

from typing import Any

SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! "
    "You can retry your request."
)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Return the API's error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """An API call that must be answered with an error body.

    Parameters
    ----------
    status
        HTTP status code.
    message, type, param, code
        The fields of the API's error object.
    headers
        Extra response headers (``retry-after`` for 429s).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """Return the JSON body to send."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """Return an HTTP 400 ``invalid_request_error``."""
    return ApiError(400, message, param=param, code=code)


def not_found(message: str, *, param: str | None = None) -> ApiError:
    """Return an HTTP 404 ``invalid_request_error``."""
    return ApiError(404, message, param=param)


def server_error(message: str = SERVER_ERROR_MESSAGE) -> ApiError:
    """Return an HTTP 500 ``server_error``."""
    return ApiError(500, message, type="server_error")


class LineError(Exception):
    """A request inside a batch that failed without an HTTP response.

    Lands in the error file as ``{"response": null, "error": {"code", "message"}}``.
    The codes the API uses are ``batch_expired``, ``batch_cancelled`` and
    ``request_timeout``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


REQUEST_TIMEOUT_MESSAGE = "The underlying call to the model timed out."
BATCH_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
BATCH_CANCELLED_MESSAGE = "The batch was cancelled before this request executed."
