"""Tokens and cost per model, from the ok and failed frames of a result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import polars as pl

from batchframe._schemas import (
    DEFAULT_PRICES,
    USAGE_COLUMNS,
    USAGE_NAMES,
    USAGE_PATHS,
    endpoint_key,
    price_for,
)

__all__ = ["usage_frame"]


def usage_frame(
    ok: pl.DataFrame,
    failed: pl.DataFrame,
    endpoint: str,
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> pl.DataFrame:
    """Tokens and cost per model (see :meth:`batchframe.BatchResults.usage`).

    Parameters
    ----------
    ok, failed
        The result's frames; of ``failed`` only stage ``"parse"`` rows count (paid
        answers), their usage read from the raw line.
    endpoint
        The job's endpoint: which columns hold the tokens.
    prices
        ``{model: {"input", "cached_input", "output"}}`` in USD per 1M tokens, merged
        over :data:`~batchframe._schemas.DEFAULT_PRICES`.

    Returns
    -------
    pl.DataFrame
        ``model, requests, input_tokens, cached_tokens, output_tokens,
        reasoning_tokens, cost_usd``, sorted by model (nulls last).
    """
    table = {**DEFAULT_PRICES, **(prices or {})}
    key = endpoint_key(endpoint)
    frame = pl.concat([_ok_usage(ok, key), _parse_failure_usage(failed, key)])
    agg = (
        frame.group_by("model")
        .agg(
            pl.col("custom_id").n_unique().cast(pl.Int64).alias("requests"),
            *(pl.col(c).sum() for c in USAGE_NAMES),
        )
        .sort("model", nulls_last=True)
    )
    costs: list[float | None] = []
    for model, inp, cached, out in agg.select(
        "model", "input_tokens", "cached_tokens", "output_tokens"
    ).iter_rows():
        price = price_for(model, table)
        if price is None:
            costs.append(None)
            continue
        p_in = price.get("input", 0.0)
        p_cached = price.get("cached_input", p_in)
        costs.append(
            ((inp - cached) * p_in + cached * p_cached + out * price.get("output", 0.0)) / 1e6
        )
    return agg.with_columns(cost_usd=pl.Series(costs, dtype=pl.Float64))


def _ok_usage(ok: pl.DataFrame, key: str) -> pl.DataFrame:
    cols = USAGE_COLUMNS.get(key, (None, None, None, None))
    return ok.select(
        "custom_id",
        "model",
        *(
            (pl.col(c) if c else pl.lit(None)).cast(pl.Int64).fill_null(0).alias(name)
            for c, name in zip(cols, USAGE_NAMES, strict=True)
        ),
    )


def _parse_failure_usage(failed: pl.DataFrame, key: str) -> pl.DataFrame:
    paths = USAGE_PATHS.get(key, (None, None, None, None))
    rows = []
    for cid, line in (
        failed.filter(pl.col("stage") == "parse").select("custom_id", "line").iter_rows()
    ):
        body = _dig(orjson.loads(line), "response.body") if line else None
        usage = body.get("usage") if isinstance(body, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        rows.append((cid, model, *(_int(_dig(usage, p)) for p in paths)))
    schema = {
        "custom_id": pl.String,
        "model": pl.String,
        **dict.fromkeys(USAGE_NAMES, pl.Int64),
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def _dig(obj: Any, path: str | None) -> Any:
    for part in path.split(".") if path else ():
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj if path else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
