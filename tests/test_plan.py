"""Shard planning invariants (Hypothesis), through the public API."""

from __future__ import annotations

import json

import polars as pl
from hypothesis import HealthCheck, given, settings, strategies as st

import batchframe as bf

rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["m1", "m2", "m3"]),
        # At least one character: the API refuses empty embedding inputs (and so does build).
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
            min_size=1,
            max_size=300,
        ),
        st.integers(min_value=1, max_value=40),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=rows_strategy,
    max_requests=st.integers(1, 50),
    max_bytes=st.integers(2_000, 20_000),
    max_inputs=st.integers(40, 200),
    max_tokens=st.one_of(st.none(), st.integers(400, 5_000)),
)
def test_every_row_in_exactly_one_shard_in_order_within_limits(
    rows, max_requests, max_bytes, max_inputs, max_tokens
):
    df = pl.DataFrame(
        {
            "id": list(range(len(rows))),
            "model": [r[0] for r in rows],
            "items": [[r[1]] * r[2] for r in rows],
        }
    )
    req = bf.build_requests(
        df,
        endpoint="/v1/embeddings",
        body=bf.embeddings_body(pl.col("model"), input=pl.col("items")),
        custom_id="id",
        tokenizer="estimate",
    )
    limits = bf.BatchLimits(
        max_requests=max_requests,
        max_bytes=max_bytes,
        max_embedding_inputs=max_inputs,
        max_tokens=max_tokens,
    )
    try:
        plan = req.plan(limits)
    except bf.InputError:
        # Only refused when one row alone breaks a limit.
        f = req.frame
        assert (
            (f["n_bytes"] > max_bytes).any()
            or (f["n_inputs"] > max_inputs).any()
            or (max_tokens is not None and (f["est_tokens"] > max_tokens).any())
        )
        return
    shards = [
        pl.DataFrame(
            [json.loads(line) for line in text.split("\n")[:-1]],
        )
        for text in _shard_texts(req, limits)
    ]
    seen = [cid for s in shards for cid in s["custom_id"].to_list()]
    assert sorted(seen, key=int) == [str(i) for i in range(len(rows))]
    assert len(seen) == len(set(seen))
    frame = req.frame
    for i, shard in enumerate(shards):
        ids = [int(c) for c in shard["custom_id"]]
        assert ids == sorted(ids)  # input order kept
        models = {b["model"] for b in shard["body"]}
        assert len(models) == 1 and models == {plan["model"][i]}
        sub = frame.filter(pl.col("custom_id").is_in(shard["custom_id"].to_list()))
        assert sub.height == plan["n_requests"][i] <= max_requests
        assert int(sub["n_bytes"].sum()) == plan["n_bytes"][i] <= max_bytes
        assert int(sub["n_inputs"].sum()) == plan["n_inputs"][i] <= max_inputs
        if max_tokens is not None:
            assert plan["est_tokens"][i] <= max_tokens
    # Fewest shards: no two consecutive shards of one model could have been merged.
    for i in range(plan.height - 1):
        if plan["model"][i] == plan["model"][i + 1]:
            merged_fits = (
                plan["n_requests"][i] + 1 <= max_requests
                and plan["n_bytes"][i] + _first(frame, shards[i + 1], "n_bytes") <= max_bytes
                and plan["n_inputs"][i] + _first(frame, shards[i + 1], "n_inputs") <= max_inputs
                and (
                    max_tokens is None
                    or plan["est_tokens"][i] + _first(frame, shards[i + 1], "est_tokens")
                    <= max_tokens
                )
            )
            assert not merged_fits


def _first(frame: pl.DataFrame, shard: pl.DataFrame, col: str) -> int:
    cid = shard["custom_id"][0]
    return int(frame.filter(pl.col("custom_id") == cid)[col][0])


def _shard_texts(req: bf.Requests, limits: bf.BatchLimits) -> list[str]:
    import fsspec

    fs = fsspec.filesystem("memory")
    written = req.write("memory://hyp-plan", limits=limits)
    out = []
    for path, n in written.select("path", "n_bytes").iter_rows():
        data = fs.cat_file(path)
        assert len(data) == n
        out.append(data.decode())
    fs.rm("/hyp-plan", recursive=True)
    return out


def test_plan_is_deterministic_and_minimal_simple_case():
    df = pl.DataFrame({"id": range(10), "t": ["x" * 10] * 10})
    req = bf.build_requests(
        df,
        endpoint="/v1/completions",
        body=bf.completions_body("m", prompt=pl.col("t")),
        custom_id="id",
    )
    a = req.plan(bf.BatchLimits(max_requests=3))
    assert a.equals(req.plan(bf.BatchLimits(max_requests=3)))
    assert a["n_requests"].to_list() == [3, 3, 3, 1]
    per_row = int(req.frame["n_bytes"][0])
    b = req.plan(bf.BatchLimits(max_bytes=per_row * 4))
    assert b["n_requests"].to_list() == [4, 4, 2]
    assert req.plan().height == 1
