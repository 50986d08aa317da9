"""Big output files: parsed a window at a time, their ok rows spilled to Parquet.

A shard's output is not bounded by the API (long answers, wide vectors), so a file
bigger than ``_spill.WHOLE_BYTES`` is parsed window by window and its ok rows written
to local Parquet files, which publishing streams into ``results/ok``. Here the windows
are made a few KB, so that every output file of a small job is spilled, and the rows
must be the ones a single parse gives, on every path that publishes: the job's
settlement, a reader rebuilding the dataset, and a mirror for a root that cannot be
written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from polars.testing import assert_frame_equal
from pydantic import BaseModel

import batchframe as bf
from batchframe import _retry, _spill
from batchframe._manifest import ShardAttempt
from batchframe._publish import finalize_outcome
from batchframe._retry import record_outcome
from batchframe._storage import Storage
from batchframe.exceptions import ResultsError

POLL = 0.02


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Windows of 3 KB read in 700-byte pieces: every output file here is spilled."""
    monkeypatch.setattr(_spill, "WHOLE_BYTES", 3000)
    monkeypatch.setattr(_spill, "WINDOW_BYTES", 3000)
    monkeypatch.setattr(_retry, "PARSE_CHUNK_BYTES", 700)
    yield


def _spill_files(root: Path) -> list[str]:
    folders = [root / "outputs", Path(tempfile.gettempdir()) / "batchframe-spill"]
    return [
        str(p)
        for folder in folders
        if folder.is_dir()
        for p in folder.iterdir()
        if p.name.startswith(".tmp-") and f".{os.getpid()}-" in p.name
    ]


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"r{i:04d}" for i in range(n)], "text": [f"text number {i}" for i in range(n)]}
    )


class Label(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float


def _requests(kind: str, n: int) -> bf.Requests:
    frame = _frame(n)
    if kind == "embeddings":
        frame = frame.with_columns(inputs=pl.concat_list("text", pl.lit("and another")))
        body = bf.embeddings_body("text-embedding-3-small", input=pl.col("inputs"))
    elif kind == "structured":  # a typed `parsed` column, through the spill too
        body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), response_format=Label)
    else:
        body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=40)
    endpoint = "/v1/embeddings" if kind == "embeddings" else "/v1/chat/completions"
    return bf.build_requests(frame, endpoint=endpoint, body=body, custom_id="id")


def _same(a: bf.BatchResults, b: bf.BatchResults) -> None:
    assert_frame_equal(a.ok, b.ok)
    assert_frame_equal(a.failed, b.failed)


