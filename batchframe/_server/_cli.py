"""``batchframe serve``: run a LocalBatchServer in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
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
        "--api-key", default=None, help="require this bearer token (default: accept any)"
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
    parser.add_argument("--upstream-api-key", default=None, help="bearer token sent to --upstream")
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
        server = LocalBatchServer(
            args.executor,
            upstream=args.upstream,
            upstream_api_key=args.upstream_api_key,
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
            api_key=args.api_key,
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
        print(f"batchframe: serving the OpenAI Batch API at {server.base_url}", flush=True)
        print(f"  export OPENAI_BASE_URL={server.base_url}", flush=True)
        print("  press Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    print("batchframe: stopped", flush=True)
    return 0
