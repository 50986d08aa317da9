"""The ``batchframe`` command line: parsers, dispatch and exit codes.

Command implementations are in :mod:`batchframe._cli_commands`; ``serve`` and ``demo``
keep their own parsers (:mod:`batchframe._server._cli`, :mod:`batchframe._demo`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from batchframe._cli_io import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_SETTLED,
    EXIT_USAGE,
    FORMATS,
    CliError,
)
from batchframe._cli_providers import cleanup, provider_parser
from batchframe.exceptions import (
    BatchframeError,
    CostLimitError,
    InputError,
    JobExistsError,
    JobNotFoundError,
    JobNotSettledError,
    LimitError,
    ManifestVersionError,
    ProviderError,
)

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "prepare": "build requests from a table and write the shard files (no network)",
    "submit": "create a job at ROOT and submit its batches",
    "status": "show a job's shards and batches, polling batches in flight (--offline: none)",
    "wait": "drive a job until every row is settled (polls, retries, downloads)",
    "collect": "write a settled job's results to Parquet and/or DuckDB",
    "cancel": "cancel a job's batches in flight and submit nothing more",
    "retry": "run a job's failed rows again (default: retryable or cancelled ones)",
    "cleanup": "delete every file a job left on the provider",
    "serve": "run the local OpenAI Files + Batches API server",
    "demo": "run the whole flow on the local server (no API key needed)",
}

EXIT_CODES = """\
exit codes:
  0  done (wait/cancel: the job is settled, even if some rows failed)
  1  runtime error: the API kept failing, the job is locked by another process,
     a result file is unreadable (the job state is saved; run the command again)
  2  usage or input error: bad option, unreadable input or template, a row the
     API would refuse, no job at ROOT, another job at ROOT (nothing was uploaded)
  3  not settled yet: --timeout passed (wait, cancel), or collect without --partial
  4  settled, but some rows failed (only with --fail-on-failed)
  130  interrupted (Ctrl-C); the job state is saved, run `batchframe wait ROOT`"""


def _quote(path: str) -> str:
    """``path`` as a shell word (quoted only when it needs to be)."""
    import shlex

    return shlex.quote(path)


TEMPLATE_HELP = """\
body template (--body FILE.json, or inline JSON starting with "{"):
  "{{text}}"                 the whole string: column `text`, with its own type
  "Review of {{product}}:"   placeholders inside text: the values inserted as text
  {"$col": "odd {name}"}     the column `odd {name}` (any name)
  {"$lit": "keep {{this}}"}  a value exactly as written, never interpreted
  "{{{{"                     a literal "{{" inside a string
example (chat.json):
  {"model": "gpt-4o-mini",
   "messages": [{"role": "system", "content": "Label the sentiment."},
                {"role": "user", "content": "Review of {{product}}: {{text}}"}],
   "max_tokens": 5}"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="fsspec option for every URL (repeatable); values are JSON when they parse, "
        "dotted keys nest: client_kwargs.endpoint_url=http://...",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    return p


def _client_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--base-url",
        metavar="URL",
        help="API base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or OpenAI)",
    )
    g.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="NAME",
        help="environment variable holding the API key (default: OPENAI_API_KEY); "
        "the key is never taken from the command line and never written anywhere",
    )


def _api() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("API")
    _client_options(g)
    g.add_argument(
        "--break-lock",
        action="store_true",
        help="take over the job's lock from another process (one on another host, or one "
        "you know is stuck); a crashed process on this host is taken over without it",
    )
    return p


