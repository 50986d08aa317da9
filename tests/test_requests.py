"""build_requests through the public API: templates, encoding, ids, refusals."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from pydantic import BaseModel

import batchframe as bf

TRICKY = [
    'she said "hi"',
    "back\\slash and \\n literal",
    "new\nline\r\ncrlf\ttab",
    "control \x00\x01\x08\x0c\x1f end",
    "emoji 😀 and 日本語 and café",
    "\u2028 line separator \u2029",
    "",
    "   ",
    "'single' `tick` </script>",
]


def _lines(memfs: Any, written: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for path in written["path"]:
        data = memfs.cat_file(path)
        assert data.endswith(b"\n")
        assert not data.startswith(b"\xef\xbb\xbf")
        out.extend(json.loads(line) for line in data.decode("utf-8").split("\n")[:-1])
    return out


def test_round_trip_tricky_text(constructor, memfs):
    df = pl.DataFrame({"id": list(range(len(TRICKY))), "text": TRICKY})
    req = bf.build_requests(
        constructor(df),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), system="Label it.", max_tokens=5),
        custom_id="id",
    )
    written = req.write("memory://rt")
    lines = _lines(memfs, written)
    assert [ln["custom_id"] for ln in lines] == [str(i) for i in range(len(TRICKY))]
    for line, text in zip(lines, TRICKY, strict=True):
        assert line == {
            "custom_id": line["custom_id"],
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Label it."},
                    {"role": "user", "content": text},
                ],
                "max_tokens": 5,
            },
        }
    # body column is the body's JSON text exactly
    bodies = [json.loads(b) for b in req.frame["body"]]
    assert [b["messages"][1]["content"] for b in bodies] == TRICKY


def test_same_result_for_all_frame_types(constructor):
    df = pl.DataFrame({"id": [3, 1, 2], "text": ["a", "b", 'c"']})
    body = bf.chat_body("gpt-4o-mini", user=pl.col("text"))
    ref = bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
    got = bf.build_requests(
        constructor(df), endpoint="/v1/chat/completions", body=body, custom_id="id"
    )
    assert got.frame.equals(ref.frame)
    assert got.fingerprint == ref.fingerprint


def test_bytes_written_equal_bytes_counted(memfs):
    df = pl.DataFrame(
        {"id": range(500), "text": [TRICKY[i % len(TRICKY)] * (i % 7) for i in range(500)]}
    )
    req = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("m", user=pl.col("text")),
        custom_id="id",
    )
    limits = bf.BatchLimits(max_bytes=10_000)
    plan = req.plan(limits)
    written = req.write("memory://bytes", limits=limits)
    assert written["n_bytes"].to_list() == plan["n_bytes"].to_list()
    for path, n, sha in written.select("path", "n_bytes", "sha256").iter_rows():
        data = memfs.cat_file(path)
        assert len(data) == n <= limits.max_bytes
        assert hashlib.sha256(data).hexdigest() == sha
    # per-row n_bytes is the exact size of that row's line
    lines = b"".join(memfs.cat_file(p) for p in written["path"]).split(b"\n")[:-1]
    by_id = {json.loads(line)["custom_id"]: len(line) + 1 for line in lines}
    for cid, n in req.frame.select("custom_id", "n_bytes").iter_rows():
        assert by_id[cid] == n
    assert sum(by_id.values()) == req.frame["n_bytes"].sum() == req.n_bytes


def test_fingerprints_of_jobs_made_by_earlier_versions_still_match():
    # Recorded with batchframe at commit d6ecfab (before requests kept their lines), whose
    # fingerprint hashed the endpoint, then the ids and the bodies as two columns.
    df = pl.DataFrame({"id": [3, 1, 2], "text": ["a", 'b "q" é', "c\n😀"]})
    body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=5)
    by_id = bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
    hashed = bf.build_requests(df, endpoint="/v1/chat/completions", body=body)
    old_by_id = "bf3438fb414c243fe34d4c668d748a574cd6448b07afbd4b7788caa15c916e29"
    old_hashed = "fa7dae96fd002fede1b4a33a6286d187e3f8e02a83e7b989d04e4010065c3dd3"
    assert by_id.fingerprint != old_by_id
    assert by_id.matches(by_id.fingerprint) and by_id.matches(old_by_id)
    assert hashed.matches(old_hashed) and not hashed.matches(old_by_id)
    assert not by_id.matches(old_hashed)
    other = bf.build_requests(df.head(2), endpoint="/v1/chat/completions", body=body)
    assert not other.matches(old_hashed) and not other.matches(hashed.fingerprint)


def test_large_shards_written_whole_and_in_order(tmp_path):
    # Shards of several MB, rows from a few bytes to over 1 MiB, and two models whose
    # rows interleave (so each model's shard gathers rows from all over the table).
    sizes = [1, 3_000, 40, 1_300_000, 7, 250_000, 90_000] * 6
    texts = [(TRICKY[i % len(TRICKY)] + 'é😀\n"') * (n // 12 + 1) for i, n in enumerate(sizes)]
    df = pl.DataFrame(
        {"id": [f"r{i}" for i in range(len(texts))], "text": texts, "m": ["a", "b"] * 21}
    )
    req = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body(pl.col("m"), user=pl.col("text")),
        custom_id="id",
    )
    written = req.write(tmp_path / "big", limits=bf.BatchLimits(max_bytes=12_000_000))
    assert written.height > 2
    seen = []
    for path, n, sha, model in written.select("path", "n_bytes", "sha256", "model").iter_rows():
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) == n
        assert hashlib.sha256(data).hexdigest() == sha
        objs = [json.loads(line) for line in data.split(b"\n")[:-1]]
        assert {o["body"]["model"] for o in objs} == {model}
        rows = [int(o["custom_id"][1:]) for o in objs]
        assert rows == sorted(rows)  # input order within a shard
        seen.extend(objs)
    frame = req.frame
    assert sorted(o["custom_id"] for o in seen) == sorted(frame["custom_id"].to_list())
    by_id = {o["custom_id"]: o for o in seen}
    for cid, body in frame.select("custom_id", "body").iter_rows():
        assert json.loads(body) == by_id[cid]["body"]
        assert by_id[cid]["body"]["messages"][0]["content"] == texts[int(cid[1:])]
    assert int(frame["n_bytes"].sum()) == int(written["n_bytes"].sum())


def test_written_paths_and_local_disk(tmp_path):
    df = pl.DataFrame({"id": range(10), "text": ["x"] * 10})
    req = bf.build_requests(
        df,
        endpoint="/v1/completions",
        body=bf.completions_body("m", prompt=pl.col("text")),
        custom_id="id",
    )
    written = req.write(tmp_path / "out", limits=bf.BatchLimits(max_requests=4))
    assert written["n_requests"].to_list() == [4, 4, 2]
    assert [p.rsplit("/", 1)[-1] for p in written["path"]] == [
        "00000.jsonl",
        "00001.jsonl",
        "00002.jsonl",
    ]
    assert sorted(x.name for x in (tmp_path / "out" / "shards").iterdir()) == [
        "00000.jsonl",
        "00001.jsonl",
        "00002.jsonl",
    ]


@pytest.mark.parametrize(
    ("endpoint", "body", "check"),
    [
        (
            "/v1/responses",
            bf.responses_body("gpt-4.1-mini", input=pl.col("text"), instructions="Be brief."),
            lambda b, t: b["input"] == t and b["instructions"] == "Be brief.",
        ),
        (
            "/v1/embeddings",
            bf.embeddings_body("text-embedding-3-small", input=pl.col("text"), dimensions=256),
            lambda b, t: b["input"] == t and b["dimensions"] == 256,
        ),
        (
            "/v1/completions",
            bf.completions_body("gpt-3.5-turbo-instruct", prompt=pl.col("text"), max_tokens=3),
            lambda b, t: b["prompt"] == t and b["max_tokens"] == 3,
        ),
        (
            "/v1/moderations",
            bf.moderations_body(input=pl.col("text")),
            lambda b, t: b["input"] == t and b["model"] == "omni-moderation-latest",
        ),
        (
            "/v1/images/generations",
            bf.image_body("gpt-image-1", prompt=pl.col("text"), size="1024x1024"),
            lambda b, t: b["prompt"] == t and b["size"] == "1024x1024",
        ),
        (
            "/v1/images/edits",
            bf.image_edit_body(
                "gpt-image-1", prompt=pl.col("text"), images=pl.lit("https://x/y.png")
            ),
            lambda b, t: b["prompt"] == t and b["images"] == [{"image_url": "https://x/y.png"}],
        ),
        (
            "/v1/chat/completions",
            bf.chat_body("gpt-4o", user=pl.col("text"), temperature=0.5, seed=1, logprobs=True),
            lambda b, t: b["messages"][-1]["content"] == t and b["temperature"] == 0.5,
        ),
    ],
)
def test_every_endpoint_template(endpoint, body, check, memfs):
    texts = ["one", 'two "2"', "three\n3"]
    df = pl.DataFrame({"k": ["a", "b", "c"], "text": texts})
    req = bf.build_requests(df, endpoint=endpoint, body=body, custom_id="k")
    assert req.endpoint == endpoint
    lines = _lines(memfs, req.write("memory://ep"))
    assert len(lines) == 3
    for line, text in zip(lines, texts, strict=True):
        assert line["url"] == endpoint
        assert line["method"] == "POST"
        assert check(line["body"], text)


def test_typed_leaves_and_constants(memfs):
    df = pl.DataFrame(
        {
            "id": ["a", "b"],
            "n": [1, 2],
            "t": [0.25, 1e-7],
            "flag": [True, False],
            "tags": [["x", 'y"'], []],
            "meta": [{"k": 1, "v": "q"}, {"k": 2, "v": "r"}],
            "cat": pl.Series(["c1", "c2"], dtype=pl.Categorical),
        }
    )
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "fixed"}],
        "max_tokens": pl.col("n"),
        "temperature": pl.col("t"),
        "logprobs": pl.col("flag"),
        "stop": pl.col("tags"),
        "metadata": pl.col("meta"),
        "user": pl.col("cat"),
        "nested": {"list": [1, 2.5, None, True, "s"], "empty": {}},
        "expr_math": pl.col("n") * 10,
    }
    req = bf.build_requests(df, endpoint="/v1/chat/completions", body=body, custom_id="id")
    lines = _lines(memfs, req.write("memory://typed"))
    b0, b1 = (ln["body"] for ln in lines)
    assert b0["max_tokens"] == 1 and b1["max_tokens"] == 2
    assert b0["temperature"] == 0.25 and b1["temperature"] == 1e-7
    assert b0["logprobs"] is True and b1["logprobs"] is False
    assert b0["stop"] == ["x", 'y"'] and b1["stop"] == []
    assert b0["metadata"] == {"k": 1, "v": "q"}
    assert b0["user"] == "c1"
    assert b0["nested"] == {"list": [1, 2.5, None, True, "s"], "empty": {}}
    assert b1["expr_math"] == 20
    assert list(b0) == list(body)  # key order kept


def test_custom_id_none_is_deterministic_and_unique():
    df = pl.DataFrame({"text": ["same", "same", "other", "same"]})
    body = bf.chat_body("m", user=pl.col("text"))
    a = bf.build_requests(df, endpoint="/v1/chat/completions", body=body)
    b = bf.build_requests(df.to_arrow(), endpoint="/v1/chat/completions", body=body)
    ids = a.frame["custom_id"].to_list()
    assert ids == b.frame["custom_id"].to_list()
    assert len(set(ids)) == 4
    assert ids[0].rsplit("-", 1)[0] == ids[1].rsplit("-", 1)[0] == ids[3].rsplit("-", 1)[0]


def test_custom_id_expression_and_integers():
    df = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    req = bf.build_requests(
        df,
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("e", input=pl.col("b")),
        custom_id=pl.concat_str([pl.lit("row-"), pl.col("a")]),
    )
    assert req.frame["custom_id"].to_list() == ["row-1", "row-2"]
    ints = bf.build_requests(
        df,
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("e", input=pl.col("b")),
        custom_id="a",
    )
    assert ints.frame["custom_id"].dtype == pl.String


def test_models_per_row_and_frame_columns():
    df = pl.DataFrame({"id": [1, 2, 3], "m": ["a", "b", "a"], "text": ["x", "y", "z"]})
    req = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body(pl.col("m"), user=pl.col("text")),
        custom_id="id",
    )
    assert req.frame.columns == ["custom_id", "body", "model", "n_bytes", "n_inputs", "est_tokens"]
    assert req.frame["model"].to_list() == ["a", "b", "a"]
    plan = req.plan()
    assert plan.select("model", "n_requests").rows() == [("a", 2), ("b", 1)]


def test_embedding_inputs_counted():
    df = pl.DataFrame({"id": [1, 2], "items": [["a", "b", "c"], ["d"]]})
    req = bf.build_requests(
        df,
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("e", input=pl.col("items")),
        custom_id="id",
    )
    assert req.frame["n_inputs"].to_list() == [3, 1]
    plan = req.plan(bf.BatchLimits(max_embedding_inputs=3))
    assert plan["n_inputs"].to_list() == [3, 1]
    tokens = pl.DataFrame({"id": [1], "toks": [[1, 2, 3]]})
    req2 = bf.build_requests(
        tokens,
        endpoint="/v1/embeddings",
        body=bf.embeddings_body("e", input=pl.col("toks")),
        custom_id="id",
    )
    assert req2.frame["n_inputs"].to_list() == [1]  # one tokenised input


class Label(BaseModel):
    label: str
    confidence: float


def test_pydantic_response_format_becomes_strict_json_schema(memfs):
    df = pl.DataFrame({"id": [1], "text": ["good"]})
    req = bf.build_requests(
        df,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), response_format=Label),
        custom_id="id",
    )
    (line,) = _lines(memfs, req.write("memory://rf"))
    rf = line["body"]["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Label"
    assert rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"label", "confidence"}
    assert req.json_schema == schema
    assert req.response_model is Label


def test_text_format_and_plain_schema_for_responses(memfs):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "title": "Ans"}
    df = pl.DataFrame({"id": [1], "q": ["?"]})
    req = bf.build_requests(
        df,
        endpoint="/v1/responses",
        body=bf.responses_body("gpt-4.1", input=pl.col("q"), text_format=schema),
        custom_id="id",
    )
    (line,) = _lines(memfs, req.write("memory://tf"))
    fmt = line["body"]["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "Ans" and fmt["strict"] is True
    assert fmt["schema"]["required"] == ["answer"]
    assert fmt["schema"]["additionalProperties"] is False
    assert req.json_schema == fmt["schema"]


def test_est_tokens_estimate_and_exact():
    df = pl.DataFrame({"id": [1, 2], "text": ["hello world " * 10, "日本語のテキスト" * 5]})
    body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), system="Classify.")
    est = bf.build_requests(
        df, endpoint="/v1/chat/completions", body=body, custom_id="id", tokenizer="estimate"
    )
    exact = bf.build_requests(
        df, endpoint="/v1/chat/completions", body=body, custom_id="id", tokenizer="exact"
    )
    assert est.tokenizer == "estimate" and exact.tokenizer == "exact"
    e, x = est.frame["est_tokens"].to_list(), exact.frame["est_tokens"].to_list()
    assert (est.est_tokens, exact.est_tokens) == (sum(e), sum(x))
    assert all(v > 0 for v in e + x)
    # the estimate errs high, never far below the real count
    assert all(ev >= 0.9 * xv for ev, xv in zip(e, x, strict=True))
    assert all(ev <= 2.5 * xv for ev, xv in zip(e, x, strict=True))


def test_exact_tokens_fall_back_to_the_estimate_past_the_encoder_cap():
    # bpe-openai refuses texts of over 200,000 tokens; such a row is estimated, not fatal.
    huge = "é😀 \\n" * 80_000  # ~240k tokens in 400k characters
    df = pl.DataFrame({"id": [1, 2], "text": [huge, "hello world"]})
    body = bf.chat_body("gpt-4o-mini", user=pl.col("text"))
    exact = bf.build_requests(
        df, endpoint="/v1/chat/completions", body=body, custom_id="id", tokenizer="exact"
    )
    est = bf.build_requests(
        df, endpoint="/v1/chat/completions", body=body, custom_id="id", tokenizer="estimate"
    )
    x, e = exact.frame["est_tokens"].to_list(), est.frame["est_tokens"].to_list()
    assert x[0] == e[0] > 200_000
    assert 0 < x[1] < e[1] + 5


# -- refusals --------------------------------------------------------------------------


def _chat(df: Any, **kw: Any) -> bf.Requests:
    body = kw.pop("body", bf.chat_body("m", user=pl.col("text")))
    return bf.build_requests(df, endpoint="/v1/chat/completions", body=body, **kw)


def test_unknown_endpoint_lists_valid_ones():
    with pytest.raises(bf.EndpointError, match=r"/v1/chat/completions") as e:
        bf.build_requests(
            pl.DataFrame({"a": [1]}),
            endpoint="/chat/completions",
            body={"model": "m"},
            custom_id="a",
        )
    assert "Did you mean '/v1/chat/completions'" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_unknown_column_names_column_and_hint(constructor):
    df = pl.DataFrame({"id": [1], "text": ["x"]})
    with pytest.raises(
        bf.ColumnNotFoundError, match=r"'txt'.*messages\[0\]\.content.*\['text'\]"
    ) as e:
        _chat(constructor(df), body=bf.chat_body("m", user=pl.col("txt")), custom_id="id")
    assert e.value.column == "txt"
    with pytest.raises(bf.ColumnNotFoundError, match="'ident'"):
        _chat(constructor(df), custom_id="ident")


def _checked(requests: bf.Requests) -> bf.Requests:
    """Row checks of a streamed input run at its first pass (plan, write or a job)."""
    requests.plan()
    return requests


def test_null_and_empty_and_duplicate_custom_id(constructor):
    df = pl.DataFrame({"id": ["a", None, "c", None], "text": ["x"] * 4})
    with pytest.raises(
        bf.CustomIdError, match=r"null on 2 row\(s\), first at row\(s\) \[1, 3\]"
    ) as e:
        _checked(_chat(constructor(df), custom_id="id"))
    assert e.value.rows == [1, 3]
    df = pl.DataFrame({"id": ["a", "", "c"], "text": ["x"] * 3})
    with pytest.raises(bf.CustomIdError, match=r"empty.*\[1\]"):
        _checked(_chat(constructor(df), custom_id="id"))
    df = pl.DataFrame({"id": ["a", "b", "a", "c", "b"], "text": ["x"] * 5})
    with pytest.raises(bf.DuplicateCustomIdError, match=r"\['a', 'b'\] at row\(s\) \[0, 1, 2, 4\]"):
        _checked(_chat(constructor(df), custom_id="id"))
    df = pl.DataFrame({"id": [1, 2, 1], "text": ["x"] * 3})
    with pytest.raises(bf.DuplicateCustomIdError, match=r"\['1'\]"):
        _checked(_chat(constructor(df), custom_id="id"))


def test_null_prompt_names_rows_and_leaf(constructor):
    df = pl.DataFrame({"id": [1, 2, 3], "text": ["x", None, None]})
    with pytest.raises(
        bf.NullValueError, match=r"messages\[0\]\.content.*2 row\(s\).*1, 2.*fill_null"
    ) as e:
        _checked(_chat(constructor(df), custom_id="id"))
    assert e.value.rows == [1, 2]


def test_stream_true_refused():
    df = pl.DataFrame({"id": [1], "text": ["x"], "s": [True]})
    with pytest.raises(bf.StreamingNotSupportedError, match="stream"):
        _chat(df, body=bf.chat_body("m", user=pl.col("text"), stream=True), custom_id="id")
    with pytest.raises(bf.StreamingNotSupportedError, match=r"row\(s\) \[0\]"):
        _chat(df, body=bf.chat_body("m", user=pl.col("text"), stream=pl.col("s")), custom_id="id")
    ok = _chat(df, body=bf.chat_body("m", user=pl.col("text"), stream=False), custom_id="id")
    assert len(ok) == 1


@pytest.mark.slow  # over 30 s on a busy 2-core machine: CI runs it
def test_line_over_max_bytes_refused(memfs):
    df = pl.DataFrame({"id": [1, 2, 3], "text": ["short", "x" * 5_000, "y" * 6_000]})
    req = _chat(df, custom_id="id")
    with pytest.raises(bf.RequestTooLargeError, match=r"row\(s\) \[1, 2\].*max_bytes") as e:
        req.write("memory://big", limits=bf.BatchLimits(max_bytes=4_000))
    assert e.value.rows == [1, 2]
    assert not memfs.exists("/big/shards/00000.jsonl")  # nothing written
    huge = pl.DataFrame({"id": [1], "text": ["z" * 209_715_200]})
    with pytest.raises(bf.RequestTooLargeError):
        _chat(huge, custom_id="id")


def test_non_utf8_text_refused():
    arr = pa.array([b"ok", b"\xff\xfe bad"], type=pa.binary())
    table = pa.table({"id": [1, 2], "text": arr})
    with pytest.raises(bf.EncodingError, match=r"not valid UTF-8 at row\(s\) \[1\]"):
        _chat(table, custom_id="id")
    bad_str = pa.Array.from_buffers(
        pa.string(),
        2,
        [
            None,
            pa.py_buffer(b"\x00\x00\x00\x00\x02\x00\x00\x00\x04\x00\x00\x00"),
            pa.py_buffer(b"ok\xc3\x28"),
        ],
    )
    with pytest.raises(bf.EncodingError, match=r"column `text`.*\[1\]"):
        _chat(pa.table({"id": [1, 2], "text": bad_str}), custom_id="id")
    with pytest.raises(bf.EncodingError):
        _chat(
            pl.DataFrame({"id": [1]}),
            body=bf.chat_body("m", user="bad \ud800 surrogate"),
            custom_id="id",
        )


def test_bad_templates_refused():
    df = pl.DataFrame({"id": [1], "x": [float("nan")], "text": ["t"]})
    with pytest.raises(bf.TemplateError, match="NaN"):
        _chat(
            df,
            body={
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "frequency_penalty": pl.col("x"),
            },
            custom_id="id",
        )
    with pytest.raises(bf.TemplateError, match="set"):
        _chat(df, body={"model": "m", "stop": {"a"}}, custom_id="id")
    with pytest.raises(bf.TemplateError, match="model"):
        _chat(df, body={"messages": [{"role": "user", "content": pl.col("text")}]}, custom_id="id")
    with pytest.raises(bf.TemplateError, match=r"infinity|inf"):
        _chat(df, body={"model": "m", "t": float("inf")}, custom_id="id")
    with pytest.raises(bf.InputError, match=r"pandas|DataFrame"):
        _chat({"id": [1]}, custom_id="id")


def test_errors_are_one_tree():
    for cls in (
        bf.InputError,
        bf.ColumnNotFoundError,
        bf.DuplicateCustomIdError,
        bf.NullValueError,
        bf.RequestTooLargeError,
        bf.EncodingError,
        bf.JobError,
        bf.APIError,
    ):
        assert issubclass(cls, bf.BatchframeError)
    assert issubclass(bf.ColumnNotFoundError, KeyError)
    assert issubclass(bf.InputError, ValueError)


def test_limits_validated():
    with pytest.raises(bf.LimitError, match="max_requests"):
        bf.BatchLimits(max_requests=0)
    with pytest.raises(bf.LimitError, match="max_tokens"):
        bf.BatchLimits(max_tokens=-1)
    assert bf.BatchLimits().max_bytes == 209_715_200
    assert bf.BatchLimits(max_requests=100_000).max_requests == 100_000


def test_empty_table_gives_typed_empty_requests(constructor, memfs):
    df = pl.DataFrame(schema={"id": pl.Int64, "text": pl.String})
    req = _chat(constructor(df), custom_id="id")
    assert len(req) == 0
    assert dict(req.frame.schema) == {
        "custom_id": pl.String,
        "body": pl.String,
        "model": pl.String,
        "n_bytes": pl.Int64,
        "n_inputs": pl.Int64,
        "est_tokens": pl.Int64,
    }
    assert req.plan().height == 0
    assert req.write("memory://empty").height == 0
