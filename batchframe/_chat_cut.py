"""Chat lines of the API's layout: read by JSON path in DuckDB, typed and checked in Polars.

Chat is the bulk of most jobs, so its cut lines (:func:`batchframe._lines.cut_body`)
take a shorter road than the other endpoints' ``from_json`` into declared structures:

1. DuckDB parses each cut body and head once and returns the values the typed columns
   need as two lists of text (``json_extract_string`` at a list of paths): ``_h``
   (custom_id, request_id, status_code) and ``_x`` (:data:`VALUES`).
2. Polars takes them apart, reads the counts as integers and decides which rows need
   a closer look (:func:`rows`): those whose text alone cannot tell a value's JSON type
   (the cases :mod:`batchframe._shapes` lists), and those with tool calls.
3. Only those rows go through DuckDB again, with the shape checks of
   :mod:`batchframe._shapes` and the tool calls read into their structure.

Measured on a 50,000-line shard (2 cores), steps 1-2 take ~37 ms, against ~56 ms for
``from_json``, the columns read out of the structure and the shape checks in SQL. The
text of a value answers most checks on its own, and more often than a typed value did:
``json_extract_string`` gives NULL only for an absent or null member, and the JSON
text of any other non-string, so a count that is not a number is seen without a look
at the body.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import polars as pl

from batchframe._shapes import _lit

__all__ = ["VALUES", "from_typed_body", "query", "rows"]

#: The body values chat reads: name -> JSON path from the body.
VALUES = {
    "_model": ".model",
    "_content": ".choices[0].message.content",
    "_refusal": ".choices[0].message.refusal",
    "_tool_calls": ".choices[0].message.tool_calls",
    "_finish": ".choices[0].finish_reason",
    "_pt": ".usage.prompt_tokens",
    "_ct": ".usage.completion_tokens",
    "_tt": ".usage.total_tokens",
    "_cached": ".usage.prompt_tokens_details.cached_tokens",
    "_reasoning": ".usage.completion_tokens_details.reasoning_tokens",
}


def from_typed_body(name: str) -> str:
    """The SQL reading value ``name`` from the typed body ``b`` of a line parsed whole.

    The JSON path with ``b`` in front and list indexes counted from 1, as SQL does.
    """
    return "b" + re.sub(r"\[(\d+)\]", lambda m: f"[{int(m.group(1)) + 1}]", VALUES[name])


#: Where a body that is not a 2xx answer names its error (looked up on those rows only:
#: output files hold 2xx answers, error files are read whole).
ERROR_PATHS = "['$.error.code', '$.error.type', '$.error.message']"
#: The counts: value -> column.
_INTEGERS = {
    "_pt": "prompt_tokens",
    "_ct": "completion_tokens",
    "_tt": "total_tokens",
    "_cached": "cached_tokens",
    "_reasoning": "reasoning_tokens",
}
_HEAD_PATHS = "['$.custom_id', '$.response.request_id', '$.response.status_code']"
TOOL_CALLS = pl.List(
    pl.Struct(
        {
            "id": pl.String,
            "type": pl.String,
            "function": pl.Struct({"name": pl.String, "arguments": pl.String}),
        }
    )
)


def query(*, lenient: bool) -> str:
    """The SQL over the view ``lines`` (``_ordinal, _span, _head``): ``_ordinal, _h, _x``.

    ``lenient``: a cut that is not one JSON value gives NULL lists (else the query fails).
    """
    parse = "try(json_extract_string" if lenient else "(json_extract_string"
    paths = ", ".join(_lit("$" + path) for path in VALUES.values())
    return (
        f"SELECT _ordinal, {parse}(_head, {_HEAD_PATHS})) AS _h, "
        f"{parse}(_span, [{paths}])) AS _x FROM lines"
    )


def _sus(x: pl.Expr) -> pl.Expr:
    """``_shapes._sus`` in Polars, a little wider: text that may be a non-string's JSON text.

    It starts with ``-`` to ``9`` (``.`` and ``/`` too: a look more, never one less),
    ``[`` or ``{`` (compared as strings: no per-row slicing), or is ``true``/``false``.
    NULL for NULL.
    """
    starts = ((x >= "-") & (x < ":")) | ((x >= "[") & (x < "\\")) | ((x >= "{") & (x < "|"))
    return starts | (x == "true") | (x == "false")


def _slow_integers(text: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
    """``out`` with counts as ``from_json`` reads a BIGINT: also floats (rounded), booleans.

    Only where some count's text did not read as a plain integer (rare).
    """
    fixed = []
    for name, column in _INTEGERS.items():
        t = pl.col(name)
        other = text.select(
            t.cast(pl.Float64, strict=False)
            .round(mode="half_away_from_zero")
            .cast(pl.Int64, strict=False)
            .fill_null(pl.when(t == "true").then(1).when(t == "false").then(0))
        )
        fixed.append(out[column].fill_null(other.to_series()))
    return out.with_columns(fixed)


def _expressions() -> tuple[list[pl.Expr | str], list[pl.Expr | str]]:
    """The two selects of :func:`rows`, built once (~1 ms a call otherwise)."""
    h, x = pl.col("_h"), pl.col("_x")
    text: list[pl.Expr | str] = [
        "_ordinal",
        (h.is_not_null() & x.is_not_null()).alias("_cut"),
        h.list.get(0).alias("custom_id"),
        h.list.get(1).alias("request_id"),
        h.list.get(2).cast(pl.Int32, strict=False).alias("status_code"),
        *(x.list.get(k).alias(name) for k, name in enumerate(VALUES)),
    ]
    counts = {name: pl.col(name).cast(pl.Int64, strict=False) for name in _INTEGERS}
    # A row needs a look where any probe of `_shapes._chat` might fail: its `when` holds
    # and the value's text does not already show that the JSON type fits.
    message_empty = pl.all_horizontal(pl.col("_content", "_refusal", "_tool_calls").is_null())
    doubt = pl.any_horizontal(
        message_empty,
        pl.col("_finish").is_null(),
        *(_sus(pl.col(n)) for n in ("_content", "_refusal", "_finish", "_model")),
        pl.col("_tool_calls").is_not_null(),
        pl.all_horizontal(pl.col(_INTEGERS).is_null()),
        pl.col("_cached", "_reasoning").is_null(),
    ).fill_null(False)
    two_xx = pl.col("status_code").is_between(200, 299).fill_null(False)
    out: list[pl.Expr | str] = [
        "_ordinal",
        "_cut",
        "custom_id",
        "request_id",
        "status_code",
        pl.col("_model").alias("model"),
        two_xx.alias("_ok"),
        pl.lit(None, pl.String).alias("_error_code"),
        pl.lit(None, pl.String).alias("_error_message"),
        pl.lit(None, pl.String).alias("body"),
        pl.col("_content").alias("content"),
        pl.col("_refusal").alias("refusal"),
        pl.col("_finish").alias("finish_reason"),
        pl.lit(None, TOOL_CALLS).alias("tool_calls"),
        *(value.alias(_INTEGERS[name]) for name, value in counts.items()),
        pl.lit(None, pl.String).alias("_shape"),
        (pl.col("_cut") & (doubt | ~two_xx)).alias("_look"),
    ]
    return text, out


_TEXT, _OUT = _expressions()


def rows(
    parsed: pl.DataFrame,
    spans: pl.Series,
    run: Callable[[str, pl.DataFrame], pl.DataFrame],
    checks: str,
) -> pl.DataFrame:
    """The columns of the cut query of the other endpoints, from :func:`query`'s result.

    ``spans``: the cut body of each row (for the shape checks' look at the body);
    ``run(sql, frame)`` runs SQL over a frame as the view ``lines``; ``checks`` is that
    SQL for the rows that need a closer look (their values, ``status_code`` and
    ``_raw_body``): it gives ``_ordinal, _error_code, _error_message, tool_calls, _shape``.
    """
    text = parsed.select(_TEXT)
    out = text.select(_OUT)
    look = out["_look"]
    # A count whose text is there but is not a plain integer (rare): read as `from_json`
    # would, and its row gets a look (the check names the JSON type of what is left).
    odd = [n for n, c in _INTEGERS.items() if out[c].null_count() > text[n].null_count()]
    if odd:
        not_plain = text.select(
            pl.any_horizontal(
                pl.col(n).is_not_null() & pl.col(n).cast(pl.Int64, strict=False).is_null()
                for n in odd
            )
        ).to_series()
        look = look | (out["_cut"] & not_plain)
        out = _slow_integers(text, out)
    out = out.drop("_look")
    if not look.any():
        return out
    subset = pl.DataFrame(
        [
            out["_ordinal"].filter(look),
            out["status_code"].filter(look),
            spans.filter(look).alias("_raw_body"),
            *(
                (out[_INTEGERS[name]] if name in _INTEGERS else text[name]).filter(look).alias(name)
                for name in VALUES
            ),
        ]
    )
    looked = run(checks, subset)
    # Each row's position among the looked-at rows (null for the others).
    at = pl.select(pl.when(look).then(look.cum_sum() - 1)).to_series()
    return out.with_columns(
        looked[name].cast(out.schema[name]).rechunk().gather(at)
        for name in ("_error_code", "_error_message", "tool_calls", "_shape")
    )
