"""An upstream outage: rows answered 500 for a while end ok, after backoff, at defaults."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest_server import chat_requests

import batchframe as bf
from batchframe._schedule import RetryBackoff, retry_after_hint
from batchframe._server._echo import echo


class FastClock:
    """Wall time running ``speed`` times faster from now on (1.0: the real clock)."""

    def __init__(self, speed: float = 1.0) -> None:
        self.t0 = time.time()
        self.speed = speed

    def now(self) -> float:
        return self.t0 + (time.time() - self.t0) * self.speed

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.speed)


class Outage:
    """An executor answering 500 (``server_error``) between ``start`` and ``end``."""

    def __init__(self, clock: FastClock, seconds: float, *, only: set[str] | None = None):
        self.clock = clock
        self.seconds = seconds
        self.begin()
        self.only = only
        self.calls: Counter[str] = Counter()

    def begin(self) -> None:
        """Start the outage now (the clock may run fast: start it when the job does)."""
        self.start = self.clock.now()
        self.end = self.start + self.seconds

    def __call__(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        text = str(body.get("messages", [{}])[-1].get("content", ""))
        down = self.start <= self.clock.now() < self.end
        if down and (self.only is None or text in self.only):
            self.calls["500"] += 1
            return 500, {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": "server_error",
                }
            }
        self.calls["200"] += 1
        return echo(endpoint, body)


def _requests(n: int) -> bf.Requests:
    return chat_requests(n)


def _run_outage(
    tmp_path: Path, seconds: float, speed: float, n: int = 200, **create: Any
) -> tuple[bf.BatchResults, pl.DataFrame, Outage]:
    clock = FastClock(speed)
    outage = Outage(clock, seconds)
    with bf.LocalBatchServer(outage, requests_per_second=2000, seed=3) as server:
        job = bf.BatchJob.create(
            _requests(n),
            str(tmp_path / "job"),
            client=server.client(),
            limits=bf.BatchLimits(max_requests=100),
            **create,
        )
        job._clock = clock.now
        job._sleep = clock.sleep
        outage.begin()
        with job:
            job.wait(progress=False)
            return job.collect(), job.status(), outage


def test_backoff_schedule_and_hints() -> None:
    b = RetryBackoff(jitter=0.0)
    assert [b.delay(n) for n in range(10)] == [0, 1, 2, 4, 8, 16, 32, 64, 120, 120]
    # Jitter only shortens a delay, by at most `jitter` of it.
    rng = random.Random(1)
    jittered = [RetryBackoff().delay(4, rng=rng) for _ in range(200)]
    assert all(6.0 <= d <= 8.0 for d in jittered) and len(set(jittered)) > 100
    # "try again in" hints of rate-limit messages lengthen a delay, up to max_delay.
    assert retry_after_hint(["Please try again in 20ms.", None, "retry in 1.5s"]) == 1.5
    assert retry_after_hint(["no hint here"]) is None
    assert b.delay(1, retry_after=30.0) == 30.0
    assert b.delay(1, retry_after=10_000.0) == 120.0
    # The defaults cover a 5-minute outage even when the jitter cuts every delay most.
    worst = RetryBackoff()
    total, step = 0.0, 0
    while total < 300:
        step += 1
        total += RetryBackoff(jitter=0.0).delay(step) * (1 - worst.jitter)
    assert total / (1 - worst.jitter) <= worst.budget
    with pytest.raises(bf.LimitError, match="jitter"):
        RetryBackoff(jitter=1.5)
    with pytest.raises(bf.LimitError, match="factor"):
        RetryBackoff(factor=0.5)


def test_five_minute_outage_compressed_clock(tmp_path: Path) -> None:
    """300 s of 500s on a clock running 100x: every row ends ok at default settings."""
    results, status, outage = _run_outage(tmp_path, 300.0, speed=100.0)
    assert results.failed.height == 0
    assert results.ok.height == 200
    assert outage.calls["500"] >= 200  # the outage really hit the rows
    # More than the three tries of max_attempts: the budget kept outage retries going.
    assert status["attempt"].max() >= 3  # type: ignore[operator]
    waits = status.filter(pl.col("attempt") > 0)["not_before"]
    assert waits.null_count() == 0  # every retry waited out a backoff


def test_six_second_outage_compressed(tmp_path: Path) -> None:
    results, _status, _ = _run_outage(tmp_path, 6.0, speed=10.0)
    assert results.failed.height == 0 and results.ok.height == 200


@pytest.mark.slow
def test_six_second_outage_real_time(tmp_path: Path) -> None:
    """The issue's figure: 170 of 200 rows failed for good; now none."""
    results, _status, outage = _run_outage(tmp_path, 6.0, speed=1.0)
    assert results.failed.height == 0 and results.ok.height == 200
    assert outage.calls["500"] >= 100


def test_explicit_max_attempts_caps_outage_retries(tmp_path: Path) -> None:
    results, status, _ = _run_outage(tmp_path, 300.0, speed=100.0, max_attempts=2)
    assert status["attempt"].max() == 1
    assert results.failed.height == 200
    assert results.failed["retryable"].all()
    assert set(results.failed["attempts"].to_list()) == {2}


def test_isolated_failures_retry_at_once(tmp_path: Path) -> None:
    """A few 500s in a healthy batch are not an outage: retried without waiting."""
    with (
        bf.LocalBatchServer(failure_rate=0.1, seed=5) as server,
        bf.BatchJob.create(_requests(60), str(tmp_path / "j"), client=server.client()) as job,
    ):
        job.wait(poll_interval=0.02, progress=False)
        status = job.status()
    child = status.filter(pl.col("attempt") == 1)
    assert child.height == 1
    assert child["not_before"].null_count() == 1


def test_backoff_survives_a_crash_and_does_not_block_other_shards(tmp_path: Path) -> None:
    """The retry's "not before" is in the manifest; another shard is polled meanwhile."""
    clock = FastClock(1.0)
    # Only shard 0's rows hit the outage; it is long, so the retry waits.
    shard0 = {f"t {i}" for i in range(10)}
    outage = Outage(clock, 3600.0, only=shard0)
    root = str(tmp_path / "job")
    backoff = bf.RetryBackoff(initial=600.0, max_delay=600.0, jitter=0.0)
    with bf.LocalBatchServer(outage, seed=4) as server:
        job = bf.BatchJob.create(
            _requests(20),
            root,
            client=server.client(),
            limits=bf.BatchLimits(max_requests=10),
            retry_backoff=backoff,
        )
        deadline = time.monotonic() + 20
        while not job.status().filter(pl.col("attempt") == 0)["settled"].all():
            job.submit()
            job.refresh()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status = job.status()
        child = status.filter(pl.col("attempt") == 1)
        assert child["shard"].to_list() == [0]
        due = child["not_before"][0].timestamp()
        assert 590 < due - time.time() <= 601
        # Shard 1 settled with every row ok while shard 0 waits.
        assert job.counts().ok == 10
        n_batches = len(server.batches())
        job.close()  # as a crash would: nothing but the manifest survives
        with bf.BatchJob.open(root, client=server.client()) as again:
            again.submit()
            again.refresh()
            assert len(server.batches()) == n_batches  # the restart waits out the backoff
            reopened = again.status().filter(pl.col("attempt") == 1)
            assert reopened["not_before"][0].timestamp() == pytest.approx(due, abs=1e-3)
            # Once due, it goes.
            again._clock = lambda: time.time() + 601
            again.submit()
            assert len(server.batches()) == n_batches + 1
