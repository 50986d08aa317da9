"""``batchframe serve`` (serve_main) in a subprocess: prints its URL, serves, stops on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import openai
import pytest

from batchframe._server._cli import serve_main


def _serve(*args: str) -> subprocess.Popen[str]:
    """``batchframe serve`` (``serve_main``) in a child process, its output piped."""
    code = "import sys; from batchframe._server._cli import serve_main; sys.exit(serve_main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_prints_url_serves_and_stops_on_ctrl_c() -> None:
    process = _serve("--api-key", "k-123", "--seed", "3")
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "http://127.0.0.1:" in first
        base_url = first.split(" at ")[1].strip()
        assert base_url.endswith("/v1")
        with openai.OpenAI(base_url=base_url, api_key="k-123", max_retries=0) as client:
            assert client.batches.list().data == []
        with (
            openai.OpenAI(base_url=base_url, api_key="nope", max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.batches.list()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert "stopped" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_stops_cleanly_when_its_reader_went_away() -> None:
    """A parent that read the URL and closed the pipe: SIGTERM still stops it with 0."""
    process = _serve()
    try:
        assert process.stdout is not None
        assert "http://127.0.0.1:" in process.stdout.readline()
        process.stdout.close()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--port", "0", "--executor", "forward"]) == 2
    assert "upstream" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_main(["--executor", "magic"])
    start = time.monotonic()
    assert serve_main(["--port", "0", "--failure-rate", "2"]) == 2
    assert time.monotonic() - start < 5
