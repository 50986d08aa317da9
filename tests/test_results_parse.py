from __future__ import annotations

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_results_lines import (
    chat_body,
    completions_body,
    embeddings_body,
    http_error_line,
    image_body,
    jsonl,
    line,
    moderation_body,
    moderation_result,
    non_http_line,
    responses_body,
)

from batchframe._results import parse_errors, parse_output
from batchframe._schemas import ENDPOINT_KEYS, FAILED_SCHEMA, ok_schema
from batchframe.exceptions import ResultsError

CHAT = "/v1/chat/completions"
LABEL = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number"},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}


def parse(data: bytes, endpoint: str = CHAT, **kw: object) -> tuple[pl.DataFrame, pl.DataFrame]:
    return parse_output(data, endpoint=endpoint, batch_id="batch_1", **kw)  # type: ignore[arg-type]


# -- declared schemas, even with nothing to parse ----------------------------------------


@pytest.mark.parametrize("endpoint", [f"/v1/{k}" for k in ENDPOINT_KEYS])
@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n  \n"])
def test_empty_files_have_declared_schemas(endpoint: str, data: bytes) -> None:
    ok, failed = parse(data, endpoint)
    assert ok.schema == ok_schema(endpoint)
    assert failed.schema == FAILED_SCHEMA
    assert ok.is_empty() and failed.is_empty()
    assert parse_errors(data, endpoint=endpoint, batch_id="b").schema == FAILED_SCHEMA


def test_empty_file_with_schema_and_dim_is_fully_typed() -> None:
    ok, _ = parse(b"", CHAT, json_schema=LABEL)
    assert ok.schema["parsed"] == pl.Struct(
        {"label": pl.Enum(["positive", "negative", "neutral"]), "score": pl.Float64}
    )
    ok, _ = parse(b"", "/v1/embeddings", embedding_dim=1536)
    assert ok.schema["embedding"] == pl.Array(pl.Float32, 1536)


def test_all_failed_output_still_has_declared_ok_schema() -> None:
    ok, failed = parse(jsonl([http_error_line("a"), line("b", status=0)]))
    assert ok.schema == ok_schema(CHAT) and ok.is_empty()
    assert failed["custom_id"].to_list() == ["a", "b"]


# -- chat/completions --------------------------------------------------------------------


def test_chat_success_columns_and_values() -> None:
    tool = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    body = chat_body("positive")
    data = jsonl(
        [
            line("r1", body),
            line("r2", chat_body(None, tool_calls=[tool], finish_reason="tool_calls")),
        ]
    )
    ok, failed = parse(data)
    assert failed.is_empty()
    row = ok.row(0, named=True)
    assert row | {"body": None} == {
        "custom_id": "r1",
        "batch_id": "batch_1",
        "request_id": "req_0538abc",
        "status_code": 200,
        "model": "gpt-4o-mini-2024-07-18",
        "body": None,
        "content": "positive",
        "refusal": None,
        "finish_reason": "stop",
        "tool_calls": None,
        "prompt_tokens": 22,
        "completion_tokens": 4,
        "total_tokens": 26,
        "cached_tokens": 6,
        "reasoning_tokens": 2,
    }
    assert orjson.loads(row["body"]) == body
    assert ok["tool_calls"][1].to_list() == [tool]
    assert ok["finish_reason"][1] == "tool_calls"


def test_missing_usage_fields_are_null_but_an_empty_answer_fails() -> None:
    lines = [line("a", chat_body(usage={"prompt_tokens": 3})), line("b", {"choices": []})]
    ok, failed = parse(jsonl(lines))
    assert ok.select("prompt_tokens", "completion_tokens", "cached_tokens", "content").rows() == [
        (3, None, None, "positive"),
    ]
    # An answer without choices is not an ok row of nulls: it fails, its line kept whole.
    assert failed.select("custom_id", "stage", "error_code", "line").rows() == [
        ("b", "parse", "unexpected_shape", lines[1].decode())
    ]
    assert "`choices` is empty" in failed["error_message"][0]


def _spaced(raw: bytes) -> bytes:
    """The same line with another key order: parsed whole, not cut."""
    obj = orjson.loads(raw)
    return orjson.dumps({"custom_id": obj["custom_id"], "error": None, "response": obj["response"]})


