"""Packing the leftovers of engine partitions (pure logic, no engine)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

import batchframe as bf
from batchframe._cluster import _Written, pack
from batchframe._plan import Shard

LIMITS = bf.BatchLimits(max_requests=100, max_bytes=10_000, max_tokens=5_000)


@st.composite
def leftovers(draw: st.DrawFn) -> list[_Written]:
    out = []
    for i in range(draw(st.integers(0, 30))):
        n = draw(st.integers(1, 100))
        shard = Shard(
            i,
            draw(st.sampled_from(["a", "b"])),
            n,
            draw(st.integers(n, 10_000)),
            n,
            draw(st.integers(0, 5_000)),
        )
        out.append(_Written(shard, f"shards/x-{i}.jsonl", shard.n_bytes, "", True))
    return out


@settings(max_examples=200, deadline=None)
@given(leftovers())
def test_packing_keeps_every_leftover_once_within_limits(parts: list[_Written]) -> None:
    bins = pack(parts, LIMITS, embeddings=False)
    placed = [w.rel for b in bins for w in b.parts]
    assert sorted(placed) == sorted(w.rel for w in parts)
    for b in bins:
        assert {w.shard.model for w in b.parts} == {b.model}
        assert b.n_requests == sum(w.shard.n_requests for w in b.parts) <= LIMITS.max_requests
        assert b.n_bytes == sum(w.shard.n_bytes for w in b.parts) <= LIMITS.max_bytes
        assert b.est_tokens <= (LIMITS.max_tokens or 0)


def test_small_leftovers_share_one_shard() -> None:
    parts = [
        _Written(Shard(i, "m", 25, 1_000, 25, 10), f"shards/p{i}.jsonl", 1_000, "", True)
        for i in range(4)
    ]
    (only,) = pack(parts, LIMITS, embeddings=False)
    assert only.n_requests == 100 and len(only.parts) == 4
    # One more does not fit: a second shard, the largest leftovers placed first.
    extra = _Written(Shard(9, "m", 30, 500, 30, 10), "shards/p9.jsonl", 500, "", True)
    bins = pack([*parts, extra], LIMITS, embeddings=False)
    assert [b.n_requests for b in bins] == [100, 30]