@pytest.mark.parametrize("kind", ["chat", "embeddings", "structured"])
def test_spilled_job_publishes_what_one_parse_gives(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "job"
    monkeypatch.setattr(_spill, "WHOLE_BYTES", 3000)
    monkeypatch.setattr(_spill, "WINDOW_BYTES", 3000)
    monkeypatch.setattr(_retry, "PARSE_CHUNK_BYTES", 700)
    with bf.LocalBatchServer(failure_rate=0.3, seed=7) as server:
        create: dict[str, Any] = {"limits": bf.BatchLimits(max_requests=40), "max_attempts": 2}
        with bf.BatchJob.create(
            _requests(kind, 120), str(root), client=server.client(), **create
        ) as job:
            job.wait(poll_interval=POLL, progress=False)
            spilled = job.collect()
    sizes = [p.stat().st_size for p in (root / "outputs").glob("*.jsonl")]
    assert max(sizes) > 3 * 3000  # the files really were parsed in several windows
    assert spilled.ok.height and spilled.failed.height  # retries, and rows that stayed failed
    if kind == "embeddings":
        assert spilled.ok.schema["embedding"] == pl.Array(pl.Float32, 1536)
        assert spilled.ok.height == 2 * spilled.ok["custom_id"].n_unique()  # one per vector
    if kind == "structured":
        assert isinstance(spilled.ok.schema["parsed"], pl.Struct)
        assert spilled.ok["parsed"].struct.field("label").null_count() == 0
    assert not _spill_files(root)  # the settlement removed its spill files

    # The same files parsed in one window each: a reader rebuilds the dataset.
    monkeypatch.setattr(_spill, "WHOLE_BYTES", 64 << 20)
    monkeypatch.setattr(_retry, "PARSE_CHUNK_BYTES", 4 << 20)
    shutil.rmtree(root / "results")
    _same(bf.read_results(str(root)), spilled)

    # A reader rebuilding with windows again, and a root it cannot publish to (mirror).
    monkeypatch.setattr(_spill, "WHOLE_BYTES", 3000)
    monkeypatch.setattr(_spill, "WINDOW_BYTES", 3000)
    monkeypatch.setattr(_retry, "PARSE_CHUNK_BYTES", 700)
    shutil.rmtree(root / "results")
    _same(bf.read_results(str(root)), spilled)
    shutil.rmtree(root / "results")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError("read-only")

    from batchframe import _publish, _read

    monkeypatch.setattr(_publish, "publish_outcome", refuse)
    mirror = tmp_path / "mirror"
    monkeypatch.setattr(_read, "_mirror_dir", lambda job_id: mirror)
    _same(bf.read_results(str(root)), spilled)
    assert list(mirror.glob("*.ok.parquet"))
    assert not (root / "results" / "ok").exists()
    assert not _spill_files(root)


# -- one attempt's files, parsed in windows of every size --------------------------------


def _ok_line(cid: str, answer: str, status: int = 200) -> bytes:
    body: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(answer), "total_tokens": 9},
    }
    if status >= 400:
        body = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    line = {
        "id": "br",
        "custom_id": cid,
        "response": {"status_code": status, "request_id": f"req-{cid}", "body": body},
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


def _input_line(cid: str) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": cid}]}
    line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return orjson.dumps(line) + b"\n"


def _attempt(folder: str, ids: list[str], output: bytes) -> tuple[Storage, ShardAttempt]:
    storage = Storage(folder)
    storage.write_bytes("shards/00000.jsonl", b"".join(_input_line(i) for i in ids))
    storage.write_bytes("outputs/00000.a0.jsonl", output)
    r = ShardAttempt(shard=0, attempt=0, path="shards/00000.jsonl", sha256="x", n_requests=len(ids))
    r.status = "completed"
    r.batch_id = "batch_1"
    r.output_path = "outputs/00000.a0.jsonl"
    return storage, r


_LINE = st.tuples(
    st.integers(0, 29),  # which id (repeats are duplicate lines; 25-29 are foreign)
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60),
    st.sampled_from([200, 200, 200, 500]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_LINE, max_size=60),
    window=st.integers(1, 4000),
    piece=st.integers(1, 2000),
)
def test_windows_give_the_rows_of_one_parse(
    lines: list[tuple[int, str, int]], window: int, piece: int
) -> None:
    """Duplicate lines (the first kept), foreign ids and failures, split anywhere."""
    ids = [f"id-{i}" for i in range(25)]
    output = b"".join(_ok_line(f"id-{i}", answer, status) for i, answer, status in lines)
    with tempfile.TemporaryDirectory() as folder:
        storage, r = _attempt(folder, ids, output)
        kw: dict[str, Any] = {"endpoint": "/v1/chat/completions", "json_schema": None}
        whole = finalize_outcome(record_outcome(storage, r, **kw), [], endpoint=kw["endpoint"])
        assert whole.spill is None
        old = (_spill.WHOLE_BYTES, _spill.WINDOW_BYTES, _retry.PARSE_CHUNK_BYTES)
        _spill.WHOLE_BYTES, _spill.WINDOW_BYTES, _retry.PARSE_CHUNK_BYTES = window, window, piece
        try:
            parts = record_outcome(storage, r, **kw)
        finally:
            _spill.WHOLE_BYTES, _spill.WINDOW_BYTES, _retry.PARSE_CHUNK_BYTES = old
        parts = finalize_outcome(parts, [], endpoint=kw["endpoint"])
        expected = whole.ok
        assert_frame_equal(parts.ok, expected)
        assert_frame_equal(parts.failed, whole.failed)
        assert parts.n_ok == expected.height
        assert sorted(parts.ok_ids()) == sorted(expected["custom_id"])
        assert parts.ok_schema == whole.ok.schema
        files = list(parts.spill.files) if parts.spill is not None else []
        assert all(os.path.exists(f) for f in files)
        parts.release()
        assert not any(os.path.exists(f) for f in files)


def test_a_damaged_line_in_a_later_window_is_named_by_its_line_in_the_file(
    tmp_path: Path, small_windows: None
) -> None:
    ids = [f"id-{i}" for i in range(40)]
    lines = [_ok_line(i, "fine") for i in ids]
    lines[33] = b'{"id": "br", "custom_id": "id-33", "response": {\n'  # cut off
    storage, r = _attempt(str(tmp_path), ids, b"".join(lines))
    with pytest.raises(ResultsError, match=r"^line 34 "):
        record_outcome(storage, r, endpoint="/v1/chat/completions", json_schema=None)
    assert not _spill_files(tmp_path)  # the spill of the windows before is removed