@pytest.mark.parametrize("layout", ["cut", "whole"])
def test_counts_read_as_numbers_the_same_in_both_readers(layout: str) -> None:
    """A count is read as DuckDB reads a BIGINT, on the cut path and on the whole one."""
    usage = {"prompt_tokens": 7.5, "completion_tokens": True, "total_tokens": "12"}
    lines = [
        line("a", chat_body(usage=usage)),
        line("b", chat_body(usage={"prompt_tokens": "many"})),
        line("c", chat_body(usage={"prompt_tokens": [3]})),
    ]
    if layout == "whole":
        lines = [_spaced(raw) for raw in lines]
    ok, failed = parse(jsonl(lines))
    assert ok.select("custom_id", "prompt_tokens", "completion_tokens", "total_tokens").rows() == [
        ("a", 8, 1, 12)
    ]
    assert failed["custom_id"].to_list() == ["b", "c"]
    messages = failed["error_message"].to_list()
    assert "`usage.prompt_tokens` should be an integer but is a string" in messages[0]
    assert "`usage.prompt_tokens` should be an integer but is an array" in messages[1]


@pytest.mark.parametrize("layout", ["cut", "whole"])
def test_tool_calls_given_as_text_fail_and_real_ones_are_typed(layout: str) -> None:
    """A string holding a JSON array of tool calls is not taken for the array itself."""
    tool = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    lines = [
        line("text", chat_body(None, tool_calls=orjson.dumps([tool]).decode())),  # type: ignore[arg-type]
        line("real", chat_body(None, tool_calls=[tool], finish_reason="tool_calls")),
        line("plain", chat_body("7 apples")),  # looks like a number: looked at, and fine
    ]
    if layout == "whole":
        lines = [_spaced(raw) for raw in lines]
    ok, failed = parse(jsonl(lines))
    assert ok["custom_id"].to_list() == ["real", "plain"]
    assert ok["tool_calls"].to_list() == [[tool], None]
    assert ok["content"].to_list() == [None, "7 apples"]
    assert failed.select("custom_id", "stage").rows() == [("text", "parse")]
    message = "`choices[0].message.tool_calls` should be an array but is a string"
    assert message in failed["error_message"][0]


def test_crlf_blank_lines_bom_and_no_trailing_newline() -> None:
    lines = [line("a", chat_body()), http_error_line("b"), line("c", chat_body())]
    data = b"\xef\xbb\xbf" + lines[0] + b"\r\n\r\n  \n" + lines[1] + b"\r\n" + lines[2]
    ok, failed = parse(data)
    assert ok["custom_id"].to_list() == ["a", "c"]
    assert failed["line"].to_list() == [lines[1].decode()]


def test_huge_line() -> None:
    content = "x" * (40 * 2**20)
    ok, _ = parse(jsonl([line("big", chat_body(content)), line("small", chat_body())]))
    assert ok["content"].str.len_bytes().to_list() == [40 * 2**20, 8]


