"""The ``batchframe`` command line, in-process through ``main([...])`` and once as a subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import orjson
import polars as pl
import pytest

import batchframe as bf
from batchframe._cli import COMMANDS, main
from batchframe._cli_io import (
    CliError,
    infer_format,
    normalize_endpoint,
    parse_queue_limit,
    parse_storage_options,
    text_table,
)
from batchframe._cli_template import compile_string, compile_template
from batchframe.exceptions import TemplateError

POLL = ["--poll-interval", "0.02"]
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Label the sentiment."},
        {"role": "user", "content": "Review of {{product}}: {{text}}"},
    ],
    "max_tokens": 5,
}


def table(n: int = 24) -> pl.DataFrame:
    products = ["kettle", "lamp", "desk"]
    return pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "product": [products[i % 3] for i in range(n)],
            "text": [f"it works, {i}/10" for i in range(n)],
            "stars": [i % 5 + 1 for i in range(n)],
        }
    )


def write_input(df: pl.DataFrame, path: str, fmt: str) -> str:
    buf = io.BytesIO()
    if fmt == "parquet":
        df.write_parquet(buf)
    elif fmt == "csv":
        df.write_csv(buf)
    else:
        df.write_ndjson(buf)
    with fsspec.open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[bf.LocalBatchServer]:
    with bf.LocalBatchServer(seed=3) as s:
        yield s


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chat.json").write_bytes(orjson.dumps(BODY))
    write_input(table(), str(tmp_path / "in.parquet"), "parquet")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def api(server: bf.LocalBatchServer) -> list[str]:
    return ["--base-url", server.base_url]


# -- help and usage ------------------------------------------------------------------------


def test_help_lists_every_command_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in (
        "prepare",
        "submit",
        "status",
        "wait",
        "collect",
        "cancel",
        "retry",
        "serve",
        "demo",
    ):
        assert name in out
    assert set(COMMANDS) == {
        "prepare",
        "submit",
        "status",
        "wait",
        "collect",
        "cancel",
        "retry",
    } | {
        "serve",
        "demo",
        "cleanup",
    }
    assert "exit codes:" in out and "--fail-on-failed" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"batchframe {command}" in out
    if command not in ("serve", "demo"):
        assert "exit codes:" in out
    if command in ("prepare", "submit"):
        assert '{"$col"' in out and "{{{{" in out  # the template notation is documented


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "status")[0] == 2  # ROOT missing
    assert run(capsys, "prepare", "in.parquet")[0] == 2  # --body missing
    code, _, err = run(capsys, "status", "nowhere")
    assert code == 2 and "no batchframe job" in err
    code, _, err = run(capsys, "collect", "nowhere", "--table", "t")
    assert code == 2 and "--duckdb" in err


# -- template notation ---------------------------------------------------------------------


def test_template_whole_placeholder_keeps_the_column_type() -> None:
    df = pl.DataFrame({"n": [1, 2], "tags": [["a"], ["b", "c"]], "t": ["x", "y"]})
    template = compile_template({"a": "{{n}}", "b": "{{ tags }}", "c": {"$col": "t"}})
    out = df.select(**template)
    assert out.schema == {"a": pl.Int64, "b": pl.List(pl.String), "c": pl.String}


def test_template_interpolation_escape_and_literals() -> None:
    df = pl.DataFrame({"product": ["lamp"], "n": [3], "odd {name}": ["v"]})
    expr = compile_string("{{product}} x{{n}} {{{{literal}} }}", "p")
    assert isinstance(expr, pl.Expr)
    assert df.select(expr).item() == "lamp x3 {{literal}} }}"
    assert compile_string("no {columns} here {{{{") == "no {columns} here {{"
    assert compile_template({"$lit": "keep {{this}}"}) == "keep {{this}}"
    assert compile_template({"x": {"$lit": {"$col": "y"}}}) == {"x": {"$col": "y"}}
    assert df.select(compile_template({"$col": "odd {name}"})).item() == "v"
    # Keys are never interpreted; single-key objects other than $col/$lit stay objects.
    assert compile_template({"{{k}}": {"$ref": "#/$defs/A"}}) == {"{{k}}": {"$ref": "#/$defs/A"}}
    assert compile_template([1, None, True, 2.5]) == [1, None, True, 2.5]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{{{text}}}", "does not start a placeholder"),
        ("{{text}", "does not start a placeholder"),
        ("oops {{", "does not start a placeholder"),
        ("{{ }}", "empty placeholder"),
    ],
)
def test_template_errors_name_the_path(text: str, fragment: str) -> None:
    with pytest.raises(TemplateError, match=fragment) as info:
        compile_template({"messages": [{"content": text}]})
    assert "body.messages[0].content" in str(info.value)
    with pytest.raises(TemplateError, match=r"\$col"):
        compile_template({"input": {"$col": 3}})


def test_template_null_in_interpolation_is_refused(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    df = table(4).with_columns(text=pl.when(pl.col("id") == "r2").then(None).otherwise(pl.lit("t")))
    write_input(df, str(work / "nulls.csv"), "csv")
    code, _, err = run(capsys, "prepare", "nulls.csv", "--body", "chat.json", "--custom-id", "id")
    assert code == 2 and "null" in err and "[2]" in err


# -- small helpers ---------------------------------------------------------------------------


def test_option_parsing_helpers() -> None:
    opts = parse_storage_options(
        ["anon=true", "client_kwargs.endpoint_url=http://x:9000", "key=abc", "n=3"]
    )
    assert opts == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://x:9000"},
        "key": "abc",
        "n": 3,
    }
    with pytest.raises(CliError):
        parse_storage_options(["novalue"])
    assert parse_queue_limit(["2_000_000"]) == 2_000_000
    assert parse_queue_limit(["gpt-4o-mini=100", "500"]) == {"gpt-4o-mini": 100, "*": 500}
    assert parse_queue_limit(None) is None
    with pytest.raises(CliError):
        parse_queue_limit(["lots"])
    assert normalize_endpoint("embeddings") == "/v1/embeddings"
    assert normalize_endpoint("/v1/chat/completions") == "/v1/chat/completions"
    assert infer_format("s3://b/x.CSV.gz") == "csv"
    assert infer_format("memory://a/b.jsonl") == "ndjson"
    with pytest.raises(CliError, match="--format"):
        infer_format("data.txt")
    text = text_table(pl.DataFrame({"a": [1_000, None], "b": ["x", "y"], "c": [0.000076, 2.5]}))
    assert text.splitlines()[2] == "| 1,000 | x | 0.000076 |"
    assert "|     - | y |      2.5 |" in text


# -- prepare -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson"])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_prepare_reads_every_format_from_any_url(
    fmt: str, where: str, capsys: pytest.CaptureFixture[str], work: Path, memfs: Any
) -> None:
    ext = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson"}[fmt]
    src = f"memory://inputs/t.{ext}" if where == "memory" else str(work / f"t.{ext}")
    write_input(table(), src, fmt)
    out = "memory://prepared" if where == "memory" else str(work / "prepared")
    code, stdout, _ = run(
        capsys,
        "prepare",
        src,
        out,
        "--body",
        "chat.json",
        "--custom-id",
        "id",
        "--max-requests",
        "10",
    )
    assert code == 0, stdout
    assert "3 shard(s)" in stdout and "wrote 3 shard file(s)" in stdout
    with fsspec.open(f"{out}/shards/00000.jsonl", "rb") as f:
        first = orjson.loads(f.readline())
    assert first["custom_id"] == "r0"
    assert first["body"]["messages"][1]["content"] == "Review of kettle: it works, 0/10"


def test_prepare_plan_only_format_override_limit_and_inline_body(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    write_input(table(), str(work / "data.txt"), "csv")
    body = '{"model": "text-embedding-3-small", "input": "{{text}}", "dimensions": 8}'
    code, out, err = run(capsys, "prepare", "data.txt", "--body", body, "--endpoint", "embeddings")
    assert code == 2 and "--format" in err
    code, out, _ = run(
        capsys,
        "prepare",
        "data.txt",
        "--format",
        "csv",
        "--body",
        body,
        "--endpoint",
        "embeddings",
        "--limit",
        "5",
        "--custom-id",
        "{{id}}-{{stars}}",
    )
    assert code == 0
    assert "5 /v1/embeddings requests" in out and "1 shard(s)" in out
    assert not (work / "shards").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--body", '{"model": "m", "messages": [{"role": "user", "content": "{{txt}}"}]}'], "txt"),
        (["--body", "missing.json"], "does not exist"),
        (["--body", '{"model": '], "not valid JSON"),
        (["--body", "chat.json", "--custom-id", "product"], "duplicate"),
        (["--body", "chat.json", "--endpoint", "/v1/nope"], "unknown endpoint"),
        (["--body", "chat.json", "--max-requests", "0"], "max_requests"),
        (["--body", '{"model": "m", "input": "{{text}"}'], "placeholder"),
    ],
)
def test_prepare_refuses_bad_input_with_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    code, _, err = run(capsys, "prepare", "in.parquet", *argv)
    assert code == 2
    assert fragment in err
    assert err.startswith("batchframe prepare: error:")
    code, _, err = run(capsys, "prepare", "absent.parquet", "--body", "chat.json")
    assert code == 2 and "does not exist" in err


# -- the job commands ------------------------------------------------------------------------


def test_submit_status_wait_collect(
    server: bf.LocalBatchServer, capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    common = ["--body", "chat.json", "--custom-id", "id", "--max-requests", "10", *api(server)]
    code, out, err = run(capsys, "submit", "in.parquet", "jobs/a", *common)
    assert code == 0, err
    assert "created job bfj_" in out and "submitted 3 batch(es)" in out
    assert "input tokens (estimate)" in out

    # status: no API key, no base URL, no network; a table of shards.
    code, out, _ = run(capsys, "status", "jobs/a")
    assert code == 0
    assert "24 rows in 3 shard(s)" in out
    assert "| shard | attempt |" in out and "batch_" in out

    # Submitting the same requests again resumes the job: no second batch for any shard,
    # and the output says so.
    before = len(server.batches_created())
    code, out, _ = run(capsys, "submit", "in.parquet", "jobs/a", *common)
    assert code == 0 and "resuming job" in out
    assert "nothing new to submit: 3 batch(es) were submitted earlier" in out
    assert "submitted 3" not in out
    assert len(server.batches_created()) == before
    # Other shard limits on a resumed job are refused: its shards are already cut.
    code, _, err = run(capsys, "submit", "in.parquet", "jobs/a", *common, "--max-requests", "5")
    assert code == 2 and "--max-requests 5 (the job's: 10)" in err and "another ROOT" in err
    # Scheduling options apply to what is still to submit, and the output says so.
    code, out, _ = run(capsys, "submit", "in.parquet", "jobs/a", *common, "--max-in-flight", "2")
    assert code == 0 and "scheduling options updated" in out and "max_in_flight=2" in out
    # Other requests at the same root are refused.
    code, _, err = run(capsys, "submit", "in.parquet", "jobs/a", *common, "--limit", "3")
    assert code == 2 and "other requests" in err

    code, out, _ = run(capsys, "wait", "jobs/a", *api(server), *POLL)
    assert code == 0
    lines = out.splitlines()
    assert any("rows done" in line for line in lines)  # plain lines: stdout is not a tty
    assert "\r" not in out
    assert "24 ok, 0 failed" in out

    code, out, _ = run(
        capsys,
        "collect",
        "jobs/a",
        "--parquet",
        "out/results.parquet",
        "--duckdb",
        "out/db.duckdb",
        "--table",
        "reviews",
    )
    assert code == 0
    assert "24 rows: 24 ok, 0 failed" in out and "usage:" in out
    assert pl.read_parquet(work / "out/results.parquet").height == 24
    assert (work / "out/results_failed.parquet").exists()
    with duckdb.connect(str(work / "out/db.duckdb"), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM reviews").fetchall() == [(24,)]
        assert con.sql("SELECT count(*) FROM reviews_failed").fetchall() == [(0,)]

    for fmt, check in (("csv", "shard,attempt"), ("json", '"shard":')):
        code, out, _ = run(capsys, "status", "jobs/a", "--as", fmt)
        assert code == 0 and check in out
    code, out, _ = run(capsys, "status", "jobs/a", "--wide")
    assert code == 0 and "settled: 24 ok" in out and "output_file_id" in out
    assert "numbers as the job saved them at" in out and "; final" in out
    # Submitting a settled job again does nothing and says so.
    code, out, _ = run(capsys, "submit", "in.parquet", "jobs/a", *common)
    assert code == 0 and "nothing to do: the job is settled" in out


def test_status_polls_the_provider_unless_offline(
    server: bf.LocalBatchServer, capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    argv = ["--body", "chat.json", "--custom-id", "id", "--max-requests", "8", *api(server)]
    assert run(capsys, "submit", "in.parquet", "jobs/s", *argv)[0] == 0
    assert server.wait_idle(timeout=30)  # the server has finished every batch
    saved = (work / "jobs/s/manifest.json").read_bytes()
    # Offline: the numbers as the job saved them (nothing done yet), and when that was.
    code, out, _ = run(capsys, "status", "jobs/s", "--offline")
    assert code == 0 and "0 ok, 0 failed, 24 pending" in out
    assert "numbers as the job saved them at" in out and "not polled: --offline" in out
    # With a client configured: the batches are polled and the numbers are the provider's.
    code, out, _ = run(capsys, "status", "jobs/s", *api(server))
    assert code == 0 and "24 ok, 0 failed, 0 pending" in out
    assert "numbers polled from the provider at" in out and "| completed |" in out
    # Looking changes nothing: the job's own state is untouched (no lock, no save).
    assert (work / "jobs/s/manifest.json").read_bytes() == saved
    # No key and no base URL: offline, saying why.
    code, out, _ = run(capsys, "status", "jobs/s")
    assert code == 0 and "not polled: no API key (OPENAI_API_KEY is unset)" in out
    # A missing root gets the CLI's advice, not the Python API's.
    code, _, err = run(capsys, "status", "jobs/none")
    assert code == 2 and "batchframe submit INPUT jobs/none" in err and "BatchJob" not in err


def test_failed_rows_and_fail_on_failed(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    with bf.LocalBatchServer(failure_rate=1.0, seed=1) as failing:
        argv = ["--body", "chat.json", "--custom-id", "id", *api(failing), *POLL]
        code, out, _ = run(
            capsys,
            "submit",
            "in.parquet",
            "jobs/f",
            *argv,
            "--max-attempts",
            "2",
            "--wait",
            "--fail-on-failed",
        )
    assert code == 4
    assert "0 ok, 24 failed" in out and "24 row(s) retried" in out
    code, out, _ = run(capsys, "collect", "jobs/f", "--parquet", "f.parquet")
    assert code == 0
    assert "failed rows:" in out and "server_error" in out
    assert run(capsys, "collect", "jobs/f", "--fail-on-failed")[0] == 4


def test_timeout_partial_and_cancel(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    with bf.LocalBatchServer(requests_per_second=5) as slow:
        argv = ["--body", "chat.json", "--custom-id", "id", *api(slow)]
        assert run(capsys, "submit", "in.parquet", "jobs/c", *argv, "--max-requests", "12")[0] == 0
        code, _, err = run(capsys, "wait", "jobs/c", *api(slow), *POLL, "--timeout", "0.1")
        assert code == 3 and "batchframe wait" in err
        code, _, err = run(capsys, "collect", "jobs/c")
        assert code == 3 and "--partial" in err
        code, out, _ = run(capsys, "collect", "jobs/c", "--partial")
        assert code == 0 and "partial" in out
        code, out, _ = run(capsys, "cancel", "jobs/c", *api(slow), *POLL, "-q")
        assert code == 0 and "cancelled and settled" in out
        assert "rows done" not in out  # --quiet
    code, out, _ = run(capsys, "status", "jobs/c")
    assert code == 0 and "cancelled (settled)" in out
    code, out, _ = run(capsys, "collect", "jobs/c", "--parquet", "c.parquet")
    assert code == 0 and "cancelled" in out
    failed = pl.read_parquet(work / "c_failed.parquet")
    ok = pl.read_parquet(work / "c.parquet")
    assert ok.height + failed.height == 24 and failed.height > 0


def test_api_key_only_from_the_environment(
    capsys: pytest.CaptureFixture[str], work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "submit", "in.parquet", "jobs/k", "--body", "chat.json")
    assert code == 2 and "OPENAI_API_KEY" in err and not (work / "jobs/k").exists()
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_BATCH_KEY", secret)
    with bf.LocalBatchServer(api_key=secret) as guarded:
        argv = ["--base-url", guarded.base_url, *POLL]
        code, out, err = run(
            capsys,
            "submit",
            "in.parquet",
            "jobs/k",
            "--body",
            "chat.json",
            "--api-key-env",
            "MY_BATCH_KEY",
            "--wait",
            *argv,
        )
        assert code == 0, err
        # Without the key the server refuses: a runtime error, exit 1, the key not echoed.
        write_input(table(3), str(work / "small.csv"), "csv")
        code, out, err = run(capsys, "submit", "small.csv", "jobs/k2", "--body", "chat.json", *argv)
        assert code == 1 and secret not in err + out
    stored = b"".join(p.read_bytes() for p in (work / "jobs").rglob("*") if p.is_file())
    assert secret.encode() not in stored


def test_memory_root_and_storage_options(
    server: bf.LocalBatchServer, capsys: pytest.CaptureFixture[str], work: Path, memfs: Any
) -> None:
    src = write_input(table(6), "memory://in/reviews.ndjson", "ndjson")
    fsspec.filesystem("memory").pipe("/tmpl/chat.json", orjson.dumps(BODY))
    opts = ["--storage-option", "skip_instance_cache=true"]
    argv = ["--body", "memory://tmpl/chat.json", "--custom-id", "id", *opts]
    code, _, err = run(
        capsys, "submit", src, "memory://jobs/m", *argv, *api(server), "--wait", *POLL
    )
    assert code == 0, err
    code, out, _ = run(capsys, "status", "memory://jobs/m", *opts)
    assert code == 0 and "6 ok, 0 failed" in out
    code, out, _ = run(capsys, "collect", "memory://jobs/m", "--parquet", "memory://res/r.parquet")
    assert code == 0 and "res/r_failed.parquet" in out
    assert memfs.exists("/res/r_failed.parquet")


def test_progress_bar_on_a_terminal(
    server: bf.LocalBatchServer,
    capsys: pytest.CaptureFixture[str],
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    argv = ["--body", "chat.json", "--custom-id", "id", *api(server)]
    assert run(capsys, "submit", "in.parquet", "jobs/t", *argv)[0] == 0
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    assert main(["wait", "jobs/t", *api(server), *POLL]) == 0
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "rows done" not in term.getvalue()  # no plain lines on a terminal
    assert "row" in err and "24/24" in err  # the tqdm bar, on stderr


def test_locked_job_status_still_works_and_interrupt_exits_130(
    server: bf.LocalBatchServer,
    capsys: pytest.CaptureFixture[str],
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["--body", "chat.json", "--custom-id", "id", *api(server)]
    assert run(capsys, "submit", "in.parquet", "jobs/l", *argv)[0] == 0
    # Another live process on this host drives the job (our parent process stands in).
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": 0.0, "token": "x"}
    (work / "jobs/l/lock.json").write_bytes(orjson.dumps(holder))
    code, _, err = run(capsys, "wait", "jobs/l", *api(server), *POLL, "-v")
    assert code == 1 and "being driven by" in err
    code, out, _ = run(capsys, "status", "jobs/l")  # no lock needed to look
    assert code == 0 and f"driven by process {os.getppid()}" in out
    code, _, err = run(capsys, "wait", "jobs/l", *api(server), *POLL, "--break-lock", "-v")
    assert code == 0 and "batchframe: " in err  # --verbose logs to stderr

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("batchframe._cli_commands.status", interrupted)
    code, _, err = run(capsys, "status", "jobs/l")
    assert code == 130 and "`batchframe wait jobs/l` resumes it" in err


# -- a real process ---------------------------------------------------------------------------


def test_python_m_batchframe_subprocess(server: bf.LocalBatchServer, work: Path) -> None:
    write_input(table(8), str(work / "in.csv"), "csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchframe", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=60,
            check=False,
        )

    done = cli(
        "submit",
        "in.csv",
        "jobs/p",
        "--body",
        "chat.json",
        "--custom-id",
        "id",
        "--base-url",
        server.base_url,
        "--wait",
        *POLL,
    )
    assert done.returncode == 0, done.stderr
    assert "rows done" in done.stdout and "8 ok, 0 failed" in done.stdout
    status = cli("status", "jobs/p")
    assert status.returncode == 0 and "settled: 8 ok" in status.stdout
    assert cli("wait", "jobs/p", "--timeout", "x").returncode == 2
