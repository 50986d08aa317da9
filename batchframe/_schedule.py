"""Which shard attempts may be submitted now: pure functions over manifest records.

The Batch API admits a batch only while the estimated input tokens of every enqueued
batch of that model in the organisation stay under a limit; a batch over it fails with
``token_limit_exceeded``. When the job knows the limit (``queue_token_limit``), a shard
is submitted only if the tokens already in flight plus its own fit. When it does not, the
job learns from outcomes: a ``token_limit_exceeded`` batch that was submitted with ``X``
tokens in flight shows the limit is below ``X + T`` (an *upper* bound), and an accepted
batch shows it is at least ``X + T`` (a *lower* bound). Shards are then submitted while
in-flight tokens stay under the upper bound.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from batchframe._manifest import IN_FLIGHT, ShardAttempt
from batchframe.exceptions import InputError, JobTimeoutError, LimitError

__all__ = [
    "PollBackoff",
    "QueueBounds",
    "RetryBackoff",
    "admissible",
    "check_options",
    "in_flight_tokens",
    "limit_for",
    "retry_after_hint",
]

_TAG_PREFIX = "batchframe_"
#: Metadata pairs left to the user: the API allows 16 and batchframe tags 5.
MAX_USER_METADATA = 16 - 5
#: Waiting statuses, in the order records are considered.
WAITING = frozenset({"pending", "uploaded", "submitting"})


@dataclass(slots=True)
class QueueBounds:
    """What the job has learned about one model's enqueued-token limit."""

    lower: int | None = None
    upper: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        """Plain-dict form, for the manifest."""
        return {"lower": self.lower, "upper": self.upper}

    def accepted(self, total: int) -> None:
        """Record that a batch was accepted with ``total`` tokens in flight (its own included)."""
        if self.lower is None or total > self.lower:
            self.lower = total
        if self.upper is not None and self.lower >= self.upper:
            self.upper = None  # contradicting evidence (the queue drained meanwhile)

    def rejected(self, total: int) -> None:
        """Record a token_limit_exceeded failure with ``total`` tokens in flight."""
        if self.upper is None or total < self.upper:
            self.upper = total
        if self.lower is not None and self.lower >= self.upper:
            self.lower = None


def limit_for(queue_token_limit: int | Mapping[str, int] | None, model: str | None) -> int | None:
    """Return the known enqueued-token limit for ``model`` (an int applies to every model)."""
    if queue_token_limit is None:
        return None
    if isinstance(queue_token_limit, int):
        return queue_token_limit
    if model is None:
        return None
    return queue_token_limit.get(model, queue_token_limit.get("*"))


def in_flight_tokens(records: Iterable[ShardAttempt]) -> dict[str | None, int]:
    """Estimated tokens of batches that may be enqueued, per model."""
    out: dict[str | None, int] = {}
    for r in records:
        if r.status in IN_FLIGHT:
            out[r.model] = out.get(r.model, 0) + r.est_tokens
    return out


def admissible(
    records: list[ShardAttempt],
    *,
    queue_token_limit: int | Mapping[str, int] | None,
    learned: Mapping[str | None, QueueBounds],
    max_in_flight: int | None,
    now: float,
) -> list[ShardAttempt]:
    """Return the records that may be submitted now, in submission order.

    Waiting records (``pending``/``uploaded``, and ``submitting`` ones whose batch was
    not found) are taken in (attempt, shard) order; a record that does not fit is
    skipped so smaller ones behind it can still use the room (backfill). A record is
    always admitted when nothing of its model is in flight, so one oversized shard
    cannot stall the job (it may then fail with token_limit_exceeded and wait).
    """
    inflight = in_flight_tokens(records)
    n_live = sum(1 for r in records if r.status in IN_FLIGHT)
    # Records already in `submitting` count as in flight above; they are re-admitted
    # first because their intent is already saved.
    out: list[ShardAttempt] = []
    waiting = [r for r in records if r.status in WAITING and r.batch_id is None]
    waiting.sort(key=lambda r: (r.status != "submitting", r.attempt, r.shard))
    for r in waiting:
        if r.status == "submitting":
            out.append(r)
            continue
        if max_in_flight is not None and n_live >= max_in_flight:
            break
        if r.not_before is not None and r.not_before > now:
            continue
        used = inflight.get(r.model, 0)
        total = used + r.est_tokens
        known = limit_for(queue_token_limit, r.model)
        bounds = learned.get(r.model)
        if used > 0:
            if known is not None and total > known:
                continue
            if known is None and bounds is not None:
                fits_lower = bounds.lower is not None and total <= bounds.lower
                under_upper = bounds.upper is None or total < bounds.upper
                if not (fits_lower or under_upper):
                    continue
        out.append(r)
        inflight[r.model] = total
        n_live += 1
    return out