def test_path_input(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "out.jsonl"
    p.write_bytes(jsonl([line("a", chat_body()), http_error_line("b")]))
    ok, failed = parse_output(p, endpoint=CHAT, batch_id="b")
    assert ok["custom_id"].to_list() == ["a"] and failed["custom_id"].to_list() == ["b"]


def test_unknown_endpoint_keeps_common_columns() -> None:
    ok, _ = parse(jsonl([line("v", {"id": "video_1", "model": "sora-2"})]), "/v1/videos")
    assert ok.columns == ["custom_id", "batch_id", "request_id", "status_code", "model", "body"]
    assert ok["model"].to_list() == ["sora-2"]


# -- failures ----------------------------------------------------------------------------


def test_error_file_kinds() -> None:
    lines = [
        http_error_line("http400"),
        http_error_line("http429", 429, "rate_limit_exceeded", "Rate limit", "requests"),
        http_error_line("http500", 500, None, "The server had an error", "server_error"),
        http_error_line(
            "policy", 400, "content_policy_violation", "Refused", "invalid_request_error"
        ),
        non_http_line("exp", "batch_expired"),
        non_http_line("can", "batch_cancelled"),
        non_http_line("tmo", "request_timeout"),
    ]
    failed = parse_errors(jsonl(lines), endpoint=CHAT, batch_id="batch_9", attempts=3)
    assert failed.schema == FAILED_SCHEMA
    assert failed.drop("line", "error_message").rows() == [
        ("http400", "request", 400, "context_length_exceeded", False, 3, "batch_9"),
        ("http429", "request", 429, "rate_limit_exceeded", True, 3, "batch_9"),
        ("http500", "request", 500, "server_error", True, 3, "batch_9"),
        ("policy", "request", 400, "content_policy_violation", False, 3, "batch_9"),
        ("exp", "expired", None, "batch_expired", True, 3, "batch_9"),
        ("can", "cancelled", None, "batch_cancelled", False, 3, "batch_9"),
        ("tmo", "request", None, "request_timeout", True, 3, "batch_9"),
    ]
    assert failed["error_message"][0].startswith("This model's maximum context length")
    assert failed["line"].to_list() == [raw.decode() for raw in lines]


def test_http_error_and_status_zero_in_output_file_are_failures() -> None:
    # Quirks: 4xx/5xx lines and "status_code 0" lines can sit in the output file.
    data = jsonl([line("ok", chat_body()), http_error_line("bad", 404), line("zero", {}, status=0)])
    ok, failed = parse(data)
    assert ok["custom_id"].to_list() == ["ok"]
    assert failed.select("custom_id", "stage", "status_code", "retryable").rows() == [
        ("bad", "request", 404, False),
        ("zero", "request", 0, True),
    ]
    assert failed["error_message"][1] == "HTTP status 0 without an error message"


@pytest.mark.parametrize(
    ("raw", "code", "message", "retryable"),
    [
        (
            line("x", chat_body(), error={"code": "server_error", "message": "boom"}),
            "server_error",
            "boom",
            True,
        ),
        # An answer came back (HTTP 200): retrying could pay twice.
        (line("x", chat_body(), error="free-form failure"), None, "free-form failure", False),
        (line("x", response=False), None, "no response and no error in the line", True),
        (line("x", chat_body(), status=None), None, "no response and no error in the line", True),
    ],
)
def test_lines_that_are_not_clean_successes_fail(
    raw: bytes, code: str | None, message: str, retryable: bool
) -> None:
    ok, failed = parse(jsonl([raw]))
    assert ok.is_empty()
    assert failed.select("custom_id", "error_code", "error_message", "retryable").row(0) == (
        "x",
        code,
        message,
        retryable,
    )


def test_success_line_in_error_file_is_kept_as_failure() -> None:
    failed = parse_errors(jsonl([line("odd", chat_body())]), endpoint=CHAT, batch_id="b")
    assert failed.select("custom_id", "error_code", "retryable").row(0) == (
        "odd",
        "unexpected_success",
        False,
    )
    assert orjson.loads(failed["line"][0])["response"]["body"]["choices"]


@pytest.mark.parametrize(
    ("data", "lineno"),
    [
        (jsonl([line("a", chat_body()), b'{"custom_id": "b", "response": {'], trailing=False), 2),
        (jsonl([line("a", chat_body()), b"", b"not json", line("c", chat_body())]), 3),
        (jsonl([line("a", chat_body()), b"[1, 2]"]), 2),
        (jsonl([line("a", chat_body()), b'{"response": null, "error": null}']), 2),
        (jsonl([b'{"custom_id": "", "response": null}']), 1),
        (jsonl([line("a", chat_body()), b'{"custom_id": "b", "response": "text"}']), 2),
    ],
)
def test_malformed_lines_raise_naming_the_line(data: bytes, lineno: int) -> None:
    with pytest.raises(ResultsError, match=rf"line {lineno}\b"):
        parse(data)
    with pytest.raises(ResultsError, match=rf"line {lineno}\b"):
        parse_errors(data, endpoint=CHAT, batch_id="b")


def test_invalid_utf8_raises() -> None:
    with pytest.raises(ResultsError, match="line 1"):
        parse(b'{"custom_id": "\xff", "response": null}\n')


# -- structured outputs ------------------------------------------------------------------


def test_structured_outputs_valid_and_invalid() -> None:
    good = '{"label": "positive", "score": 0.9}'
    lines = [
        line("good", chat_body(good)),
        line("int_score", chat_body('{"label": "negative", "score": 1}')),
        line("not_json", chat_body('{"label": "posi', finish_reason="length")),
        line("wrong_enum", chat_body('{"label": "great", "score": 1}')),
        line("missing", chat_body('{"label": "neutral"}')),
        line("extra", chat_body('{"label": "neutral", "score": 0, "why": "x"}')),
        line("refused", chat_body(None, refusal="I can't help with that.")),
    ]
    wrapped = {
        "type": "json_schema",
        "json_schema": {"name": "label", "schema": LABEL, "strict": True},
    }
    ok, failed = parse(jsonl(lines), json_schema=wrapped)
    assert ok["custom_id"].to_list() == ["good", "int_score"]
    assert ok["parsed"].to_list() == [
        {"label": "positive", "score": 0.9},
        {"label": "negative", "score": 1.0},
    ]
    assert ok.schema["parsed"] == pl.Struct(
        {"label": pl.Enum(["positive", "negative", "neutral"]), "score": pl.Float64}
    )
    assert failed.select("custom_id", "stage", "error_code", "retryable").rows() == [
        ("not_json", "parse", "invalid_json", False),
        ("wrong_enum", "parse", "schema_mismatch", False),
        ("missing", "parse", "schema_mismatch", False),
        ("extra", "parse", "schema_mismatch", False),
        ("refused", "parse", "refusal", False),
    ]
    messages = dict(failed.select("custom_id", "error_message").iter_rows())
    assert "cut off" in messages["not_json"]
    assert "'great' is not one of" in messages["wrong_enum"]
    assert "missing required property 'score'" in messages["missing"]
    assert "unexpected properties ['why']" in messages["extra"]
    assert messages["refused"] == "I can't help with that."
    # Nothing paid for is lost: each failure keeps its raw line.
    assert failed["line"].to_list() == [raw.decode() for raw in lines[2:]]


def test_structured_nested_struct_lists_and_nulls() -> None:
    schema = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "qty": {"type": ["integer", "null"]},
                    },
                    "required": ["name", "qty"],
                    "additionalProperties": False,
                },
            },
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["items", "note"],
        "additionalProperties": False,
    }
    answer = {"items": [{"name": "a", "qty": 2}, {"name": "b", "qty": None}], "note": None}
    ok, failed = parse(
        jsonl([line("n", chat_body(orjson.dumps(answer).decode()))]), json_schema=schema
    )
    assert failed.is_empty()
    assert ok["parsed"].to_list() == [answer]
    assert ok.schema["parsed"] == pl.Struct(
        {"items": pl.List(pl.Struct({"name": pl.String, "qty": pl.Int64})), "note": pl.String}
    )


