"""Files API of LocalBatchServer, through the official openai client over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest_server import TERMINAL, chat_line, jsonl
from openai.types import Batch, FileObject

import batchframe as bf


@pytest.fixture
def server() -> Iterator[bf.LocalBatchServer]:
    with bf.LocalBatchServer() as s:
        yield s


@pytest.fixture
def client(server: bf.LocalBatchServer) -> openai.OpenAI:
    return server.client(max_retries=0)


def test_base_url_and_client(server: bf.LocalBatchServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.port > 0
    assert str(server.client().base_url).rstrip("/") == server.base_url
    assert "127.0.0.1" in repr(server)


def test_upload_bytes_tuple_and_path(client: openai.OpenAI, tmp_path: Path) -> None:
    data = jsonl([chat_line(1), chat_line(2)])
    path = tmp_path / "shard.jsonl"
    path.write_bytes(data)
    for file in (("a.jsonl", data), data, path):
        obj = client.files.create(file=file, purpose="batch")
        raw = client.files.with_raw_response.retrieve(obj.id).http_response.json()
        FileObject.model_validate(raw, strict=True)
        assert set(raw) >= {
            "id",
            "object",
            "bytes",
            "created_at",
            "expires_at",
            "filename",
            "purpose",
            "status",
        }
        assert obj.bytes == len(data)
        assert obj.purpose == "batch"
        assert obj.status == "processed"
        assert obj.id.startswith("file-")
        # purpose=batch files expire after 30 days by default
        assert obj.expires_at == obj.created_at + 30 * 86_400
        assert client.files.content(obj.id).content == data
    assert client.files.retrieve(obj.id).filename == "shard.jsonl"


def test_upload_expires_after_and_other_purpose(client: openai.OpenAI) -> None:
    obj = client.files.create(
        file=("a.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert obj.expires_at == obj.created_at + 3600
    other = client.files.create(file=("notes.txt", b"hi"), purpose="user_data")
    assert other.expires_at is None
    assert other.purpose == "user_data"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"purpose": "nonsense"}, "purpose"),
        (
            {"purpose": "batch", "expires_after": {"anchor": "created_at", "seconds": 10}},
            "expires_after.seconds",
        ),
        (
            {"purpose": "batch", "expires_after": {"anchor": "created_at", "seconds": 2_592_001}},
            "expires_after.seconds",
        ),
        (
            {"purpose": "batch", "expires_after": {"anchor": "last_active_at", "seconds": 3600}},
            "expires_after.anchor",
        ),
    ],
)
def test_upload_bad_parameters(
    client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("a.jsonl", b"{}\n"), **kwargs)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert info.value.param == param
    body = info.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"


def test_upload_missing_parts(server: bf.LocalBatchServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post(
            "/files",
            cast_to=FileObject,
            body={"purpose": "batch"},
            files=[("x", ("a", b"1"))],
            options={"headers": {"Content-Type": "multipart/form-data"}},
        )
    assert info.value.param == "file"
    with pytest.raises(openai.BadRequestError) as info:
        client.post(
            "/files",
            cast_to=FileObject,
            body={"purpose": "batch"},
            options={"headers": {"Content-Type": "application/json"}},
        )
    assert "multipart" in info.value.message


def test_retrieve_delete_and_404(client: openai.OpenAI) -> None:
    obj = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    deleted = client.files.delete(obj.id)
    assert deleted.deleted is True
    assert deleted.id == obj.id
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as info:
            call(obj.id)
        assert info.value.status_code == 404
        assert obj.id in info.value.message


def test_list_files_order_purpose_and_paging(client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(7)]
    other = client.files.create(file=("x.txt", b"x"), purpose="user_data").id
    listed = [f.id for f in client.files.list()]
    assert listed == [other, *reversed(ids)]
    assert [f.id for f in client.files.list(purpose="batch", order="asc")] == ids
    page = client.files.list(purpose="batch", order="asc", limit=3)
    assert [f.id for f in page.data] == ids[:3]
    assert page.has_more is True
    # auto-paging follows `after` and terminates
    assert [f.id for f in client.files.list(purpose="batch", order="asc", limit=3)] == ids
    with pytest.raises(openai.BadRequestError):
        client.files.list(order="sideways")  # type: ignore[arg-type]


def test_content_streams_large_file(client: openai.OpenAI) -> None:
    data = jsonl([chat_line(i, "x" * 500) for i in range(4000)])  # ~2.4 MB
    obj = client.files.create(file=("big.jsonl", data), purpose="batch")
    got = bytearray()
    with client.files.with_streaming_response.content(obj.id) as response:
        assert response.headers["content-length"] == str(len(data))
        for chunk in response.iter_bytes(65536):
            got += chunk
    assert bytes(got) == data


def test_unknown_route_and_method(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.get("/nothing/here", cast_to=FileObject)
    assert info.value.body == {
        "message": "Invalid URL (GET /v1/nothing/here)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        client.delete("/batches", cast_to=FileObject)


def test_auth_with_api_key() -> None:
    with bf.LocalBatchServer(api_key="sk-secret-key-1234") as server:
        good = server.client(max_retries=0)
        assert good.files.list().data == []
        wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong-key-5678", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError) as info:
            wrong.files.list()
        assert info.value.status_code == 401
        assert info.value.code == "invalid_api_key"
        assert "sk-wrong-key-5678" not in info.value.message  # keys are masked
        request = urllib.request.Request(server.base_url + "/batches")
        with pytest.raises(urllib.error.HTTPError) as raw:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request)
        with raw.value:
            assert raw.value.code == 401
            assert "didn't provide an API key" in json.loads(raw.value.read())["error"]["message"]
        assert [c.status for c in server.calls] == [200, 401, 401]


def test_close_stops_every_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    server = bf.LocalBatchServer(requests_per_second=100)
    client = server.client()
    file_id = client.files.create(
        file=("a.jsonl", jsonl([chat_line(i) for i in range(50)])), purpose="batch"
    ).id
    client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(0.05)
    server.close()
    server.close()  # idempotent
    assert "closed" in repr(server)
    left = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not {name for name in left if name.startswith("bf-")}


def test_any_key_without_api_key(server: bf.LocalBatchServer) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="anything", max_retries=0) as client:
        assert client.batches.list().data == []


def test_async_client_full_flow(server: bf.LocalBatchServer) -> None:
    async def main() -> tuple[Batch, bytes, list[str]]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as client:
            f = await client.files.create(
                file=("a.jsonl", jsonl([chat_line(i) for i in range(20)])), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while batch.status not in TERMINAL:
                await asyncio.sleep(0.01)
                batch = await client.batches.retrieve(batch.id)
            assert batch.output_file_id is not None
            content = await client.files.content(batch.output_file_id)
            ids = [b.id async for b in client.batches.list(limit=1)]
            lines = []
            async with client.files.with_streaming_response.content(
                batch.output_file_id
            ) as response:
                async for line in response.iter_lines():
                    lines.append(line)
            assert len(lines) == 20
            return batch, content.content, ids

    start = time.monotonic()
    batch, content, ids = asyncio.run(main())
    assert time.monotonic() - start < 10
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert batch.request_counts.completed == 20
    assert content.count(b"\n") == 20
    assert ids == [batch.id]
