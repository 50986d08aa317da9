"""Request-shape checks: what the API refuses line by line is refused before upload.

The tables come from the openai package's request TypedDicts; the bad-input corpus
(``benchmarks/reliability/bad_inputs.py``) runs here, and every body it holds that the
API would refuse is refused by the local server too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
import typing_extensions
from conftest_server import read_lines, run_batch

import batchframe as bf
from batchframe._request_schema import (
    CHAT_ROLES,
    KNOWN_KEYS,
    MAX_EMBEDDING_INPUTS_PER_REQUEST,
    REQUIRED_KEYS,
    RESPONSES_ROLES,
)
from batchframe._server._body_checks import check_body

CORPUS = Path(__file__).parent.parent / "benchmarks" / "reliability" / "bad_inputs.py"


def _corpus() -> Any:
    spec = importlib.util.spec_from_file_location("bad_inputs", CORPUS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs"] = module
    spec.loader.exec_module(module)
    return module


def test_bad_input_corpus_is_refused_before_upload_and_by_the_server() -> None:
    corpus = _corpus()
    outcomes = corpus.run_all()
    assert len(outcomes) >= 80
    wrong = [(o.case.name, o.detail) for o in outcomes if not o.ok]
    assert wrong == []
    api = [o for o in outcomes if o.server_refuses is not None]
    assert len(api) >= 40
    assert [o.case.name for o in api if not o.server_refuses] == []


# -- the tables are the official request schemas ------------------------------------


def _keys(typed: Any) -> tuple[set[str], set[str]]:
    hints = typing_extensions.get_type_hints(typed, include_extras=True)
    required = {
        k for k, v in hints.items() if typing_extensions.get_origin(v) is typing_extensions.Required
    }
    return required, set(hints)


#: The openai release the key tables were read from; older ones know fewer keys.
TABLES_FROM = (3, 57)
_OPENAI = tuple(int(x) for x in openai.__version__.split(".")[:2])


def test_key_tables_match_the_openai_typeddicts() -> None:
    from openai.types import (
        completion_create_params,
        embedding_create_params,
        image_edit_params,
        image_generate_params,
        moderation_create_params,
    )
    from openai.types.chat import completion_create_params as chat_params
    from openai.types.responses import response_create_params

    typed = {
        "/v1/chat/completions": chat_params.CompletionCreateParamsBase,
        "/v1/responses": response_create_params.ResponseCreateParamsBase,
        "/v1/embeddings": embedding_create_params.EmbeddingCreateParams,
        "/v1/completions": completion_create_params.CompletionCreateParamsBase,
        "/v1/moderations": moderation_create_params.ModerationCreateParams,
        "/v1/images/generations": image_generate_params.ImageGenerateParamsBase,
        "/v1/images/edits": image_edit_params.ImageEditParamsBase,
    }
    assert set(typed) == set(bf.ENDPOINTS) == set(KNOWN_KEYS) == set(REQUIRED_KEYS)
    for endpoint, params in typed.items():
        required, known = _keys(params)
        if endpoint == "/v1/images/edits":  # the batch form is JSON: `images`, not `image`
            required = (required - {"image"}) | {"images"}
            known = (known - {"image"}) | {"images"}
        # `model` is required on every line of a batch (one model per file).
        required = required | {"model"}
        # `stream` is in the streaming variants of the params (batchframe refuses it).
        streams = endpoint not in ("/v1/embeddings", "/v1/moderations")
        known = known | ({"stream"} if streams else set())
        if _OPENAI >= TABLES_FROM:
            assert set(REQUIRED_KEYS[endpoint]) == required, endpoint
            assert KNOWN_KEYS[endpoint] == known, endpoint
        else:  # an older openai (the lowest-versions CI run) knows fewer parameters
            assert known <= KNOWN_KEYS[endpoint], endpoint
            assert set(REQUIRED_KEYS[endpoint]) <= known, endpoint


def test_roles_and_input_cap_match_the_openai_types() -> None:
    from openai.types import embedding_create_params
    from openai.types.chat import (
        ChatCompletionAssistantMessageParam,
        ChatCompletionDeveloperMessageParam,
        ChatCompletionFunctionMessageParam,
        ChatCompletionSystemMessageParam,
        ChatCompletionToolMessageParam,
        ChatCompletionUserMessageParam,
    )
    from openai.types.responses import EasyInputMessageParam

    found = {}
    for message in (
        ChatCompletionAssistantMessageParam,
        ChatCompletionDeveloperMessageParam,
        ChatCompletionFunctionMessageParam,
        ChatCompletionSystemMessageParam,
        ChatCompletionToolMessageParam,
        ChatCompletionUserMessageParam,
    ):
        required, _ = _keys(message)
        role = typing_extensions.get_args(
            typing_extensions.get_args(
                typing_extensions.get_type_hints(message, include_extras=True)["role"]
            )[0]
        )[0]
        found[role] = set(required) - {"role"}
    assert {r: set(k) for r, k in CHAT_ROLES.items()} == found
    role_hint = typing_extensions.get_type_hints(EasyInputMessageParam)["role"]
    assert set(typing_extensions.get_args(role_hint)) == set(RESPONSES_ROLES)
    source = Path(embedding_create_params.__file__).read_text()
    assert f"must be {MAX_EMBEDDING_INPUTS_PER_REQUEST} dimensions or less" in source


# -- valid bodies pass, on both sides -----------------------------------------------

PARTS = [
    {"type": "text", "text": "describe"},
    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
]
VALID: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", bf.chat_body("m", user=pl.col("text"), system="Be brief.")),
    (
        "/v1/chat/completions",
        bf.chat_body(
            "m",
            messages=[
                {"role": "developer", "content": "x"},
                {"role": "user", "content": PARTS},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
                {"role": "user", "content": pl.col("text")},
            ],
            temperature=0.0,
            max_completion_tokens=5,
            n=2,
            seed=-3,
            response_format={"type": "json_object"},
            metadata={"k": "v"},
        ),
    ),
    ("/v1/chat/completions", {"model": pl.col("model"), "messages": pl.col("msgs")}),
    ("/v1/chat/completions", {"model": "m", "messages": [pl.col("msg")]}),
    ("/v1/chat/completions", bf.chat_body("m", user=pl.col("parts"))),
    ("/v1/responses", bf.responses_body("m", input=pl.col("text"), max_output_tokens=9)),
    (
        "/v1/responses",
        bf.responses_body(
            "m",
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": pl.col("text")}]},
                {"type": "function_call_output", "call_id": "c", "output": "1"},
            ],
        ),
    ),
    ("/v1/responses", {"model": "m", "prompt": {"id": "pmpt_1"}}),
    ("/v1/embeddings", bf.embeddings_body("e", input=pl.col("text"), dimensions=8)),
    ("/v1/embeddings", bf.embeddings_body("e", input=pl.col("many"))),
    ("/v1/embeddings", bf.embeddings_body("e", input=["a", pl.col("text")])),
    ("/v1/embeddings", bf.embeddings_body("e", input=pl.col("tokens"))),
    ("/v1/embeddings", bf.embeddings_body("e", input=[[1, 2], [3]])),
    ("/v1/embeddings", bf.embeddings_body("e", input=["x"] * 2048, encoding_format="base64")),
    ("/v1/completions", bf.completions_body("c", prompt=pl.col("text"), max_tokens=3)),
    ("/v1/completions", bf.completions_body("c", prompt=[pl.col("text"), "b"])),
    ("/v1/moderations", bf.moderations_body(input=pl.col("text"))),
    ("/v1/moderations", bf.moderations_body(input=PARTS[:1])),
    ("/v1/moderations", bf.moderations_body(input=pl.col("many"))),
    ("/v1/images/generations", bf.image_body("gpt-image-1", prompt=pl.col("text"), n=2)),
    (
        "/v1/images/edits",
        bf.image_edit_body("gpt-image-1", prompt=pl.col("text"), images=pl.col("url")),
    ),
    (
        "/v1/images/edits",
        bf.image_edit_body("gpt-image-1", prompt="p", images=[{"file_id": "f"}], mask="u"),
    ),
]


def _valid_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ["a", "b"],
            "text": ["hello", "world"],
            "model": pl.Series(["m", "m"], dtype=pl.Categorical),
            "msgs": [
                [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                [{"role": "user", "content": "v"}],
            ],
            "msg": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
            "parts": [[{"type": "text", "text": "t"}], [{"type": "text", "text": "u"}]],
            "many": [["a", "b"], ["c"] * 2048],
            "tokens": [[1, 2, 3], [4]],
            "url": ["https://example.com/a.png", "https://example.com/b.png"],
        }
    )


@pytest.mark.parametrize(("endpoint", "body"), VALID)
def test_valid_bodies_are_accepted_by_batchframe_and_the_server(
    endpoint: str, body: dict[str, Any]
) -> None:
    df = _valid_frame()
    req = bf.build_requests(df, endpoint=endpoint, body=body, custom_id="id")
    for line_body in req.frame["body"].to_list():
        refused = check_body(endpoint, json.loads(line_body))
        assert refused is None, refused.message
    # The same holds when the table is streamed.
    streamed = bf.build_requests(df.lazy(), endpoint=endpoint, body=body, custom_id="id")
    assert streamed.plan()["n_requests"].sum() == 2


def test_unknown_keys_other_than_typos_pass_batchframe_and_forwarding_only():
    # vLLM's `top_k` is no OpenAI parameter: the API (and the server in its default,
    # OpenAI mode) refuses it, a model server behind executor="forward" takes it.
    body = bf.chat_body("m", user=pl.col("text"), top_k=5)
    req = bf.build_requests(_valid_frame(), endpoint="/v1/chat/completions", body=body)
    line = json.loads(req.frame["body"][0])
    refused = check_body("/v1/chat/completions", line)
    assert refused is not None and refused.code == "unknown_parameter"
    assert check_body("/v1/chat/completions", line, strict_keys=False) is None
    foreign = {**line, "dimensions": 8}
    assert check_body("/v1/chat/completions", foreign, strict_keys=False) is not None


# -- row errors name positions and custom_ids, in every input kind -------------------


def test_row_errors_name_positions_and_ids_in_every_input_kind(constructor, memfs):
    df = pl.DataFrame({"id": ["r0", "r1", "r2", "r3"], "t": [["a"], [], ["c"], ["d", ""]]})
    body = bf.embeddings_body("e", input=pl.col("t"))
    with pytest.raises(bf.InvalidBodyError, match=r"row\(s\) \[1\] \(custom_id \['r1'\]\)") as e:
        bf.build_requests(
            constructor(df), endpoint="/v1/embeddings", body=body, custom_id="id"
        ).write("memory://rows")
    assert e.value.rows == [1]
    assert e.value.custom_ids == ["r1"]
    assert e.value.column == "input"
    assert not memfs.find("/rows")  # nothing left written


def test_row_errors_from_a_record_batch_reader(memfs):
    import pyarrow as pa

    df = pl.DataFrame({"id": [f"r{i}" for i in range(10)], "role": ["user"] * 9 + ["usr"]})
    table = df.to_arrow()
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=3))
    body = {"model": "m", "messages": [{"role": pl.col("role"), "content": "hi"}]}
    req = bf.build_requests(reader, endpoint="/v1/chat/completions", body=body, custom_id="id")
    with pytest.raises(bf.InvalidBodyError, match=r"\[9\] \(custom_id \['r9'\]\)") as e:
        req.write("memory://reader")
    assert e.value.column == "messages[0].role"
    assert not memfs.find("/reader")


def test_existing_row_errors_name_ids_too(constructor, memfs):
    df = pl.DataFrame({"id": [10, 11, 12], "text": ["x", None, "z"]})
    body = bf.chat_body("m", user=pl.col("text"))
    with pytest.raises(bf.NullValueError, match=r"\[1\] \(custom_id \['11'\]\)") as e:
        bf.build_requests(
            constructor(df), endpoint="/v1/chat/completions", body=body, custom_id="id"
        ).write("memory://nulls")
    assert e.value.custom_ids == ["11"]
    big = pl.DataFrame({"id": ["s", "big"], "text": ["x", "y" * 3_000]})
    with pytest.raises(bf.RequestTooLargeError, match=r"\['big'\]"):
        bf.build_requests(big, endpoint="/v1/chat/completions", body=body, custom_id="id").write(
            "memory://big", limits=bf.BatchLimits(max_bytes=1_000)
        )


def test_errors_of_a_later_chunk_name_global_positions_and_ids():
    n = 250_000  # three chunks of 100,000 rows
    bad = [120_001, 249_999]
    roles = pl.Series(["user"] * n).scatter(bad, "bot")
    df = pl.DataFrame({"id": [f"k{i}" for i in range(n)], "r": roles, "text": ["x"] * n})
    body = {"model": "m", "messages": [{"role": pl.col("r"), "content": pl.col("text")}]}
    for data in (df, df.lazy()):
        with pytest.raises(bf.InvalidBodyError) as e:
            bf.build_requests(
                data, endpoint="/v1/chat/completions", body=body, custom_id="id"
            ).plan()
        # The first chunk with a bad row raises; its rows keep their place in the input.
        assert e.value.rows[0] == bad[0]
        assert e.value.custom_ids[0] == f"k{bad[0]}"


def test_ids_go_next_to_the_positions_not_into_a_path():
    df = pl.DataFrame({"id": ["a", "b"], "r": ["user", "bot"]})
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": pl.col("r"), "content": "x"}],
    }
    with pytest.raises(bf.InvalidBodyError) as e:
        bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
    message = str(e.value)
    assert message.startswith("`messages[1].role` is not one of")
    assert "first at row(s) [1] (custom_id ['b'])" in message


def test_content_derived_ids_name_positions_only():
    df = pl.DataFrame({"t": ["a", "", "c"]})
    with pytest.raises(bf.InvalidBodyError, match=r"row\(s\) \[1\]") as e:
        bf.build_requests(
            df, endpoint="/v1/embeddings", body=bf.embeddings_body("e", input=pl.col("t"))
        )
    assert e.value.custom_ids == []


def test_a_refused_streamed_job_uploads_nothing(tmp_path):
    df = pl.DataFrame({"id": ["a", "b", "c"], "t": ["x", "y", ""]})
    req = bf.build_requests(
        df.lazy(),
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("e", input=pl.col("t")),
        custom_id="id",
    )
    with bf.LocalBatchServer() as server:
        client = server.client(max_retries=0)
        with pytest.raises(bf.InvalidBodyError, match=r"\['c'\]"):
            bf.BatchJob.create(req, str(tmp_path / "job"), client=client)
        assert list(client.files.list()) == []
        assert list(client.batches.list()) == []


# -- the local server refuses the same lines, with the API's answers ----------------


def _line(i: int, endpoint: str, body: Any) -> dict[str, Any]:
    return {"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": body}


def test_server_refuses_bad_bodies_line_by_line_whatever_the_executor() -> None:
    # An executor that answers 200 to anything: the API's validation still comes first.
    def anything(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"object": "list", "data": [], "model": body.get("model"), "usage": {}}

    emb = "/v1/embeddings"
    lines = [
        _line(0, emb, {"model": "e", "input": "fine"}),
        _line(1, emb, {"model": "e", "input": ["x"] * 2049}),
        _line(2, emb, {"model": "e", "input": ""}),
        _line(3, emb, {"model": "e", "input": []}),
        _line(4, emb, {"model": "e", "messages": [{"role": "user", "content": "x"}]}),
        _line(5, emb, {"model": "e", "input": ["x"] * 2048}),
    ]
    with bf.LocalBatchServer(executor=anything) as server:
        client = server.client(max_retries=0)
        batch = run_batch(client, lines, endpoint=emb)
        assert batch.status == "completed"
        ok = {x["custom_id"] for x in read_lines(client, batch.output_file_id)}
        errors = {x["custom_id"]: x for x in read_lines(client, batch.error_file_id)}
    assert ok == {"r0", "r5"}
    assert set(errors) == {"r1", "r2", "r3", "r4"}
    for line in errors.values():
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["body"]["error"]["type"] == "invalid_request_error"
    codes = {k: v["response"]["body"]["error"]["code"] for k, v in errors.items()}
    assert codes == {
        "r1": "array_above_max_length",
        "r2": None,  # the API's "'$.input' is invalid" has no code
        "r3": None,
        "r4": "unknown_parameter",
    }
    assert errors["r1"]["response"]["body"]["error"]["param"] == "input"


def test_server_refuses_bad_chat_lines_with_the_api_codes() -> None:
    chat = "/v1/chat/completions"
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    lines = [
        _line(0, chat, good),
        _line(1, chat, {"model": "m", "messages": []}),
        _line(2, chat, {"model": "m", "input": "hi"}),
        _line(3, chat, {"model": "m", "messages": [{"role": "user", "content": {"a": 1}}]}),
        _line(4, chat, {"model": "m", "messages": [{"role": "usr", "content": "hi"}]}),
        _line(5, chat, {**good, "temperature": 7}),
    ]
    with bf.LocalBatchServer() as server:
        client = server.client(max_retries=0)
        batch = run_batch(client, lines)
        errors = {x["custom_id"]: x for x in read_lines(client, batch.error_file_id)}
    got = {k: v["response"]["body"]["error"]["code"] for k, v in errors.items()}
    assert got == {
        "r1": "empty_array",
        "r2": "unknown_parameter",  # `input`, reported before the missing `messages`
        "r3": "invalid_type",
        "r4": "invalid_value",
        "r5": "decimal_above_max_value",
    }
    assert errors["r4"]["response"]["body"]["error"]["param"] == "messages[0].role"
    assert batch.request_counts.completed == 1
    assert batch.request_counts.failed == 5


def test_echo_executor_refuses_the_same_bodies() -> None:
    from batchframe._server import echo

    status, body = echo("/v1/embeddings", {"model": "e", "input": ["x"] * 2049})
    assert status == 400
    assert body["error"]["code"] == "array_above_max_length"
    status, _ = echo("/v1/chat/completions", {"model": "m", "messages": []})
    assert status == 400