@dataclass(slots=True)
class PollBackoff:
    """Seconds between polls: ``start`` growing by ``factor`` up to ``cap``.

    A fixed ``interval`` (the user's ``poll_interval``) overrides the schedule.
    """

    start: float = 2.0
    factor: float = 1.5
    cap: float = 60.0
    interval: float | None = None
    _current: float | None = None

    def next(self) -> float:
        """Seconds to sleep before the next poll."""
        if self.interval is not None:
            return self.interval
        self._current = (
            self.start if self._current is None else min(self.cap, self._current * self.factor)
        )
        return self._current

    def reset(self) -> None:
        """Poll soon again (new batches were just submitted)."""
        self._current = None


def check_options(
    metadata: Mapping[str, str] | None,
    queue_token_limit: int | Mapping[str, int] | None,
    max_in_flight: int | None,
    max_attempts: int,
) -> None:
    """Refuse job options the API or the scheduler cannot work with."""
    pairs: list[tuple[Any, Any]] = list((metadata or {}).items())
    for k, v in pairs:
        if not isinstance(k, str) or not isinstance(v, str):
            msg = f"`metadata` keys and values must be strings, got {k!r}: {v!r}"
            raise InputError(msg, column="metadata")
        if k.startswith(_TAG_PREFIX) or len(k) > 64 or len(v) > 512:
            msg = (
                f"`metadata` key {k!r} is not allowed: keys are at most 64 characters, "
                f"values at most 512, and `{_TAG_PREFIX}*` keys are batchframe's own"
            )
            raise InputError(msg, column="metadata")
    if len(pairs) > MAX_USER_METADATA:
        msg = (
            f"`metadata` may hold at most {MAX_USER_METADATA} pairs "
            "(the API allows 16 and batchframe uses 5)"
        )
        raise InputError(msg, column="metadata")
    values: list[Any] = (
        list(queue_token_limit.values())
        if isinstance(queue_token_limit, Mapping)
        else [queue_token_limit]
    )
    values += [("max_in_flight", max_in_flight), ("max_attempts", max_attempts)]
    for value in values:
        name = "queue_token_limit"
        if isinstance(value, tuple):
            name, value = value
        if value is None and name != "max_attempts":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"`{name}` must be a positive integer, got {value!r}"
            raise LimitError(msg)