def _build() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "input", metavar="INPUT", help="table: Parquet, CSV, TSV, NDJSON or JSON file/URL"
    )
    g = p.add_argument_group("requests")
    g.add_argument("--body", required=True, metavar="TEMPLATE", help="body template (see below)")
    g.add_argument(
        "--endpoint",
        default="/v1/chat/completions",
        help="Batch API endpoint (default: /v1/chat/completions; `embeddings` is enough)",
    )
    g.add_argument(
        "--custom-id",
        metavar="COLUMN",
        help='column of unique row ids, or a template like "{{user}}-{{n}}" '
        "(default: a stable hash of each request)",
    )
    g.add_argument("--format", choices=FORMATS, help="input format (default: from the extension)")
    g.add_argument("--limit", type=int, metavar="N", help="use only the first N rows")
    g.add_argument(
        "--tokenizer",
        choices=("auto", "exact", "estimate"),
        default="auto",
        help="how input tokens are counted (default: auto)",
    )
    g = p.add_argument_group("shard limits (default: the API's)")
    g.add_argument("--max-requests", type=int, metavar="N", help="requests per batch (50,000)")
    g.add_argument("--max-bytes", type=int, metavar="N", help="bytes per batch file (209,715,200)")
    g.add_argument(
        "--max-embedding-inputs", type=int, metavar="N", help="embedding inputs per batch (50,000)"
    )
    g.add_argument("--max-tokens", type=int, metavar="N", help="estimated input tokens per batch")
    return p


def _schedule() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("scheduling")
    g.add_argument(
        "--queue-token-limit",
        action="append",
        metavar="[MODEL=]TOKENS",
        help="the organisation's enqueued-token limit, for every model or one (repeatable)",
    )
    g.add_argument("--max-in-flight", type=int, metavar="N", help="most batches running at once")
    g.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="tries per row for retryable failures (default: 3, more during an outage)",
    )
    return p


def _waiting(timeout_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("waiting")
    g.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    g.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between polls (default: 2, backing off to 60)",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (default: a bar on a terminal, one line per change when piped)",
    )
    return p


def _fail_on_failed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fail-on-failed", action="store_true", help="exit 4 when any row ended failed")