def test_a_folder_that_cannot_take_the_spill_is_passed_over(tmp_path: Path) -> None:
    """The spill goes to the next folder (the temporary directory) when one refuses it."""
    (tmp_path / "a-file").write_bytes(b"")
    refused, fallback = str(tmp_path / "a-file" / "outputs"), str(tmp_path / "spill")
    spill = _spill.Spill([refused, fallback])
    spill.add(
        pl.DataFrame({"custom_id": [], "x": []}, schema={"custom_id": pl.String, "x": pl.Int64})
    )
    assert spill.files == [] and spill.schema is not None  # an empty frame: no file
    for start in (0, 3):
        spill.add(
            pl.DataFrame(
                {"custom_id": [f"r{i}" for i in range(start, start + 3)], "x": [start] * 3}
            )
        )
    assert [os.path.dirname(f) for f in spill.files] == [fallback, fallback]
    assert spill.rows == 6
    assert spill.lazy().collect()["custom_id"].to_list() == [f"r{i}" for i in range(6)]
    files = list(spill.files)
    del spill  # collected: its files go with it
    assert not any(os.path.exists(f) for f in files)
    with pytest.raises(OSError):
        _spill.Spill([refused]).add(pl.DataFrame({"x": [1]}))


_CRASHING_DRIVER = """
import os, signal, sys
import polars as pl
import batchframe as bf
from batchframe import _api, _retry, _spill

base_url, root = sys.argv[1:3]
_spill.WHOLE_BYTES = _spill.WINDOW_BYTES = 3000
_retry.PARSE_CHUNK_BYTES = 700
add = _spill.Spill.add
calls = [0]

def add_then_die(self, frame):
    add(self, frame)
    calls[0] += 1
    if calls[0] == 3:  # spill files on disk, the attempt not settled
        os.kill(os.getpid(), signal.SIGKILL)

_spill.Spill.add = add_then_die
df = pl.DataFrame({"id": [f"r{i:04d}" for i in range(60)]})
df = df.with_columns(text=pl.format("text number {}", pl.col("id")))
req = bf.build_requests(
    df, endpoint="/v1/chat/completions", custom_id="id",
    body=bf.chat_body("gpt-4o-mini", user=pl.col("text"), max_tokens=40),
)
client = _api.make_client(base_url, api_key="x")
with bf.BatchJob.create(req, root, client=client, limits=bf.BatchLimits(max_requests=30)) as job:
    job.wait(poll_interval=0.02, progress=False)
"""


