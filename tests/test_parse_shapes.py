"""Never a silently wrong row: a 2xx body of the wrong shape is a ``parse`` failure.

For every endpoint, Hypothesis takes well-formed bodies and breaks them where the typed
columns read (a value of another JSON type, one more level of nesting, a member
removed). The property: every row is either ok, with each typed column equal to what
a strict reading of the body gives, or failed with stage ``"parse"`` and its raw line
kept whole; which of the two is decided by an independent strict check of the body
(below). Numbers are read as DuckDB reads them (a numeric string or a boolean where a
number is declared counts as that number), so no mutation here produces those.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from test_results_lines import (
    MOD_CATEGORIES,
    chat_body,
    completions_body,
    embeddings_body,
    image_body,
    moderation_result,
    responses_body,
)

import batchframe as bf
from batchframe._results import parse_output
from batchframe._server._echo import echo

# -- a strict reading of each endpoint's body ------------------------------------------

S, INT, F, B = "str", "int", "float", "bool"


def obj(required: tuple[str, ...] = (), **fields: Any) -> tuple[str, dict[str, Any], set[str]]:
    return ("obj", fields, set(required))


def arr(elem: Any, *, nonempty: bool = False, all_items: bool = False) -> tuple[Any, ...]:
    return ("arr", elem, nonempty, all_items)


_USAGE3 = {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT}
_IO3 = {"input_tokens": INT, "output_tokens": INT, "total_tokens": INT}
SPECS: dict[str, Any] = {
    "/v1/chat/completions": obj(
        ("choices",),
        model=S,
        choices=arr(
            obj(
                ("message", "finish_reason"),
                message=obj(
                    content=S,
                    refusal=S,
                    tool_calls=arr(
                        obj(
                            ("function",),
                            id=S,
                            type=S,
                            function=obj(("name", "arguments"), name=S, arguments=S),
                        ),
                        all_items=True,
                    ),
                ),
                finish_reason=S,
            ),
            nonempty=True,
        ),
        usage=obj(
            **_USAGE3,
            prompt_tokens_details=obj(cached_tokens=INT),
            completion_tokens_details=obj(reasoning_tokens=INT),
        ),
    ),
    "/v1/responses": obj(
        ("output",),
        model=S,
        status=S,
        output=arr(
            obj(
                ("type",),
                type=S,
                content=arr(obj(("type",), type=S, text=S, refusal=S), all_items=True),
            ),
            all_items=True,
        ),
        usage=obj(
            **_IO3,
            input_tokens_details=obj(cached_tokens=INT),
            output_tokens_details=obj(reasoning_tokens=INT),
        ),
    ),
    "/v1/embeddings": obj(
        ("data",),
        model=S,
        data=arr(
            obj(("index", "embedding"), index=INT, embedding=arr(F, nonempty=True, all_items=True)),
            all_items=True,
        ),
        usage=obj(prompt_tokens=INT),
    ),
    "/v1/completions": obj(
        ("choices",),
        model=S,
        choices=arr(obj(("text", "finish_reason"), text=S, finish_reason=S), nonempty=True),
        usage=obj(**_USAGE3),
    ),
    "/v1/moderations": obj(
        ("results",),
        model=S,
        results=arr(
            obj(
                ("flagged", "categories", "category_scores"),
                flagged=B,
                categories=obj(**dict.fromkeys(MOD_CATEGORIES, B)),
                category_scores=obj(**dict.fromkeys(MOD_CATEGORIES, F)),
            ),
            nonempty=True,
            all_items=True,
        ),
    ),
    "/v1/images/generations": obj(
        ("data",),
        model=S,
        data=arr(obj(b64_json=S, url=S, revised_prompt=S), nonempty=True),
        usage=obj(**_IO3),
    ),
}


def fits(value: Any, spec: Any) -> bool:
    """Whether ``value`` (not None) has the JSON type ``spec`` declares, all the way down."""
    if spec == S:
        return isinstance(value, str)
    if spec == B:
        return isinstance(value, bool)
    if spec in (INT, F):
        ok = isinstance(value, int) if spec == INT else isinstance(value, int | float)
        return ok and not isinstance(value, bool)
    if spec[0] == "obj":
        if not isinstance(value, dict):
            return False
        _, fields, required = spec
        for name, sub in fields.items():
            v = value.get(name)
            if v is None:
                if name in required:
                    return False
            elif not fits(v, sub):
                return False
        return True
    _, elem, nonempty, all_items = spec
    if not isinstance(value, list) or (nonempty and not value):
        return False
    items = value if all_items else value[:1]
    return all(x is not None and fits(x, elem) for x in items)


def expected(endpoint: str, body: Any, dim: int) -> dict[str, Any] | None:
    """The typed columns a strict reading gives (first row of the request), or None."""
    if not fits(body, SPECS[endpoint]):
        return None
    if endpoint == "/v1/chat/completions":
        c = body["choices"][0]
        m = c["message"]
        if m.get("content") is None and m.get("refusal") is None and m.get("tool_calls") is None:
            return None
        u = body.get("usage") or {}
        return {
            "model": body.get("model"),
            "content": m.get("content"),
            "refusal": m.get("refusal"),
            "finish_reason": c["finish_reason"],
            "tool_calls": [
                {
                    "id": t.get("id"),
                    "type": t.get("type"),
                    "function": {
                        "name": t["function"]["name"],
                        "arguments": t["function"]["arguments"],
                    },
                }
                for t in m["tool_calls"]
            ]
            if m.get("tool_calls") is not None
            else None,
            "prompt_tokens": u.get("prompt_tokens"),
            "completion_tokens": u.get("completion_tokens"),
            "total_tokens": u.get("total_tokens"),
            "cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (u.get("completion_tokens_details") or {}).get("reasoning_tokens"),
        }
    if endpoint == "/v1/responses":
        texts = []
        for o in body["output"]:
            if o["type"] != "message":
                continue
            if o.get("content") is None:
                return None
            for p in o["content"]:
                field = {"output_text": "text", "refusal": "refusal"}.get(p["type"])
                if field is not None and p.get(field) is None:
                    return None
                if field == "text":
                    texts.append(p["text"])
        u = body.get("usage") or {}
        return {
            "model": body.get("model"),
            "status": body.get("status"),
            "output_text": "".join(texts) if texts else None,
            "input_tokens": u.get("input_tokens"),
            "output_tokens": u.get("output_tokens"),
            "cached_tokens": (u.get("input_tokens_details") or {}).get("cached_tokens"),
        }
    if endpoint == "/v1/embeddings":
        data = body["data"]
        if not data or any(len(d["embedding"]) != dim for d in data):
            return None
        u = body.get("usage") or {}
        return {
            "model": body.get("model"),
            "embedding": [float(x) for x in data[0]["embedding"]],
            "index": data[0]["index"],
            "prompt_tokens": u.get("prompt_tokens"),
        }
    if endpoint == "/v1/completions":
        c = body["choices"][0]
        u = body.get("usage") or {}
        return {
            "model": body.get("model"),
            "text": c["text"],
            "finish_reason": c["finish_reason"],
            "prompt_tokens": u.get("prompt_tokens"),
        }
    if endpoint == "/v1/moderations":
        results = body["results"]
        for r in results:
            for name in ("categories", "category_scores"):
                if all(r[name].get(c) is None for c in MOD_CATEGORIES):
                    return None
        return {
            "model": body.get("model"),
            "flagged": any(r["flagged"] for r in results),
            "categories.hate": any(r["categories"].get("hate") for r in results)
            if any(r["categories"].get("hate") is not None for r in results)
            else None,
        }
    d = body["data"][0]
    if d.get("b64_json") is None and d.get("url") is None:
        return None
    return {
        "b64_json": d.get("b64_json"),
        "url": d.get("url"),
        "revised_prompt": d.get("revised_prompt"),
    }


# -- well-formed bodies, and ways to break them -----------------------------------------

DIM = 3


def good_body(endpoint: str, text: str) -> dict[str, Any]:
    tool = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": text}}
    return {
        "/v1/chat/completions": chat_body(text, tool_calls=[tool]),
        "/v1/responses": responses_body(text, refusal="no"),
        "/v1/embeddings": embeddings_body([[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]]),
        "/v1/completions": completions_body(text),
        "/v1/moderations": {
            "id": "modr-1",
            "model": "omni-moderation-latest",
            "results": [moderation_result(("hate",)), moderation_result()],
        },
        "/v1/images/generations": image_body({"b64_json": "QUJD", "revised_prompt": text}),
    }[endpoint]


def paths(value: Any, spec: Any, at: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every place in ``value`` the spec covers, with the spec of what belongs there."""
    out = [(at, spec)] if at else []
    if isinstance(spec, tuple) and spec[0] == "obj" and isinstance(value, dict):
        for name, sub in spec[1].items():
            if name in value:
                out += paths(value[name], sub, (*at, name))
    elif isinstance(spec, tuple) and spec[0] == "arr" and isinstance(value, list):
        for i, item in enumerate(value if spec[3] else value[:1]):
            out += paths(item, spec[1], (*at, i))
    return out


