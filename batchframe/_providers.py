"""Provider profiles: what differs between services that speak the OpenAI Batch API.

A :class:`Provider` says, for one service, the per-file limits, the allowed
``completion_window`` values, the URL written in each line (and sent as the batch's
``endpoint``), the endpoints it serves, the ``expires_after`` range its Files API
takes, the resource caps that change scheduling, deployment names, and which price
table applies. Built-in profiles: ``"openai"``, ``"azure"`` (v1 API), ``"azure-legacy"``
(``/chat/completions`` lines), ``"groq"``. Sources are cited in README "Providers".

Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchframe._config import BatchLimits
from batchframe.exceptions import ProviderError

if TYPE_CHECKING:
    import polars as pl

__all__ = ["PROVIDERS", "Provider", "get_provider", "window_seconds"]

_WINDOW = re.compile(r"^([1-9][0-9]*)([hd])$")
#: Default life of an uploaded input file on the provider (the Files API's maximum).
DEFAULT_EXPIRES_AFTER = 30 * 86_400


def window_seconds(window: Any) -> int | None:
    """Seconds of a completion window such as ``"24h"`` or ``"7d"``; ``None`` if malformed."""
    m = _WINDOW.match(window) if isinstance(window, str) else None
    if m is None:
        return None
    return int(m.group(1)) * (3600 if m.group(2) == "h" else 86_400)


@dataclass(frozen=True, kw_only=True)
class Provider:
    """A service that speaks the OpenAI Files + Batches API, and how it differs.

    Use a built-in one by name (``provider="azure"``), derive one with
    :meth:`replace` / :func:`get_provider` keywords, or declare your own.

    Parameters
    ----------
    name
        Short name, stored in the job's manifest (a resumed job must use the same).
    base_url
        The API base URL (informational: the client you pass decides where calls go;
        ``batchframe`` CLI commands use it when no ``--base-url`` is given).
    limits
        Default per-file limits (:class:`BatchLimits`) for jobs on this provider.
    completion_windows
        Allowed ``completion_window`` values, listed.
    window_range
        Or a range ``(min_seconds, max_seconds)``: any ``"<n>h"`` / ``"<n>d"`` inside it.
    line_prefix
        What replaces ``/v1`` in each line's ``url`` and in the batch's ``endpoint``:
        ``"/v1"`` (OpenAI, Azure v1) or ``""`` (Azure's legacy API: ``/chat/completions``).
    endpoints
        Endpoints the provider's Batch API serves (``None``: every OpenAI one).
    expires_range
        ``(min, max)`` seconds accepted for a file's ``expires_after``.
    output_expires_after
        Whether batches accept ``output_expires_after``.
    max_files
        Files (input and output) one resource may hold at once (``None``: no cap).
    max_files_with_expiry
        The cap when uploads carry ``expires_after``.
    jobs_expire
        Whether a batch that outlives its window ends ``expired`` (Azure's do not).
    deployments
        ``{deployment name: model}``: bodies name deployments, prices and token counts
        use the model.
    price_table
        Which built-in price table applies (see :func:`batchframe.price_table`).
    prices
        Prices that override the table, ``{model: {"input", "cached_input", "output"}}``
        in USD per 1M tokens.
    """

    name: str
    base_url: str | None = None
    limits: BatchLimits = field(default_factory=BatchLimits)
    completion_windows: tuple[str, ...] = ("24h",)
    window_range: tuple[int, int] | None = None
    line_prefix: str = "/v1"
    endpoints: tuple[str, ...] | None = None
    expires_range: tuple[int, int] = (3_600, 2_592_000)
    output_expires_after: bool = True
    max_files: int | None = None
    max_files_with_expiry: int | None = None
    jobs_expire: bool = True
    deployments: Mapping[str, str] = field(default_factory=dict)
    price_table: str | None = None
    prices: Mapping[str, Mapping[str, float]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:  # type: ignore[redundant-expr]
            msg = "`Provider.name` must be a non-empty string"
            raise ProviderError(msg)
        if self.line_prefix not in ("/v1", ""):
            msg = f'`Provider.line_prefix` must be "/v1" or "", got {self.line_prefix!r}'
            raise ProviderError(msg)
        if not self.completion_windows and self.window_range is None:
            msg = f"provider {self.name!r} allows no completion_window: give completion_windows or window_range"
            raise ProviderError(msg)

    # -- checks ---------------------------------------------------------------------------
    def check_window(self, window: Any) -> str:
        """Return ``window`` if the provider accepts it, else raise :class:`ProviderError`."""
        if isinstance(window, str) and window in self.completion_windows:
            return window
        seconds = window_seconds(window) if isinstance(window, str) else None
        if self.window_range is not None and seconds is not None:
            lo, hi = self.window_range
            if lo <= seconds <= hi:
                return str(window)
        msg = (
            f"completion_window={window!r} is not accepted by provider {self.name!r}; "
            f"it takes {self.describe_windows()}. Nothing was uploaded"
        )
        raise ProviderError(msg)

    def describe_windows(self) -> str:
        """Human text of the allowed windows, e.g. ``"24h"`` or ``"24h to 7d"``."""
        parts = [f'"{w}"' for w in self.completion_windows]
        if self.window_range is not None:
            lo, hi = self.window_range
            parts.append(f'"{_fmt_window(lo)}" to "{_fmt_window(hi)}"')
        return " or ".join(parts)

    def check_endpoint(self, endpoint: str) -> None:
        """Raise :class:`ProviderError` if the provider's Batch API does not serve ``endpoint``."""
        if self.endpoints is not None and endpoint not in self.endpoints:
            msg = (
                f"provider {self.name!r} does not run {endpoint} batches (it serves "
                f"{', '.join(self.endpoints)}); choose another provider or endpoint. Nothing was uploaded"
            )
            raise ProviderError(msg)

    def check_expires(self, seconds: int | None, what: str = "expires_after") -> int | None:
        """Validate an expiry in seconds against :attr:`expires_range`."""
        if seconds is None:
            return None
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            msg = f"`{what}` must be a number of seconds or None, got {seconds!r}"
            raise ProviderError(msg)
        lo, hi = self.expires_range
        if not lo <= seconds <= hi:
            msg = (
                f"{what}={seconds} s is outside what provider {self.name!r} accepts "
                f"({lo:,} to {hi:,} s); pass a value in that range, or None to keep files"
            )
            raise ProviderError(msg)
        return seconds

    # -- shapes ---------------------------------------------------------------------------
    def line_url(self, endpoint: str) -> str:
        """The ``url`` written in each line, and sent as the batch's ``endpoint``."""
        if self.line_prefix == "/v1" or not endpoint.startswith("/v1/"):
            return endpoint
        return self.line_prefix + endpoint[len("/v1") :]

    def model_for(self, name: str | None) -> str | None:
        """The model behind a deployment name (the name itself when not a deployment)."""
        if name is None:
            return None
        return self.deployments.get(name, name)

    def file_cap(self, *, expiring: bool) -> int | None:
        """Most files this job may hold on the provider at once (``None``: no cap)."""
        if expiring and self.max_files_with_expiry is not None:
            return self.max_files_with_expiry
        return self.max_files

    def replace(self, **changes: Any) -> Provider:
        """A copy with ``changes`` applied (e.g. ``deployments=``, ``max_files=``)."""
        return dataclasses.replace(self, **changes)

    # -- manifest form --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for manifests."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["limits"] = self.limits.to_dict()
        out["completion_windows"] = list(self.completion_windows)
        out["window_range"] = list(self.window_range) if self.window_range else None
        out["endpoints"] = list(self.endpoints) if self.endpoints is not None else None
        out["expires_range"] = list(self.expires_range)
        out["deployments"] = dict(self.deployments)
        out["prices"] = {k: dict(v) for k, v in self.prices.items()} if self.prices else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provider:
        """Inverse of :meth:`to_dict` (unknown keys dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["limits"] = BatchLimits.from_dict(dict(kw.get("limits") or {}))
        kw["completion_windows"] = tuple(kw.get("completion_windows") or ())
        if kw.get("window_range") is not None:
            kw["window_range"] = (int(kw["window_range"][0]), int(kw["window_range"][1]))
        if kw.get("endpoints") is not None:
            kw["endpoints"] = tuple(kw["endpoints"])
        if kw.get("expires_range") is not None:
            kw["expires_range"] = (int(kw["expires_range"][0]), int(kw["expires_range"][1]))
        return cls(**kw)


def _fmt_window(seconds: int) -> str:
    return (
        f"{seconds // 86_400}d"
        if seconds % 86_400 == 0 and seconds > 86_400
        else f"{seconds // 3600}h"
    )


# Sources: shared reference batch-api.md §0 and §8 (OpenAI spec; azure-ai-docs
# how-to/batch.md, includes/batch/batch-python.md, includes/global-batch-limits.md);
# Groq: groq/groq-python src/groq/types/batch_create_params.py ("Durations from `24h`
# to `7d` are supported"; "The file can be up to 100 MB in size"; endpoint
# /v1/chat/completions) and console.groq.com/docs/batch.
_AZURE = Provider(
    name="azure",
    limits=BatchLimits(max_requests=100_000),
    expires_range=(1_209_600, 2_592_000),
    max_files=500,
    max_files_with_expiry=10_000,
    jobs_expire=False,
    price_table="openai",
)
PROVIDERS: dict[str, Provider] = {
    "openai": Provider(name="openai", base_url="https://api.openai.com/v1", price_table="openai"),
    "azure": _AZURE,
    "azure-legacy": _AZURE.replace(name="azure-legacy", line_prefix=""),
    "groq": Provider(
        name="groq",
        base_url="https://api.groq.com/openai/v1",
        limits=BatchLimits(max_bytes=100 * 1024 * 1024),
        completion_windows=(),
        window_range=(86_400, 7 * 86_400),
        endpoints=("/v1/chat/completions",),
        output_expires_after=False,
        price_table="groq",
    ),
}


def get_provider(provider: str | Provider | None = None, **changes: Any) -> Provider:
    """Return a provider profile by name (or pass one through), with ``changes`` applied.

    Parameters
    ----------
    provider
        ``"openai"`` (default), ``"azure"``, ``"azure-legacy"``, ``"groq"``, or a
        :class:`Provider`.
    **changes
        Fields to override, e.g. ``deployments={"my-4o-mini": "gpt-4o-mini"}``.

    Raises
    ------
    ProviderError
        An unknown name.

    Examples
    --------
    >>> import batchframe as bf
    >>> bf.get_provider("groq").describe_windows()
    '"24h" to "7d"'
    >>> bf.get_provider("azure-legacy").line_url("/v1/chat/completions")
    '/chat/completions'
    """
    if provider is None:
        provider = "openai"
    if isinstance(provider, Provider):
        found = provider
    elif provider in PROVIDERS:
        found = PROVIDERS[provider]
    else:
        msg = (
            f"unknown provider {provider!r}; use one of {', '.join(repr(p) for p in PROVIDERS)} "
            "or a `bf.Provider(...)` for another service"
        )
        raise ProviderError(msg)
    return found.replace(**changes) if changes else found


def job_setup(
    requests: Any,
    *,
    provider: str | Provider | None,
    limits: BatchLimits | None,
    completion_window: str,
    expires_after: int | None,
    output_expires_after: int | None,
    keep_files: Any,
    max_cost: float | None,
    prices: Any,
) -> tuple[Provider, BatchLimits, dict[str, Any]]:
    """Check a new job's provider options before anything is written or uploaded.

    Returns the profile, the limits to shard with (the profile's unless given) and the
    manifest options to record (provider, window, expiries, kept files, cost model).

    Raises
    ------
    ProviderError
        An unknown provider, a window / expiry / endpoint the provider does not take.
    CostLimitError
        The job's worst-case estimate exceeds ``max_cost``.
    """
    import logging

    from batchframe._cost import (
        PRICE_TABLES,
        check_job_estimate,
        estimate_frame,
        job_cost_model,
        job_estimate as total_of,
        price_table,
    )
    from batchframe._files import keep_kinds
    from batchframe._schemas import price_for

    prof = get_provider(provider)
    window = prof.check_window(completion_window)
    prof.check_endpoint(requests.endpoint)
    prof.check_expires(expires_after, "expires_after")
    if output_expires_after is not None:
        if not prof.output_expires_after:
            msg = f"provider {prof.name!r} does not accept output_expires_after; leave it None"
            raise ProviderError(msg)
        prof.check_expires(output_expires_after, "output_expires_after")
    kinds = keep_kinds(keep_files)
    if limits is None:
        limits = prof.limits
    else:
        # Fields left at OpenAI's default take the provider's value.
        base = BatchLimits()
        names = ("max_requests", "max_bytes", "max_embedding_inputs")
        limits = dataclasses.replace(
            limits,
            **{k: getattr(prof.limits, k) for k in names if getattr(limits, k) == getattr(base, k)},
        )
        over = [k for k in names if getattr(limits, k) > getattr(prof.limits, k)]
        if over:
            logging.getLogger("batchframe").warning(
                "limits %s exceed provider %r's own (%s); its API may refuse such files",
                over,
                prof.name,
                prof.limits,
            )
    options: dict[str, Any] = {
        "provider": prof.to_dict(),
        "completion_window": window,
        "expires_after": expires_after,
        "output_expires_after": output_expires_after,
        "keep_files": kinds,
        "max_cost": None if max_cost is None else float(max_cost),
    }
    if requests.streamed and max_cost is None:
        return prof, limits, options  # costing a streamed input reads it: only for a cap
    estimate = estimate_frame(requests, prof, prices)
    check_job_estimate(estimate, max_cost)
    table = price_table(prof, prices)
    options["prices"] = {
        str(m): dict(p)
        for m in estimate["model"].to_list()
        if m is not None and (p := price_for(m, table) or price_for(prof.model_for(m), table))
    }
    options["cost"] = {
        "as_of": PRICE_TABLES.get(prof.price_table or "", ("",))[0],
        "estimate_usd": total_of(estimate),
        "models": job_cost_model(estimate),
    }
    return prof, limits, options


def check_same_provider(manifest: Any, provider: str | Provider | None, root: str) -> None:
    """Refuse to resume a job with another provider than it was created for."""
    if provider is None:
        return
    want = get_provider(provider).name
    data = manifest.options.get("provider")
    have = data.get("name") if isinstance(data, dict) else "openai"
    if want != have:
        msg = (
            f"the job at `{root}` was created for provider {have!r}; its files and batches "
            f"live there, so it cannot be resumed with provider {want!r}. Open it with "
            f"provider={have!r} (and a client for that service), or start a new root"
        )
        raise ProviderError(msg)


def set_max_cost(manifest: Any, max_cost: Any) -> None:
    """Change a job's USD cap (``None`` keeps it; ``math.inf`` lifts it)."""
    if max_cost is None:
        return
    if isinstance(max_cost, bool) or not isinstance(max_cost, int | float) or max_cost < 0:
        msg = f"max_cost must be a number of USD >= 0, got {max_cost!r}"
        raise ProviderError(msg)
    manifest.options["max_cost"] = None if max_cost == float("inf") else float(max_cost)


def with_cost(frame: pl.DataFrame, manifest: Any) -> pl.DataFrame:
    """``job.status()`` with a ``cost_usd`` column (see :func:`batchframe._cost.cost_column`)."""
    from batchframe._cost import record_cost, submitted

    records = sorted(manifest.records, key=lambda r: (r.shard, r.attempt))  # status_frame's order
    costs = [record_cost(manifest, r) if submitted(r) else None for r in records]
    import polars as pl

    return frame.with_columns(pl.Series("cost_usd", costs, pl.Float64))


def job_prices(manifest: Any) -> dict[str, dict[str, float]] | None:
    """The prices a job was costed with (``None`` for jobs made before they were kept)."""
    prices = manifest.options.get("prices")
    return {str(k): dict(v) for k, v in prices.items()} if isinstance(prices, dict) else None