def test_responses_structured_and_output_text() -> None:
    fmt = {"format": {"type": "json_schema", "name": "label", "schema": LABEL, "strict": True}}
    lines = [
        line("r1", responses_body('{"label": "neutral", "score": 0.5}')),
        line("r2", responses_body(None, refusal="No.")),
        line("r3", responses_body(None)),
    ]
    ok, failed = parse(jsonl(lines), "/v1/responses", json_schema=fmt)
    assert ok.drop("body").row(0, named=True) == {
        "custom_id": "r1",
        "batch_id": "batch_1",
        "request_id": "req_0538abc",
        "status_code": 200,
        "model": "gpt-4.1-mini-2025-04-14",
        "output_text": '{"label": "neutral", "score": 0.5}',
        "status": "completed",
        "input_tokens": 36,
        "output_tokens": 87,
        "total_tokens": 123,
        "cached_tokens": 4,
        "reasoning_tokens": 64,
        "parsed": {"label": "neutral", "score": 0.5},
    }
    assert failed.select("custom_id", "error_code", "error_message").rows() == [
        ("r2", "refusal", "No."),
        ("r3", "no_content", "the answer has no text to parse"),
    ]


def test_responses_output_text_joins_all_text_parts() -> None:
    body = responses_body("Hello, ")
    body["output"][1]["content"].append({"type": "output_text", "text": "world", "annotations": []})
    body["output"].append(
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "!"}]}
    )
    ok, _ = parse(jsonl([line("r", body)]), "/v1/responses")
    assert ok["output_text"].to_list() == ["Hello, world!"]
    assert ok.schema == ok_schema("/v1/responses")


# -- embeddings --------------------------------------------------------------------------


@pytest.mark.parametrize("b64", [False, True])
def test_embeddings_one_row_per_input(b64: bool) -> None:
    vecs = [[0.5, -0.25, 1.0], [0.125, 2.0, -1.5]]
    data = jsonl(
        [line("a", embeddings_body(vecs, b64=b64)), line("b", embeddings_body(vecs[:1], b64=b64))]
    )
    ok, failed = parse(data, "/v1/embeddings")
    assert failed.is_empty()
    assert ok.schema == ok_schema("/v1/embeddings", embedding_dim=3)
    assert ok.select("custom_id", "index", "prompt_tokens").rows() == [
        ("a", 0, 8),
        ("a", 1, None),  # usage is per request: on its first row only
        ("b", 0, 8),
    ]
    assert ok["embedding"].to_list() == [vecs[0], vecs[1], vecs[0]]
    assert orjson.loads(ok["body"][0]) == {
        "object": "list",
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }


def test_embeddings_wrong_width_or_no_data_fail_as_parse() -> None:
    data = jsonl(
        [
            line("ok", embeddings_body([[1.0, 2.0]])),
            line("wide", embeddings_body([[1.0, 2.0], [1.0, 2.0, 3.0]])),
            line("none", {"object": "list", "data": [], "model": "m"}),
            http_error_line("http", 400),
        ]
    )
    ok, failed = parse(data, "/v1/embeddings", embedding_dim=2)
    assert ok["custom_id"].to_list() == ["ok"]
    assert failed.select("custom_id", "stage", "error_code").rows() == [
        ("wide", "parse", "embedding_dim"),
        ("none", "parse", "no_embeddings"),
        ("http", "request", "context_length_exceeded"),
    ]