def wrong_values(spec: Any, current: Any) -> list[Any]:
    """Values of another JSON type than ``spec`` (never ones DuckDB reads as numbers)."""
    nested = [current, current]  # one level too deep, as the forwarded model did
    if spec == S:
        return [7, 2.5, True, {"text": current}, [current], nested]
    if spec in (INT, F, B):
        return ["many", {"n": 1}, [1, 2], nested]
    if spec[0] == "obj":
        return ["text", 3, [current], nested]
    if spec[1] == F:  # a string vector would make the file base64 (tested below)
        return [3, {"items": current}, nested]
    return ["text", 3, {"items": current}, nested]


@st.composite
def broken(draw: st.DrawFn, endpoint: str) -> dict[str, Any]:
    text = draw(st.sampled_from(["positive", '{"a": 1}', "42", "[1]", "true", "é 🎉", ""]))
    body = orjson.loads(orjson.dumps(good_body(endpoint, text)))  # a fresh copy
    for _ in range(draw(st.integers(0, 2))):
        where = paths(body, SPECS[endpoint])
        at, spec = draw(st.sampled_from(where))
        parent = body
        for key in at[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[at[-1]]
        else:
            parent[at[-1]] = draw(st.sampled_from(wrong_values(spec, parent[at[-1]])))
    return body


def output_line(custom_id: str, body: Any, spaced: bool) -> bytes:
    response = {"status_code": 200, "request_id": "req_1", "body": body}
    obj_ = {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": None}
    if spaced:  # another key order: parsed whole, not cut
        return json.dumps({"custom_id": custom_id, **obj_}).encode()
    return orjson.dumps(obj_)


def _close(got: Any, want: Any) -> bool:
    if isinstance(want, list) and want and isinstance(want[0], float):
        return got is not None and all(abs(a - b) < 1e-6 for a, b in zip(got, want, strict=True))
    return bool(got == want)


@pytest.mark.parametrize("endpoint", list(SPECS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_row_is_typed_in_full_or_fails_as_parse(endpoint: str, data: st.DataObject) -> None:
    bodies = data.draw(st.lists(broken(endpoint), min_size=1, max_size=6))
    spaced = data.draw(st.booleans())
    raws = [output_line(f"r{i}", b, spaced) for i, b in enumerate(bodies)]
    ok, failed = parse_output(
        b"\n".join(raws) + b"\n", endpoint=endpoint, batch_id="b", embedding_dim=DIM, model="m"
    )
    want = {f"r{i}": expected(endpoint, b, DIM) for i, b in enumerate(bodies)}
    good = sorted(k for k, v in want.items() if v is not None)
    assert sorted(ok["custom_id"].unique().to_list()) == good
    bad = [k for k, v in want.items() if v is None]
    assert failed["custom_id"].to_list() == bad
    assert failed["stage"].to_list() == ["parse"] * len(bad)
    assert failed["line"].to_list() == [raws[int(k[1:])].decode() for k in bad]
    first = ok.unique("custom_id", keep="first", maintain_order=True)
    for row in first.iter_rows(named=True):
        for column, value in want[row["custom_id"]].items():  # type: ignore[union-attr]
            if column == "model" and value is None:
                value = "m"  # the shard's model, where a body names none
            got = row[column.split(".")[0]]
            if "." in column:
                got = got[column.split(".")[1]]
            assert _close(got, value), (column, got, value)


def test_base64_file_with_a_float_vector_and_float_file_with_a_string() -> None:
    b64 = embeddings_body([[0.5, 1.0, 2.0]], b64=True)
    floats = embeddings_body([[0.5, 1.0, 2.0]])
    for first, other in ((b64, floats), (floats, b64)):
        raws = [output_line("a", first, False), output_line("b", other, False)]
        ok, failed = parse_output(
            b"\n".join(raws), endpoint="/v1/embeddings", batch_id="b", embedding_dim=3
        )
        assert ok["embedding"].to_list() == [[0.5, 1.0, 2.0]]
        assert failed.select("custom_id", "stage", "line").rows() == [
            ("b", "parse", raws[1].decode())
        ]


# -- the reported case, end to end --------------------------------------------------------


def nested_vectors(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The echo server, but each embedding comes back as one vector per "token"."""
    status, out = echo(endpoint, body)
    if endpoint == "/v1/embeddings" and status == 200:
        for d in out["data"]:
            v = d["embedding"]
            d["embedding"] = [v[: len(v) // 2], v[len(v) // 2 :]]
    return status, out


@pytest.mark.parametrize("dimensions", [None, 8])
def test_nested_embeddings_fail_as_parse_with_the_line(dimensions: int | None) -> None:
    df = pl.DataFrame({"id": [f"r{i}" for i in range(20)], "text": [f"t {i}" for i in range(20)]})
    extra = {} if dimensions is None else {"dimensions": dimensions}
    body = bf.embeddings_body("text-embedding-3-small", input=pl.col("text"), **extra)
    req = bf.build_requests(df, endpoint="/v1/embeddings", body=body, custom_id="id")
    with bf.LocalBatchServer(executor=nested_vectors) as server, tempfile.TemporaryDirectory() as d:
        root = f"{d}/job"
        with bf.BatchJob.create(req, root, client=server.client()) as job:
            job.submit()
            job.wait(poll_interval=0.02)
            results = job.collect()
        again = bf.read_results(root)
    for res in (results, again):
        assert res.ok.height == 0
        assert sorted(res.failed["custom_id"]) == sorted(df["id"])
        assert set(res.failed["stage"]) == {"parse"}
        assert set(res.failed["error_code"]) == {"unexpected_shape"}
        assert all("data[0].embedding" in m for m in res.failed["error_message"])
        for raw in res.failed["line"]:  # the whole line, vectors and all
            vectors = orjson.loads(raw)["response"]["body"]["data"][0]["embedding"]
            assert len(vectors) == 2 and all(isinstance(v, list) for v in vectors)
        want = pl.List(pl.Float32) if dimensions is None else pl.Array(pl.Float32, dimensions)
        assert res.ok.schema["embedding"] == want
