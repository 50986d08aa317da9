"""The raw ``body`` is cut out of each line verbatim, and only where that is provably right.

Lines of the layout OpenAI writes (minified or ``json.dumps``-spaced) give the API's
exact body text; any other layout (other key order, extra members, odd whitespace) is
parsed whole and gives the same typed columns, with ``body`` the same JSON value.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from test_results_lines import (
    SPEC_EXAMPLE,
    chat_body,
    http_error_line,
    image_body,
    jsonl,
    line,
)

from batchframe._lines import read_text_lines
from batchframe._results import parse_errors, parse_output

CHAT = "/v1/chat/completions"
TRICKY = 'x "body":{} }},"error":null} \\ {"a":[1,{}]} é 🎉 \u2028'


def parse(data: bytes, endpoint: str = CHAT, **kw: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    return parse_output(data, endpoint=endpoint, batch_id="b", **kw)


def spaced(obj: Any, *, ascii_only: bool = False) -> bytes:
    """A line as Python's ``json.dumps`` writes it (the spacing of the API's files)."""
    return json.dumps(obj, ensure_ascii=ascii_only).encode()


def output_line(custom_id: str, body: Any) -> dict[str, Any]:
    response = {"status_code": 200, "request_id": "req_1", "body": body}
    return {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": None}


# -- byte-exact bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "dump",
    [
        orjson.dumps,
        spaced,
        lambda o: spaced(o, ascii_only=True),
        lambda o: json.dumps(o, separators=(",", ":")).encode(),
    ],
    ids=["orjson", "json.dumps", "json.dumps-ascii", "json.dumps-compact-ascii"],
)
def test_body_is_the_api_text_byte_for_byte(dump: Any) -> None:
    body = chat_body(TRICKY, usage={"prompt_tokens": 1, "x": 1.50, "big": 2**64 - 1})
    raw = dump(output_line('id "quoted" \\ é', body))
    ok, failed = parse(
        jsonl([raw, raw.replace(b"batch_req_1", b"batch_req_2").replace(b"id ", b"i2 ")])
    )
    assert failed.is_empty()
    text = dump(body).decode()
    assert ok["body"].to_list() == [text, text]
    assert ok["custom_id"].to_list() == ['id "quoted" \\ é', 'i2 "quoted" \\ é']
    assert ok["content"][0] == TRICKY


def test_spec_example_body_is_exact() -> None:
    ok, _ = parse(SPEC_EXAMPLE)
    start = SPEC_EXAMPLE.index(b'"body": ') + len(b'"body": ')
    assert ok["body"][0] == SPEC_EXAMPLE[start : -len(b'}, "error": null}\n')].decode()


def test_lines_are_cut_only_in_the_expected_layout() -> None:
    body = chat_body()
    lines = [
        orjson.dumps(output_line("a", body)),
        spaced(output_line("b", body)),
        orjson.dumps({"custom_id": "c", **output_line("c", body)}),  # other key order
        orjson.dumps({**output_line("d", body), "error": {"code": "x", "message": "y"}}),
        orjson.dumps(output_line("e", body)).replace(b'"body":', b'"body" :'),
    ]
    frame = read_text_lines(jsonl(lines))
    assert frame["_span"].is_not_null().to_list() == [True, True, False, False, False]


# -- every other layout parses the same, whole -------------------------------------------


def _reference(raw: bytes) -> dict[str, Any]:
    """What a line means, by orjson: the columns parse_output must give."""
    obj = orjson.loads(raw)
    resp, err = obj.get("response"), obj.get("error")
    status = resp.get("status_code") if isinstance(resp, dict) else None
    body = resp.get("body") if isinstance(resp, dict) else None
    ok = err is None and isinstance(resp, dict) and isinstance(status, int) and 200 <= status < 300
    fields = body if isinstance(body, dict) else {}
    choice = (fields.get("choices") or [{}])[0]
    # A 2xx answer counts only with the chat body's shape (else: a parse failure).
    ok = ok and isinstance(choice.get("message"), dict) and choice.get("finish_reason") is not None
    return {
        "ok": ok,
        "custom_id": obj["custom_id"],
        "request_id": resp.get("request_id") if isinstance(resp, dict) else None,
        "status_code": status,
        "model": fields.get("model"),
        "content": (choice.get("message") or {}).get("content"),
        "body": body,
    }


def _check_against_reference(raws: list[bytes], ok: pl.DataFrame, failed: pl.DataFrame) -> None:
    refs = [_reference(r) for r in raws]
    assert ok["custom_id"].to_list() == [r["custom_id"] for r in refs if r["ok"]]
    assert failed["custom_id"].to_list() == [r["custom_id"] for r in refs if not r["ok"]]
    assert failed["line"].to_list() == [
        raw.decode() for raw, r in zip(raws, refs, strict=True) if not r["ok"]
    ]
    got = ok.select("request_id", "status_code", "model", "content").rows()
    want = [(r["request_id"], r["status_code"], r["model"], r["content"]) for r in refs if r["ok"]]
    assert got == want
    assert [orjson.loads(b) for b in ok["body"]] == [r["body"] for r in refs if r["ok"]]


def _with_extra(obj: dict[str, Any], where: str) -> dict[str, Any]:
    resp = dict(obj["response"])
    if where == "response":
        resp["extra"] = {"k": {}}
        return {**obj, "response": resp}
    if where == "top":
        return {k: v for k, v in obj.items() if k != "error"} | {"extra": {}, "error": None}
    if where == "reversed":
        return {**{k: obj[k] for k in reversed(obj)}, "response": dict(reversed(resp.items()))}
    if where == "no_id":
        return {k: v for k, v in obj.items() if k != "id"}
    if where == "status_null":
        resp["status_code"] = None
        return {**obj, "response": resp}
    if where == "request_id_null":
        resp["request_id"] = None
        return {**obj, "response": resp}
    if where == "body_list":
        resp["body"] = [1, {"a": "}"}]
        return {**obj, "response": resp}
    raise AssertionError(where)


@pytest.mark.parametrize(
    "where",
    ["response", "top", "reversed", "no_id", "status_null", "request_id_null", "body_list"],
)
@pytest.mark.parametrize("dump", [orjson.dumps, spaced])
def test_other_layouts_parse_like_the_reference(where: str, dump: Any) -> None:
    raws = [
        dump(_with_extra(output_line("a", chat_body(TRICKY)), where)),
        dump(output_line("b", chat_body("plain"))),
        http_error_line("c"),
    ]
    ok, failed = parse(jsonl(raws))
    _check_against_reference(raws, ok, failed)


def test_whitespace_between_tokens_and_a_duplicate_body_key() -> None:
    body = orjson.dumps(chat_body("x"))
    raws = [
        b'{ "id" : "i" ,\t"custom_id":"a" , "response" : { "status_code" : 200 , '
        b'"request_id" : "r" , "body": ' + body + b'}, "error": null}',
        b'{"id":"i","custom_id":"b","response":{"status_code":200,"request_id":"r",'
        b'"body":{"model":"m1"},"body":' + body + b'},"error":null}',
    ]
    ok, failed = parse(jsonl(raws))
    assert ok["body"].to_list() == [body.decode()]  # cut: only JSON whitespace differs
    # Duplicate keys: the first one counts, and `{"model": "m1"}` is no chat answer.
    assert failed.select("custom_id", "stage", "error_code", "line").rows() == [
        ("b", "parse", "unexpected_shape", raws[1].decode())
    ]


_pieces = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
    st.sampled_from(['"', "\\", "{", "}", '"body":', '}},"error":null}', "\n", "é"]),
)
_strings = st.lists(_pieces, max_size=12).map("".join)
_layouts = st.sampled_from(
    ["standard", "response", "top", "reversed", "no_id", "status_null", "error"]
)
_dumps = st.sampled_from(["orjson", "spaced", "spaced_ascii", "compact_ascii", "wide"])


def _dump(obj: Any, how: str) -> bytes:
    if how == "orjson":
        return orjson.dumps(obj)
    if how == "wide":
        return json.dumps(obj, separators=(" , ", " : ")).encode()
    if how == "compact_ascii":
        return json.dumps(obj, separators=(",", ":")).encode()
    return spaced(obj, ascii_only=how == "spaced_ascii")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(_strings.filter(bool), _strings, _layouts, _dumps, st.sampled_from([200, 404])),
        unique_by=lambda r: r[0],
        max_size=12,
    )
)
def test_any_layout_gives_the_reference_columns(
    rows: list[tuple[str, str, str, str, int]],
) -> None:
    raws, exact = [], []
    for cid, content, layout, how, status in rows:
        obj = output_line(cid, chat_body(content))
        obj["response"]["status_code"] = status
        if layout == "error":
            obj["error"] = {"code": "server_error", "message": content}
        elif layout != "standard":
            obj = _with_extra(obj, layout)
        raws.append(_dump(obj, how))
        if layout == "standard" and status == 200 and how != "wide":
            exact.append(_dump(obj["response"]["body"], how).decode())
    ok, failed = parse(jsonl(raws))
    _check_against_reference(raws, ok, failed)
    # The API's layout, minified or spaced: the body is its exact text.
    standard = [cid for cid, _, layout, how, s in rows if layout == "standard" and s == 200]
    exact_ids = [
        cid for cid, _, layout, how, s in rows if (layout, s) == ("standard", 200) and how != "wide"
    ]
    got = dict(zip(ok["custom_id"], ok["body"], strict=True))
    assert [got[c] for c in exact_ids] == exact
    assert set(standard) <= set(got)


# -- error files and images ----------------------------------------------------------------


def test_error_file_lines_in_either_layout() -> None:
    err = orjson.loads(http_error_line("a", 429, "rate_limit_exceeded", "slow down"))
    raws = [orjson.dumps(err), spaced({**err, "custom_id": "b"})]
    failed = parse_errors(jsonl(raws), endpoint=CHAT, batch_id="b")
    assert failed.select("custom_id", "status_code", "error_code", "retryable").rows() == [
        ("a", 429, "rate_limit_exceeded", True),
        ("b", 429, "rate_limit_exceeded", True),
    ]
    assert failed["line"].to_list() == [r.decode() for r in raws]


@pytest.mark.parametrize("dump", [orjson.dumps, spaced])
def test_image_text_is_dropped_from_the_body_in_either_layout(dump: Any) -> None:
    body = image_body({"b64_json": "QUJD" * 1000, "revised_prompt": "a cat"}, {"b64_json": "REVG"})
    ok, _ = parse(jsonl([dump(output_line("i", body))]), "/v1/images/generations", model="m")
    assert ok["b64_json"][0] == "QUJD" * 1000
    assert "QUJD" not in ok["body"][0]
    assert orjson.loads(ok["body"][0])["data"] == [
        {"b64_json": None, "revised_prompt": "a cat"},
        {"b64_json": "REVG"},
    ]


def test_line_numbers_count_blank_lines() -> None:
    data = b"\xef\xbb\xbf" + line("a", chat_body()) + b"\r\n\r\n \t\n" + line("b", chat_body())
    frame = read_text_lines(data)
    assert frame.select("_ordinal", "_lineno").rows() == [(0, 1), (1, 4)]
    assert frame["line"].to_list() == [
        line("a", chat_body()).decode(),
        line("b", chat_body()).decode(),
    ]
