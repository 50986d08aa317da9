"""Damaged or missing state on disk and on S3: each is recovered, or named with what to do.

Every test damages real files of a real job (run against ``LocalBatchServer`` over
HTTP) and then goes through the public API or the CLI.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import batchframe as bf
from batchframe._manifest import MANIFEST_FILE, PREVIOUS_MANIFEST_FILE

POLL = 0.02


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]}
    )


def _requests(n: int) -> bf.Requests:
    return bf.build_requests(
        _frame(n),
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
    )


def _run(server: bf.LocalBatchServer, root: str, n: int = 30, **kwargs: Any) -> bf.BatchResults:
    kwargs.setdefault("limits", bf.BatchLimits(max_requests=10))
    return bf.run(
        _frame(n),
        root,
        endpoint="/v1/chat/completions",
        body=bf.chat_body("gpt-4o-mini", user=pl.col("text")),
        custom_id="id",
        client=server.client(),
        poll_interval=POLL,
        progress=False,
        **kwargs,
    )


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _same(a: bf.BatchResults, b: bf.BatchResults) -> None:
    assert_frame_equal(a.ok.sort("custom_id"), b.ok.sort("custom_id"))
    assert_frame_equal(a.failed.sort("custom_id"), b.failed.sort("custom_id"))


# -- 1. manifest.json ------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "not a manifest", "deleted"])
def test_damaged_manifest_is_recovered_by_read_open_and_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        first = _run(server, str(root))
        created = len(server.batches_created())
        manifest = root / MANIFEST_FILE
        assert (root / PREVIOUS_MANIFEST_FILE).exists()
        if damage == "truncated":
            _truncate(manifest)
        elif damage == "empty":
            manifest.write_bytes(b"")
        elif damage == "garbage":
            manifest.write_bytes(b"\x00\xff" * 100)
        elif damage == "not a manifest":
            manifest.write_bytes(b'{"format_version": 1, "records": 3}')
        else:
            manifest.unlink()
        with caplog.at_level(logging.WARNING, logger="batchframe"):
            again = bf.read_results(root)
        assert "previous version" in caplog.text
        assert str(manifest) in caplog.text
        _same(first, again)
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=POLL)
            _same(first, job.collect())
        # bf.run resumes the same job: nothing is created again, the manifest is whole.
        _same(first, _run(server, str(root)))
        assert len(server.batches_created()) == created
    assert (
        orjson.loads(manifest.read_bytes())["job_id"]
        == orjson.loads((root / PREVIOUS_MANIFEST_FILE).read_bytes())["job_id"]
    )


def test_recovery_never_loses_a_created_batch(tmp_path: Path) -> None:
    """The previous version lacks the newest intent and batch: reconciliation adopts it.

    With one shard, the saves are: created, uploaded, intent, batch id. The intent does
    not change the skeleton, so ``manifest.prev.json`` holds the *uploaded* version:
    neither the intent nor the batch. Recovery must still find the batch by its tags.
    """
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        with bf.BatchJob.create(_requests(8), root, client=server.client()) as job:
            job.submit()
        assert len(server.batches_created()) == 1
        prev = orjson.loads((root / PREVIOUS_MANIFEST_FILE).read_bytes())
        assert [(r["status"], r["batch_id"]) for r in prev["records"]] == [("uploaded", None)]
        _truncate(root / MANIFEST_FILE, 0.3)
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=POLL)
            results = job.collect()
        assert len(server.batches_created()) == 1  # adopted, not created again
    assert results.ok.height == 8


def test_recovery_of_a_job_in_flight_with_several_shards(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer(validation_seconds=0.2) as server:
        req = _requests(40)
        limits = bf.BatchLimits(max_requests=10)
        with bf.BatchJob.create(req, root, client=server.client(), limits=limits) as job:
            job.submit()
        assert len(server.batches_created()) == 4
        (root / MANIFEST_FILE).write_bytes(b'{"format_version": 1, "job_id": "bf')
        with bf.BatchJob.open(root, client=server.client()) as job:
            job.wait(poll_interval=POLL)
            results = job.collect()
        assert len(server.batches_created()) == 4
    assert results.ok.height == 40 and results.failed.height == 0


def test_no_readable_version_names_the_file_and_the_job(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        _run(server, str(root), n=5)
    job_id = orjson.loads((root / MANIFEST_FILE).read_bytes())["job_id"]
    _truncate(root / MANIFEST_FILE, 0.2)  # the job id survives in the first bytes
    (root / PREVIOUS_MANIFEST_FILE).write_bytes(b"")
    for call in (
        lambda: bf.read_results(root),
        lambda: bf.BatchJob.open(root),
        lambda: bf.scan_results(root),
    ):
        with pytest.raises(bf.ManifestDamagedError) as info:
            call()
        text = str(info.value)
        assert str(root / MANIFEST_FILE) in text
        assert f"batchframe_job={job_id}" in text
        assert "backup" in text
        assert isinstance(info.value.__cause__, orjson.JSONDecodeError)
    with pytest.raises(bf.ManifestDamagedError):  # never a second job over the first
        _run(bf.LocalBatchServer(), str(root), n=5)


def test_newer_previous_version_is_not_mistaken_for_damage(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        _run(server, str(root), n=3)
    data = orjson.loads((root / PREVIOUS_MANIFEST_FILE).read_bytes())
    (root / PREVIOUS_MANIFEST_FILE).write_bytes(orjson.dumps(data | {"format_version": 99}))
    (root / MANIFEST_FILE).write_bytes(b"{")
    with pytest.raises(bf.ManifestVersionError):
        bf.read_results(root)


# -- on S3 (moto's server over loopback) -----------------------------------------------------
@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="y",
            region_name="us-east-1",
        ).create_bucket(Bucket="damage")
        yield {"client_kwargs": {"endpoint_url": endpoint}, "key": "x", "secret": "y"}
    finally:
        server.stop()


def _s3fs(opts: dict[str, Any]) -> Any:
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.invalidate_cache()
    return fs


def test_damaged_manifest_on_s3_is_recovered(
    s3: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    root = "s3://damage/manifest"
    with bf.LocalBatchServer() as server:
        first = _run(server, root, storage_options=s3)
        created = len(server.batches_created())
        fs = _s3fs(s3)
        data = fs.cat_file("damage/manifest/manifest.json")
        fs.pipe_file("damage/manifest/manifest.json", data[: len(data) // 3])
        with caplog.at_level(logging.WARNING, logger="batchframe"):
            _same(first, bf.read_results(root, storage_options=s3))
        assert "s3://damage/manifest/manifest.json" in caplog.text
        _same(first, _run(server, root, storage_options=s3))
        assert len(server.batches_created()) == created
        fs.pipe_file("damage/manifest/manifest.json", b"")
        fs.pipe_file("damage/manifest/manifest.prev.json", b"")
        with pytest.raises(bf.ManifestDamagedError, match=r"s3://damage/manifest/manifest\.json"):
            bf.read_results(root, storage_options=s3)


# -- 6. batchframe serve keeps its key off the command line ----------------------------------
_SERVE = (
    "import sys; from batchframe._server._cli import serve_main; sys.exit(serve_main(sys.argv[1:]))"
)


def _serve(args: list[str], env: dict[str, str]) -> tuple[Any, str]:
    import os
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert "http://127.0.0.1:" in first, process.stderr.read() if process.stderr else ""
    return process, first.split(" at ")[1].strip()


def _stop(process: Any) -> str:
    import signal

    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    return str(err)


@pytest.mark.parametrize("source", ["env", "file", "deprecated flag"])
def test_serve_reads_its_key_from_env_or_file_not_argv(tmp_path: Path, source: str) -> None:
    import openai

    key = "sk-local-" + source.replace(" ", "-")
    if source == "env":
        args, env = ["--api-key-env", "BF_SERVE_KEY"], {"BF_SERVE_KEY": key}
    elif source == "file":
        (tmp_path / "key").write_text(key + "\n")
        args, env = ["--api-key-file", str(tmp_path / "key")], {}
    else:
        args, env = ["--api-key", key], {}
    process, base_url = _serve(args, env)
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert (key.encode() in cmdline) == (source == "deprecated flag")
        with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
            assert client.batches.list().data == []
        with (
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.batches.list()
    finally:
        err = _stop(process)
    assert ("deprecated" in err) == (source == "deprecated flag")
    assert key not in err


def test_serve_refuses_a_missing_key_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchframe._server._cli import serve_main

    monkeypatch.delenv("BF_NO_SUCH_KEY", raising=False)
    assert serve_main(["--port", "0", "--api-key-env", "BF_NO_SUCH_KEY"]) == 2
    assert "BF_NO_SUCH_KEY is not set" in capsys.readouterr().err
    assert serve_main(["--port", "0", "--api-key-file", str(tmp_path / "nothing")]) == 2
    assert "cannot read the key" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert serve_main(["--port", "0", "--api-key-file", str(tmp_path / "empty")]) == 2
    assert "first line is empty" in capsys.readouterr().err
    monkeypatch.setenv("BF_KEY", "k")
    args = ["--port", "0", "--api-key-env", "BF_KEY", "--api-key", "k"]
    assert serve_main(args) == 2
    assert "not several" in capsys.readouterr().err
    args = ["--port", "0", "--executor", "forward", "--upstream", "http://127.0.0.1:9/v1"]
    assert serve_main([*args, "--upstream-api-key-env", "BF_NO_SUCH_KEY"]) == 2
    assert "--upstream-api-key-env" in capsys.readouterr().err


# -- 4. a root that cannot be a job root -----------------------------------------------------
@pytest.mark.parametrize("where", ["root is a file", "parent is a file"])
def test_root_that_is_a_file_is_a_batchframe_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "taken").write_text("not a directory")
    root = tmp_path / "taken" if where == "root is a file" else tmp_path / "taken" / "job"
    with bf.LocalBatchServer() as server:
        with pytest.raises(bf.JobRootError) as info:
            _run(server, str(root), n=3)
        assert server.batches_created() == []
    text = str(info.value)
    assert str(root) in text and "regular file" in text and "choose another root" in text
    assert isinstance(info.value.__cause__, OSError)
    assert isinstance(info.value, OSError)  # generic handlers keep working
    with pytest.raises(bf.JobRootError, match="regular file"):
        bf.BatchJob.create(_requests(3), root)
    with pytest.raises(bf.JobRootError, match="regular file"):
        _requests(3).write(str(root))
    assert (tmp_path / "taken").read_text() == "not a directory"


def test_root_that_cannot_be_created(tmp_path: Path) -> None:
    root = "/proc/batchframe-cannot-exist/job"  # /proc refuses new directories
    with pytest.raises(bf.JobRootError, match="cannot be created") as info:
        bf.BatchJob.create(_requests(3), root)
    assert root in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_cli_reports_a_root_file_and_a_damaged_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchframe._cli import main

    monkeypatch.chdir(tmp_path)
    _frame(6).write_parquet(tmp_path / "in.parquet")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{text}"}]}
    (tmp_path / "chat.json").write_bytes(orjson.dumps(body))
    (tmp_path / "taken").write_text("x")
    with bf.LocalBatchServer() as server:
        common = ["--body", "chat.json", "--custom-id", "id", "--base-url", server.base_url]
        code = main(["submit", "in.parquet", "taken", *common])
        err = capsys.readouterr().err
        assert code != 0 and "regular file" in err and "Traceback" not in err
        assert main(["submit", "in.parquet", "jobs/a", *common]) == 0
        assert (
            main(["wait", "jobs/a", "--base-url", server.base_url, "--poll-interval", "0.02"]) == 0
        )
        capsys.readouterr()
        created = len(server.batches_created())
        _truncate(tmp_path / "jobs/a" / MANIFEST_FILE)
        assert main(["status", "jobs/a"]) == 0
        assert "6 ok" in capsys.readouterr().out
        assert main(["submit", "in.parquet", "jobs/a", *common]) == 0
        assert len(server.batches_created()) == created
        (tmp_path / "jobs/a" / MANIFEST_FILE).write_bytes(b"")
        (tmp_path / "jobs/a" / PREVIOUS_MANIFEST_FILE).write_bytes(b"{")
        code = main(["status", "jobs/a"])
        err = capsys.readouterr().err
        assert code != 0 and "manifest.json" in err and "backup" in err


# -- 2. a damaged file in the results/ cache -------------------------------------------------
def _damage_pages(path: Path) -> None:
    """Overwrite bytes inside the column data, leaving the footer readable."""
    data = bytearray(path.read_bytes())
    for i in range(100, min(400, len(data) - 200)):
        data[i] = 0x55
    path.write_bytes(bytes(data))


def test_damaged_published_file_is_rebuilt_from_the_outputs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import duckdb

    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        first = _run(server, str(root))
        target = root / "results" / "ok" / "00001.a0.parquet"
        for reader in ("read_results", "to_duckdb", "collect", "write_parquet"):
            _damage_pages(target)
            with pytest.raises(Exception, match="parquet"):
                pl.read_parquet(target)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="batchframe"):
                if reader == "read_results":
                    _same(first, bf.read_results(root))
                elif reader == "to_duckdb":
                    con = duckdb.connect()
                    bf.results_to_duckdb(root, con, table="t")
                    assert con.execute("SELECT count(*) FROM t").fetchone() == (30,)
                elif reader == "collect":
                    with bf.BatchJob.open(root, client=server.client()) as job:
                        _same(first, job.collect())
                else:
                    first.write_parquet(tmp_path / "a.parquet")
                    bf.read_results(root).write_parquet(tmp_path / "b.parquet")
            assert str(target) in caplog.text and "rebuilding" in caplog.text, reader
            assert pl.read_parquet(target).height == 10  # rebuilt in place
    assert_frame_equal(bf.read_results(root).ok.sort("custom_id"), first.ok.sort("custom_id"))


def test_damaged_published_file_on_s3_is_rebuilt(s3: dict[str, Any]) -> None:
    root = "s3://damage/results"
    with bf.LocalBatchServer() as server:
        first = _run(server, root, storage_options=s3)
    fs = _s3fs(s3)
    key = "damage/results/results/ok/00002.a0.parquet"
    data = bytearray(fs.cat_file(key))
    data[100:400] = b"\x55" * 300
    fs.pipe_file(key, bytes(data))
    _same(first, bf.read_results(root, storage_options=s3))
    fs.invalidate_cache()
    with fs.open(key, "rb") as f:
        assert pl.read_parquet(f).height == 10


# -- 3. a deleted output file of a settled job -----------------------------------------------
def test_deleted_output_is_downloaded_again_while_the_provider_has_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        first = _run(server, str(root), keep_files=True)
        output = root / "outputs" / "00001.a0.jsonl"
        original = output.read_bytes()
        output.unlink()
        (root / "results" / "ok" / "00001.a0.parquet").unlink()  # so it must be rebuilt
        with (
            caplog.at_level(logging.WARNING, logger="batchframe"),
            bf.BatchJob.open(root, client=server.client()) as job,
        ):
            _same(first, job.collect())
        assert "downloaded it again" in caplog.text
        assert output.read_bytes() == original


def test_deleted_output_without_a_client_says_what_is_lost_and_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        first = _run(server, str(root), keep_files=True)
        (root / "outputs" / "00001.a0.jsonl").unlink()
        (root / "results" / "ok" / "00001.a0.parquet").unlink()
        with caplog.at_level(logging.WARNING, logger="batchframe"):
            results = bf.read_results(root)  # no client: cannot download it again
        assert "shard 1 attempt 0" in caplog.text and "10 row(s) lost" in caplog.text
        lost = results.failed.filter(pl.col("stage") == "lost")
        shard_1 = sorted(f"r{i}" for i in range(10, 20))
        assert sorted(lost["custom_id"]) == shard_1
        assert set(lost["error_code"]) == {"output_file_lost"}
        assert "outputs/00001.a0.jsonl" in lost["error_message"][0]
        assert not lost["retryable"].any()
        assert results.ok.height == 20  # every other row is kept
        assert_frame_equal(
            results.ok.sort("custom_id"),
            first.ok.filter(~pl.col("custom_id").is_in(shard_1)).sort("custom_id"),
        )
        # Lost rows are never published: a job with a client brings the real rows back.
        assert not (root / "results" / "failed" / "00001.a0.parquet").exists()
        with bf.BatchJob.open(root, client=server.client()) as job:
            _same(first, job.collect())


def test_deleted_output_the_provider_no_longer_has(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with bf.LocalBatchServer() as server:
        _run(server, str(root), keep_files=True)
        manifest = orjson.loads((root / MANIFEST_FILE).read_bytes())
        record = next(r for r in manifest["records"] if r["shard"] == 2)
        server.client().files.delete(record["output_file_id"])
        (root / "outputs" / "00002.a0.jsonl").unlink()
        (root / "results" / "ok" / "00002.a0.parquet").unlink()
        with bf.BatchJob.open(root, client=server.client()) as job:
            results = job.collect()
    lost = results.failed.filter(pl.col("stage") == "lost")
    assert lost.height == 10
    assert record["output_file_id"] in lost["error_message"][0]
    assert results.ok.height + results.failed.height == 30
