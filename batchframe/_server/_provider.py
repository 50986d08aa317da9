"""How ``LocalBatchServer(provider=...)`` differs per provider profile.

The server speaks OpenAI's API; a profile changes what it accepts, as the provider
does: the per-file limits (set in ``LocalBatchServer``), the ``completion_window``
values, the endpoints, the line URLs (Azure's legacy API writes ``/chat/completions``),
whether batches expire (Azure's do not), the files a resource may hold (Azure: 500,
10,000 with ``expires_after``), and Azure's URL paths (``/openai/files``,
``/openai/v1/files``) so ``openai.AzureOpenAI`` clients work against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchframe._providers import Provider, get_provider, window_seconds
from batchframe._server._errors import ApiError, bad_request

__all__ = ["ServerProfile", "v1_endpoint"]


def v1_endpoint(endpoint: str) -> str:
    """``/chat/completions`` -> ``/v1/chat/completions`` (others unchanged)."""
    if endpoint.startswith("/v1/") or not endpoint.startswith("/"):
        return endpoint
    return "/v1" + endpoint


@dataclass
class ServerProfile:
    """A provider profile as the local server enforces it."""

    provider: Provider = field(default_factory=lambda: get_provider("openai"))
    max_files: int | None = None
    max_files_with_expiry: int | None = None

    @classmethod
    def of(cls, provider: str | Provider | None, max_files: int | None = None) -> ServerProfile:
        """The profile of ``provider``; ``max_files`` overrides both file caps."""
        p = get_provider(provider)
        if max_files is not None:
            return cls(p, max_files, max_files)
        return cls(p, p.max_files, p.max_files_with_expiry)

    @property
    def is_azure(self) -> bool:
        """Whether paths and jobs behave as Azure OpenAI's."""
        return self.provider.name.startswith("azure")

    def route(self, path: str) -> str:
        """Map Azure's ``/openai/...`` and ``/openai/v1/...`` paths onto ``/v1/...``."""
        if not self.is_azure:
            return path
        if path.startswith("/openai/v1/"):
            return path[len("/openai") :]
        if path.startswith("/openai/"):
            return "/v1/" + path[len("/openai/") :]
        return path

    def check_file_room(self, live: int, *, expiring: bool) -> None:
        """Refuse an upload past the resource's file cap (HTTP 400)."""
        cap = self.max_files_with_expiry if expiring else self.max_files
        if cap is not None and live >= cap:
            msg = (
                f"The resource holds {live} files, the most allowed is {cap} "
                f"({self.max_files_with_expiry} for files uploaded with expires_after). "
                "Delete files or wait for them to expire."
            )
            raise ApiError(400, msg, param="file", code="quota_exceeded")

    def check_batch_params(self, raw: Any) -> tuple[str | None, str | None]:
        """Check ``completion_window`` and ``endpoint`` the provider's way.

        Returns the window and the endpoint as sent (``None`` when absent or not text:
        the generic checks report those).
        """
        if not isinstance(raw, dict):
            return None, None
        window = raw.get("completion_window")
        endpoint = raw.get("endpoint")
        p = self.provider
        if isinstance(window, str):
            try:
                p.check_window(window)
            except Exception:
                allowed = p.describe_windows().replace('"', "'")
                msg = f"Invalid value: '{window}'. Supported values are: {allowed}."
                raise bad_request(msg, param="completion_window", code="invalid_value") from None
        else:
            window = None
        if isinstance(endpoint, str):
            v1 = v1_endpoint(endpoint)
            expected = p.line_url(v1)
            allowed_v1 = p.endpoints
            if endpoint != expected or (allowed_v1 is not None and v1 not in allowed_v1):
                listed = ", ".join(
                    f"'{p.line_url(e)}'" for e in (allowed_v1 or ("/v1/chat/completions", "..."))
                )
                msg = f"Invalid value: '{endpoint}'. Supported values are: {listed}."
                raise bad_request(msg, param="endpoint", code="invalid_value")
        else:
            endpoint = None
        return window, endpoint

    @staticmethod
    def as_openai(raw: Any) -> Any:
        """The parameters as OpenAI's checks expect them (``24h``, ``/v1/...``)."""
        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        if isinstance(out.get("completion_window"), str):
            out["completion_window"] = "24h"
        if isinstance(out.get("endpoint"), str):
            out["endpoint"] = v1_endpoint(out["endpoint"])
        return out

    def window_seconds(self, window: str | None, base: float) -> float | None:
        """Seconds until a batch expires: ``base`` per 24 h of window; ``None``: never."""
        if not self.provider.jobs_expire:
            return None
        seconds = window_seconds(window) if window else None
        return base * (seconds or 86_400) / 86_400