def test_a_driver_killed_while_spilling_resumes_without_a_second_batch(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "job"
    script = tmp_path / "driver.py"
    script.write_text(_CRASHING_DRIVER)
    with bf.LocalBatchServer() as server:
        proc = subprocess.run(
            [sys.executable, str(script), server.base_url, str(root)],
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        left = [p for p in (root / "outputs").iterdir() if p.name.startswith(".tmp-")]
        assert any("spill" in p.name for p in left)  # the dead driver's spill files
        n_batches = len(server.batches_created())
        with bf.BatchJob.open(str(root), client=server.client()) as job:  # default windows
            job.wait(poll_interval=POLL, progress=False)
            results = job.collect()
        assert len(server.batches_created()) == n_batches  # nothing submitted again
    assert sorted(results.ok["custom_id"]) == [f"r{i:04d}" for i in range(60)]
    assert not [p for p in (root / "outputs").iterdir() if p.name.startswith(".tmp-")]
    shutil.rmtree(root / "results")
    _same(bf.read_results(str(root)), results)


_MEASURE = """
import json, sys
from batchframe._manifest import ShardAttempt
from batchframe._publish import _parts, _write_parquet, finalize_outcome
from batchframe._retry import record_outcome
from batchframe._storage import Storage

storage = Storage(sys.argv[1])
r = ShardAttempt(shard=0, attempt=0, path="shards/00000.jsonl", sha256="x", n_requests=1)
r.status, r.batch_id, r.output_path = "completed", "batch_1", "outputs/00000.a0.jsonl"
outcome = record_outcome(storage, r, endpoint="/v1/embeddings", json_schema=None)
outcome = finalize_outcome(outcome, [], endpoint="/v1/embeddings")
for part, rows, n, group in _parts(outcome):
    if n:
        _write_parquet(rows, sys.argv[1] + f"/{part}.parquet", {}, group)
outcome.release()
with open("/proc/self/status") as f:
    peak = next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
print(json.dumps({"peak": peak, "spilled": outcome.spill is not None, "rows": outcome.n_ok}))
"""


def _embeddings_attempt(folder: Path, n: int) -> int:
    """A shard of ``n`` requests and its output: one vector of 3,072 floats each."""
    import random

    rnd = random.Random(n)
    # Short floats, ~5 bytes of JSON each: the vectors (4 bytes a float) weigh about
    # what the file does, so holding them would show at once.
    values = [0.5, -0.25, 0.125, -1.0, 0.75, 0.0625]
    pool = [orjson.dumps([rnd.choice(values) for _ in range(3072)]) for _ in range(20)]
    (folder / "shards").mkdir(parents=True)
    (folder / "outputs").mkdir()
    with (
        open(folder / "shards" / "00000.jsonl", "wb") as shard,
        open(folder / "outputs" / "00000.a0.jsonl", "wb") as out,
    ):
        for i in range(n):
            body = {"model": "m", "input": f"text {i}"}
            line = {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": body}
            shard.write(orjson.dumps(line) + b"\n")
            out.write(
                b'{"id":"batch_req_%d","custom_id":"e%d","response":{"status_code":200,'
                b'"request_id":"req_%d","body":{"object":"list","data":[{"object":"embedding",'
                b'"index":0,"embedding":%s}],"model":"m","usage":{"prompt_tokens":3,'
                b'"total_tokens":3}}},"error":null}\n' % (i, i, i, pool[i % len(pool)])
            )
    return (folder / "outputs" / "00000.a0.jsonl").stat().st_size


@pytest.mark.slow  # ~20 s: writes and parses ~0.6 GB of output
def test_settling_memory_does_not_grow_with_one_shards_output(tmp_path: Path) -> None:
    """Peak RSS of parsing + publishing one shard, for 18x the vectors.

    8 MB windows (every file is spilled) keep the noise of one window's parse small.
    Held whole, the second shard's rows would cost ~420 MB more (its vectors alone are
    442 MB against 25 MB); spilled, the peak moves by what the allocators keep (measured
    +80-150 MB at 24,000 rows, levelling off: 1.4 GB of output peaks as 350 MB does).
    """
    import json
    import subprocess
    import sys

    windows = "from batchframe import _spill\n_spill.WHOLE_BYTES = _spill.WINDOW_BYTES = 8 << 20\n"
    peaks = {}
    for n in (2_000, 36_000):
        folder = tmp_path / str(n)
        size = _embeddings_attempt(folder, n)
        out = subprocess.run(
            [sys.executable, "-c", windows + _MEASURE, str(folder)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["spilled"] and result["rows"] == n
        assert pl.scan_parquet(folder / "ok.parquet").select(pl.len()).collect().item() == n
        peaks[size] = result["peak"]
        shutil.rmtree(folder)
    (small, low), (big, high) = sorted(peaks.items())
    assert big > 15 * small > 15 * (8 << 20)
    vectors = (36_000 - 2_000) * 3072 * 4 / 2**20  # MB more of float32 vectors
    assert high - low < 0.5 * vectors, peaks


def test_embeddings_whose_first_window_holds_no_vector(tmp_path: Path, small_windows: None) -> None:
    """The width comes from the first vector, even when the first windows have none."""
    ids = [f"e{i}" for i in range(40)]
    lines = []
    for i, cid in enumerate(ids):
        if i < 25:  # ~4.4 KB of failures: the first window (3 KB) holds no vector
            lines.append(_ok_line(cid, "", status=500))
            continue
        vector = orjson.dumps([0.5, -0.25, 0.125, float(i)])
        lines.append(
            b'{"id":"b","custom_id":"%s","response":{"status_code":200,"request_id":"r",'
            b'"body":{"object":"list","data":[{"object":"embedding","index":0,"embedding":%s}],'
            b'"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}},"error":null}\n'
            % (cid.encode(), vector)
        )
    storage, r = _attempt(str(tmp_path), ids, b"".join(lines))
    kw: dict[str, Any] = {"endpoint": "/v1/embeddings", "json_schema": None}
    spilled = record_outcome(storage, r, **kw)
    assert spilled.spill is not None
    assert spilled.ok_schema["embedding"] == pl.Array(pl.Float32, 4)
    _spill.WHOLE_BYTES = 64 << 20  # (restored by the fixture)
    whole = record_outcome(storage, r, **kw)
    assert_frame_equal(spilled.ok, whole.ok)
    assert_frame_equal(spilled.failed, whole.failed)
    assert spilled.failed.height == 25
    spilled.release()
