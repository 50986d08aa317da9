"""Everything that touches the ``openai`` package lives here.

No other batchframe module imports ``openai`` at run time; they call these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai


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