class Deadline:
    """The end of a ``timeout`` for a polling loop (``None``: no end)."""

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def clamp(self, delay: float, message: str) -> float:
        """``delay`` cut to the time left; :class:`JobTimeoutError` once none is left."""
        if self._end is None:
            return delay
        left = self._end - time.monotonic()
        if left <= 0:
            raise JobTimeoutError(message)
        return min(delay, left)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBackoff:
    """When rows that failed in a retryable way are submitted again.

    A retryable failure (a line answered 429 or 5xx, a timeout, a row that never ran, a
    batch that expired or failed for a passing reason) is retried in a new batch of the
    failed rows. Isolated failures are retried at once. When at least ``outage_share``
    of an attempt's rows failed that way, the API or the model behind it looks down (an
    *outage*): the retry then waits ``initial * factor ** (n - 1)`` seconds (capped at
    ``max_delay``, minus up to ``jitter`` of it at random), where ``n`` counts the
    outage-like attempts in a row, or longer when the errors say how long to wait
    ("try again in 20s"). With the default ``max_attempts`` such retries go on past
    three tries until ``budget`` seconds of backoff are spent, so an outage shorter than
    about ``budget`` ends with every row ok; an explicit ``max_attempts`` always caps the
    tries. The time a retry may start is saved in the manifest (``not_before``), so a
    driver restarted meanwhile waits out the same backoff, and other shards are polled
    and submitted meanwhile.

    Parameters
    ----------
    initial
        Seconds before the first retry after an outage-like failure.
    factor
        Growth of the delay with each outage-like failure in a row.
    max_delay
        Longest single delay, in seconds (a "try again in" hint is honoured up to it).
    jitter
        Share of each delay taken off at random (0: none), so that many jobs hit by the
        same outage do not all come back at once.
    budget
        Seconds of backoff after which outage-like failures stop being retried past
        ``max_attempts`` tries (at the defaults: 1 + 2 + 4 + ... + 120 s, ten or more
        retries, covering an outage of about 20 minutes).
    outage_share
        Share of an attempt's rows that must fail retryably for the failure to count as
        an outage.

    Examples
    --------
    >>> from batchframe import RetryBackoff
    >>> b = RetryBackoff(jitter=0.0)
    >>> [b.delay(n) for n in range(5)]
    [0.0, 1.0, 2.0, 4.0, 8.0]
    """

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 120.0
    jitter: float = 0.25
    budget: float = 1200.0
    outage_share: float = 0.5

    def __post_init__(self) -> None:
        checks = (
            ("initial", self.initial, 0.0, math.inf),
            ("factor", self.factor, 1.0, math.inf),
            ("max_delay", self.max_delay, 0.0, math.inf),
            ("jitter", self.jitter, 0.0, 1.0),
            ("budget", self.budget, 0.0, math.inf),
            ("outage_share", self.outage_share, 0.0, 1.0),
        )
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int | float):
                msg = f"RetryBackoff.{name} must be a number, got {value!r}"
                raise LimitError(msg)
            if not low <= value <= high or math.isnan(value):
                msg = f"RetryBackoff.{name} must be between {low} and {high}, got {value!r}"
                raise LimitError(msg)

    def delay(
        self, step: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds before a retry after ``step`` outage-like failures in a row (0: none)."""
        if step <= 0:
            return 0.0
        base = min(self.max_delay, self.initial * self.factor ** (step - 1))
        base *= 1.0 - self.jitter * (rng or random).random()
        if retry_after is not None:
            base = max(base, min(retry_after, self.max_delay))
        return base

    def to_dict(self) -> dict[str, float]:
        """Plain-dict form, for the manifest's options."""
        return asdict(self)

    @classmethod
    def from_option(cls, value: Any) -> RetryBackoff:
        """The policy saved in a manifest's options (``None``: the defaults)."""
        if isinstance(value, RetryBackoff):
            return value
        if not isinstance(value, Mapping):
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in value.items() if k in names})


_HINT = re.compile(r"(?:try again|retry) in (\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)\b", re.I)


def retry_after_hint(messages: Iterable[str | None]) -> float | None:
    """The longest "try again in 1.5s" / "retry in 200ms" wait named in error messages.

    Rate-limit errors of the API say how long to wait in their message (a line in an
    error file has no ``Retry-After`` header); ``None`` when no message says.
    """
    best: float | None = None
    for message in messages:
        if not message:
            continue
        for number, unit in _HINT.findall(message):
            seconds = float(number) / (1000.0 if unit.lower() == "ms" else 1.0)
            best = seconds if best is None else max(best, seconds)
    return best