def build_parser() -> argparse.ArgumentParser:
    """The ``batchframe`` parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="batchframe",
        description="Bulk LLM inference through the OpenAI Batch API: a table in, typed "
        "results out.",
        epilog=EXIT_CODES + "\n\nRun `batchframe <command> --help` for a command's options.",
        formatter_class=_Formatter,
    )
    from batchframe import __version__

    parser.add_argument("--version", action="version", version=f"batchframe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    common, api, build, schedule = _common(), _api(), _build(), _schedule()
    prov = provider_parser()
    wait_for = _waiting("give up after this long with exit code 3 (the job keeps running)")

    def add(name: str, parents: list[argparse.ArgumentParser], epilog: str = EXIT_CODES) -> Any:
        return sub.add_parser(
            name,
            help=COMMANDS[name],
            description=COMMANDS[name][0].upper() + COMMANDS[name][1:] + ".",
            parents=parents,
            epilog=epilog,
            formatter_class=_Formatter,
        )

    p = add("prepare", [build, prov, common], TEMPLATE_HELP + "\n\n" + EXIT_CODES)
    p.add_argument("out", nargs="?", metavar="OUT", help="write shards under OUT/shards/")

    p = add(
        "submit",
        [build, schedule, prov, api, wait_for, common],
        TEMPLATE_HELP + "\n\n" + EXIT_CODES,
    )
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")
    p.add_argument(
        "--metadata", action="append", metavar="KEY=VALUE", help="tag every batch (repeatable)"
    )
    p.add_argument("--wait", action="store_true", help="then wait as `batchframe wait` does")
    _fail_on_failed(p)

    p = add("status", [common])
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")
    g = p.add_argument_group("API (batches in flight are polled when a client is configured)")
    _client_options(g)
    g.add_argument(
        "--offline",
        action="store_true",
        help="do not poll: show the numbers as the job last saved them",
    )
    p.add_argument(
        "--as",
        dest="as_",
        choices=("table", "csv", "json"),
        default="table",
        help="table (default) or every column as CSV / NDJSON",
    )
    p.add_argument("--wide", action="store_true", help="every column in the table")

    p = add("wait", [schedule, prov, api, wait_for, common])
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")
    _fail_on_failed(p)

    p = add("collect", [common])
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")
    p.add_argument(
        "--parquet",
        metavar="PATH",
        help="write ok rows to PATH, failed rows and batches beside it (any fsspec URL)",
    )
    p.add_argument("--duckdb", metavar="DATABASE", help="upsert into this DuckDB database file")
    p.add_argument("--table", metavar="NAME", help="DuckDB table name (default: results)")
    p.add_argument(
        "--partial", action="store_true", help="rows finished so far, while the job still runs"
    )
    _fail_on_failed(p)

    p = add("cancel", [api, _waiting("stop waiting after this long with exit code 3"), common])
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")
    p.add_argument("--no-wait", action="store_true", help="return once cancelling was requested")

    p = add("retry", [schedule, api, wait_for, common])
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")
    g = p.add_argument_group(
        "which failed rows (default: every retryable or cancelled row; given together, "
        "a row matching any of them)"
    )
    g.add_argument("--cancelled", action="store_true", help="rows failed with stage `cancelled`")
    g.add_argument(
        "--error-code",
        action="append",
        metavar="CODE",
        help="rows failed with this error code, e.g. server_error (repeatable)",
    )
    g.add_argument(
        "--reset-attempts",
        action="store_true",
        help="give the rows --max-attempts tries again (default: the new try counts in them)",
    )
    p.add_argument("--wait", action="store_true", help="then wait as `batchframe wait` does")
    _fail_on_failed(p)
    p = add("cleanup", [api, common])
    p.add_argument("root", metavar="ROOT", help="job root: a directory or fsspec URL")

    for name in ("serve", "demo"):
        sub.add_parser(name, help=COMMANDS[name], add_help=False)
    return parser


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    from batchframe import _cli_commands as c

    return {
        "prepare": c.prepare,
        "submit": c.submit,
        "status": c.status,
        "wait": c.wait,
        "collect": c.collect,
        "cancel": c.cancel,
        "retry": c.retry,
        "cleanup": cleanup,
    }


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, JobNotSettledError | TimeoutError):
        return EXIT_NOT_SETTLED
    if isinstance(
        exc,
        InputError
        | LimitError
        | JobNotFoundError
        | JobExistsError
        | ManifestVersionError
        | ProviderError
        | CostLimitError,
    ):
        return EXIT_USAGE
    return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    command: str = args.command
    log = logging.getLogger("batchframe")
    handler: logging.Handler | None = None
    previous = log.level
    if getattr(args, "verbose", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("batchframe: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        return _handlers()[command](args)
    except KeyboardInterrupt:
        root = getattr(args, "root", None)
        advice = f" (`batchframe wait {_quote(root)}` resumes it)" if root else ""
        sys.stderr.write(f"batchframe {command}: interrupted; the job state is saved{advice}\n")
        return EXIT_INTERRUPTED
    except JobNotFoundError as exc:
        root = str(getattr(args, "root", "ROOT"))
        sys.stderr.write(
            f"batchframe {command}: error: no batchframe job at {root}: start one with "
            f"`batchframe submit INPUT {_quote(root)} --body TEMPLATE` (or check the path "
            "and --storage-option)\n"
        )
        return _exit_code(exc)
    except (CliError, BatchframeError, TimeoutError, OSError) as exc:
        sys.stderr.write(f"batchframe {command}: error: {exc}\n")
        return _exit_code(exc)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            log.setLevel(previous)


def main(argv: list[str] | None = None) -> int:
    """Run the ``batchframe`` command line; return the process exit code.

    Parameters
    ----------
    argv
        Arguments after the program name (``None``: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        from batchframe._server._cli import serve_main

        return _no_exit(lambda: serve_main(args[1:]))
    if args and args[0] == "demo":
        from batchframe._demo import main as demo_main

        return _no_exit(lambda: demo_main(args[1:]))
    parser = build_parser()
    if not args:
        parser.print_help()
        return EXIT_USAGE
    return _no_exit(lambda: _run(parser.parse_args(args)))


def _no_exit(fn: Callable[[], int]) -> int:
    """Run ``fn``, turning argparse's ``SystemExit`` (``--help``, bad options) into a code."""
    try:
        return fn()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)


if __name__ == "__main__":
    raise SystemExit(main())
