"""``batchframe serve``: run a LocalBatchServer in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchframe serve",
        description=(
            "Serve the OpenAI Files + Batches API locally (plus the synchronous endpoints). "
            "Point any OpenAI client at the printed base URL."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (default: 8000)"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        default=None,
        help="require the bearer token held by environment variable NAME (default: accept any)",
    )
    parser.add_argument(
        "--api-key-file",
        metavar="PATH",
        default=None,
        help="require the bearer token in file PATH (its first line)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="deprecated: the key shows in `ps`; use --api-key-env or --api-key-file",
    )
    parser.add_argument(
        "--executor",
        choices=("echo", "forward"),
        default="echo",
        help="how requests are answered (default: echo)",
    )
    parser.add_argument(
        "--upstream",
        default=None,
        help="base URL of an OpenAI-compatible server, for --executor forward",
    )
    parser.add_argument(
        "--upstream-api-key-env",
        metavar="NAME",
        default=None,
        help="send the bearer token held by environment variable NAME to --upstream",
    )
    parser.add_argument(
        "--upstream-api-key-file",
        metavar="PATH",
        default=None,
        help="send the bearer token in file PATH (its first line) to --upstream",
    )
    parser.add_argument(
        "--upstream-api-key",
        default=None,
        help="deprecated: the key shows in `ps`; use --upstream-api-key-env or -file",
    )
    parser.add_argument(
        "--upstream-adapt",
        choices=("openai", "llama.cpp", "vllm-guided"),
        default=None,
        help="rewrite bodies for the upstream: llama.cpp takes structured outputs as "
        "json_object + schema; vllm-guided as guided_json (default: as is)",
    )
    parser.add_argument(
        "--provider",
        choices=("openai", "azure", "azure-legacy", "groq"),
        default=None,
        help="emulate a provider profile: limits, windows, line URLs, file cap (default: openai)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=8,
        help="parallel upstream requests per batch (default: 8)",
    )
    parser.add_argument(
        "--requests-per-second",
        type=float,
        default=None,
        help="batch execution speed (default: unlimited)",
    )
    parser.add_argument(
        "--failure-rate",
        type=float,
        default=0.0,
        help="share of batch requests that fail with a 500",
    )
    parser.add_argument(
        "--api-error-rate", type=float, default=0.0, help="share of API calls answered 429 or 500"
    )
    parser.add_argument(
        "--completion-window-seconds",
        type=float,
        default=86_400.0,
        help="batches expire after this (default: 86400)",
    )
    parser.add_argument(
        "--queue-token-limit", type=int, default=None, help="enqueued input tokens per model"
    )
    parser.add_argument(
        "--validation-seconds", type=float, default=0.0, help="time spent in 'validating'"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for output order and injected faults"
    )
    parser.add_argument(
        "--state-dir", default=None, help="keep files and batches here across restarts"
    )
    return parser


def serve_main(argv: list[str] | None = None) -> int:
    """Run ``batchframe serve``; return the exit code.

    Parameters
    ----------
    argv
        Arguments after ``serve`` (``None``: ``sys.argv[1:]``).
    """
    args = _parser().parse_args(argv)
    from batchframe._server._local import LocalBatchServer

    try:
        api_key = _secret(args, "api_key")
        upstream_api_key = _secret(args, "upstream_api_key")
    except ValueError as exc:
        print(f"batchframe serve: {exc}", file=sys.stderr)
        return 2
    try:
        server = LocalBatchServer(
            args.executor,
            upstream=args.upstream,
            upstream_api_key=upstream_api_key,
            upstream_adapt=args.upstream_adapt,
            provider=args.provider,
            max_concurrency=args.max_concurrency,
            requests_per_second=args.requests_per_second,
            failure_rate=args.failure_rate,
            api_error_rate=args.api_error_rate,
            completion_window_seconds=args.completion_window_seconds,
            queue_token_limit=args.queue_token_limit,
            validation_seconds=args.validation_seconds,
            seed=args.seed,
            state_dir=args.state_dir,
            api_key=api_key,
            host=args.host,
            port=args.port,
        )
    except (ValueError, OSError) as exc:
        print(f"batchframe serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_signal)
    with server:
        _say(f"batchframe: serving the OpenAI Batch API at {server.base_url}")
        _say(f"  export OPENAI_BASE_URL={server.base_url}")
        _say("  press Ctrl-C to stop")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    _say("batchframe: stopped")
    return 0


def _say(line: str) -> None:
    """Print ``line``; a reader that went away (a closed pipe) does not stop the server.

    The rest of the output then goes to ``os.devnull``, as the Python docs advise for
    ``SIGPIPE``, so that the interpreter's final flush does not fail either.
    """
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _secret(args: argparse.Namespace, name: str) -> str | None:
    """The key given by ``--NAME-env``, ``--NAME-file`` or (deprecated) ``--NAME``.

    A key on the command line is readable by every user of the machine (``ps``,
    ``/proc/PID/cmdline``) and lands in shell history: it still works, with a warning.

    Raises
    ------
    ValueError
        Two sources given, a variable that is unset or empty, an unreadable or empty file.
    """
    flag = "--" + name.replace("_", "-")
    env, path, value = (
        getattr(args, name + "_env"),
        getattr(args, name + "_file"),
        getattr(args, name),
    )
    given = [f for f, v in ((f"{flag}-env", env), (f"{flag}-file", path), (flag, value)) if v]
    if len(given) > 1:
        msg = f"give one of {' / '.join(given)}, not several"
        raise ValueError(msg)
    if env:
        key = os.environ.get(env, "").strip()
        if not key:
            msg = f"{flag}-env {env}: the environment variable {env} is not set or empty"
            raise ValueError(msg)
        return key
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                key = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"{flag}-file {path}: cannot read the key ({exc})"
            raise ValueError(msg) from exc
        if not key:
            msg = f"{flag}-file {path}: the file's first line is empty"
            raise ValueError(msg)
        return key
    if value:
        print(
            f"batchframe serve: warning: {flag} is deprecated: a key on the command line is "
            f"visible to every user of this machine (`ps`) and kept in shell history; use "
            f"{flag}-env NAME or {flag}-file PATH",
            file=sys.stderr,
            flush=True,
        )
        return str(value)
    return None