# -- other endpoints ---------------------------------------------------------------------


def test_completions() -> None:
    ok, _ = parse(jsonl([line("c", completions_body())]), "/v1/completions")
    assert ok.drop("body").row(0) == (
        "c",
        "batch_1",
        "req_0538abc",
        200,
        "gpt-3.5-turbo-instruct",
        " world",
        "length",
        5,
        7,
        12,
    )


def test_moderations_structs_and_several_results() -> None:
    data = jsonl(
        [
            line("one", moderation_body(moderation_result())),
            line(
                "two",
                moderation_body(
                    moderation_result(("hate",)), moderation_result(("violence",), 0.2)
                ),
            ),
        ]
    )
    ok, _ = parse(data, "/v1/moderations")
    assert ok.schema == ok_schema("/v1/moderations")
    assert ok["flagged"].to_list() == [False, True]
    cats = ok["categories"][1]
    assert cats["hate"] and cats["violence"] and not cats["sexual"]
    assert ok["category_scores"][1]["hate"] == 0.9
    assert ok["category_scores"][1]["sexual"] == 0.2  # max over the request's results
    assert ok["category_scores"][0]["self-harm/intent"] == 0.01


@pytest.mark.parametrize("endpoint", ["/v1/images/generations", "/v1/images/edits"])
def test_images_first_image_in_columns_rest_in_body(endpoint: str) -> None:
    data = jsonl(
        [
            line(
                "i",
                image_body({"b64_json": "QUJD", "revised_prompt": "a cat"}, {"b64_json": "REVG"}),
            ),
            line("u", image_body({"url": "https://x/y.png"}, usage=False)),
        ]
    )
    ok, _ = parse(data, endpoint, model="gpt-image-1")
    assert ok.drop("body").rows() == [
        ("i", "batch_1", "req_0538abc", 200, "gpt-image-1", "QUJD", None, "a cat", 2, 50, 272, 322),
        (
            "u",
            "batch_1",
            "req_0538abc",
            200,
            "gpt-image-1",
            None,
            "https://x/y.png",
            None,
            1,
            None,
            None,
            None,
        ),
    ]
    body = orjson.loads(ok["body"][0])
    # The first image lives once, in `b64_json`; further ones stay in `body`.
    assert body["data"] == [{"b64_json": None, "revised_prompt": "a cat"}, {"b64_json": "REVG"}]


def test_failed_rows_keep_file_order_and_exact_lines() -> None:
    lines = [http_error_line(f"e{i}", 500 if i % 2 else 400) for i in range(5)]
    lines.insert(2, line("ok", chat_body()))
    _, failed = parse(jsonl(lines, crlf=True))
    expected = pl.DataFrame(
        {
            "custom_id": [f"e{i}" for i in range(5)],
            "line": [raw.decode() for raw in lines if b'"ok"' not in raw],
        }
    )
    assert_frame_equal(failed.select("custom_id", "line"), expected)


# -- engine plumbing ---------------------------------------------------------------------


def test_buffers_and_paths_with_glob_characters(tmp_path: object) -> None:
    from pathlib import Path

    data = jsonl([line("a", chat_body()), http_error_line("b")])
    expected = parse(data)
    path = Path(str(tmp_path)) / "out[1]*?.jsonl"
    path.write_bytes(data)
    for source in (bytearray(data), memoryview(data), path, str(path)):
        got = parse_output(source, endpoint=CHAT, batch_id="batch_1")  # type: ignore[arg-type]
        assert_frame_equal(got[0], expected[0])
        assert_frame_equal(got[1], expected[1])


def test_a_control_character_outside_json_strings_names_the_line() -> None:
    with pytest.raises(ResultsError, match=r"line 2\b"):
        parse(jsonl([line("a", chat_body()), b'{"custom_id": "b",\x1f "response": null}']))


def test_parsing_from_many_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = [jsonl([line(f"{k}-{i}", chat_body(f"c{k}")) for i in range(200)]) for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        frames = list(pool.map(lambda d: parse(d)[0], files))
    for k, ok in enumerate(frames):
        assert ok["content"].unique().to_list() == [f"c{k}"]
        assert ok["custom_id"].to_list() == [f"{k}-{i}" for i in range(200)]
