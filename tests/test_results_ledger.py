"""Every line lands in exactly one of ok / failed: property tests over mixed files."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import polars as pl
from hypothesis import HealthCheck, given, settings, strategies as st
from test_results_lines import (
    chat_body,
    embeddings_body,
    http_error_line,
    jsonl,
    line,
    non_http_line,
)

from batchframe._results import BatchResults, parse_errors, parse_output

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["pos", "neg"]}},
    "required": ["label"],
    "additionalProperties": False,
}

# kind -> (file, builder); "out" lines go to the output file, "err" to the error file.
CHAT_KINDS: dict[str, tuple[str, Callable[[str], bytes]]] = {
    "ok": ("out", lambda c: line(c, chat_body('{"label": "pos"}'))),
    "bad_json": ("out", lambda c: line(c, chat_body('{"label": '))),
    "mismatch": ("out", lambda c: line(c, chat_body('{"label": "meh"}'))),
    "refusal": ("out", lambda c: line(c, chat_body(None, refusal="no"))),
    "status0": ("out", lambda c: line(c, {}, status=0)),
    "http_in_output": ("out", lambda c: http_error_line(c, 500, None, "oops", "server_error")),
    "http400": ("err", lambda c: http_error_line(c)),
    "http429": ("err", lambda c: http_error_line(c, 429, "rate_limit_exceeded")),
    "expired": ("err", lambda c: non_http_line(c, "batch_expired")),
    "cancelled": ("err", lambda c: non_http_line(c, "batch_cancelled")),
    "timeout": ("err", lambda c: non_http_line(c, "request_timeout")),
}

ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)


def assemble(lines: list[bytes], seps: list[bytes]) -> bytes:
    out = b""
    for raw, sep in zip(lines, seps, strict=False):
        out += raw + sep
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(ids, st.sampled_from(sorted(CHAT_KINDS))), unique_by=lambda r: r[0], max_size=25
    ),
    seps=st.lists(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \r\n"]), min_size=25, max_size=25),
    structured=st.booleans(),
)
def test_every_chat_line_is_accounted_for(
    rows: list[tuple[str, str]], seps: list[bytes], structured: bool
) -> None:
    out = [CHAT_KINDS[k][1](c) for c, k in rows if CHAT_KINDS[k][0] == "out"]
    err = [CHAT_KINDS[k][1](c) for c, k in rows if CHAT_KINDS[k][0] == "err"]
    ok, failed_out = parse_output(
        assemble(out, seps),
        endpoint="/v1/chat/completions",
        batch_id="b",
        json_schema=SCHEMA if structured else None,
    )
    failed_err = parse_errors(assemble(err, seps), endpoint="/v1/chat/completions", batch_id="b")
    failed = pl.concat([failed_out, failed_err])

    all_ids = {c for c, _ in rows}
    ok_ids, failed_ids = set(ok["custom_id"]), set(failed["custom_id"])
    assert len(ok) + len(failed) == len(rows)
    assert ok_ids | failed_ids == all_ids and not ok_ids & failed_ids
    expected_ok = {
        c
        for c, k in rows
        if k == "ok" or (not structured and k in ("bad_json", "mismatch", "refusal"))
    }
    assert ok_ids == expected_ok
    # Every failure keeps the exact line it came from.
    by_id = {orjson.loads(raw)["custom_id"]: raw.decode() for raw in out + err}
    assert all(by_id[c] == text for c, text in failed.select("custom_id", "line").iter_rows())

    results = BatchResults.from_parts(
        [ok], [failed_out, failed_err], endpoint="/v1/chat/completions"
    )
    assert len(results.ok) + len(results.failed) == len(rows)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(ids, st.integers(0, 3), st.sampled_from(["ok", "b64", "http", "expired"])),
        unique_by=lambda r: r[0],
        max_size=15,
    ),
    crlf=st.booleans(),
)
def test_every_embedding_line_is_accounted_for(
    rows: list[tuple[str, int, str]], crlf: bool
) -> None:
    lines = []
    for cid, n, kind in rows:
        vecs = [[float(j), 1.0, 0.5] for j in range(n)]
        if kind in ("ok", "b64"):
            lines.append(line(cid, embeddings_body(vecs, b64=kind == "b64")))
        elif kind == "http":
            lines.append(http_error_line(cid, 400))
        else:
            lines.append(non_http_line(cid, "batch_expired"))
    # One file per encoding: a batch's lines share the request template.
    plain = [raw for raw, (_, _, k) in zip(lines, rows, strict=True) if k != "b64"]
    b64 = [raw for raw, (_, _, k) in zip(lines, rows, strict=True) if k == "b64"]
    parts = [
        parse_output(jsonl(p, crlf=crlf), endpoint="/v1/embeddings", batch_id="b", embedding_dim=3)
        for p in (plain, b64)
    ]
    ok = pl.concat([p[0] for p in parts])
    failed = pl.concat([p[1] for p in parts])

    assert set(ok["custom_id"]) | set(failed["custom_id"]) == {c for c, _, _ in rows}
    assert not set(ok["custom_id"]) & set(failed["custom_id"])
    assert ok["custom_id"].n_unique() + len(failed) == len(rows)
    assert len(ok) == sum(n for _, n, k in rows if k in ("ok", "b64"))
    assert ok.schema["embedding"] == pl.Array(pl.Float32, 3)
