"""The ``batchframe`` command line."""

from __future__ import annotations

import sys

COMMANDS = {
    "serve": "run the local OpenAI Files + Batches API server",
    "demo": "run the whole flow on the local server (no API key needed)",
}


def _usage() -> str:
    lines = ["usage: batchframe <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `batchframe <command> --help` for a command's options."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        from batchframe._server._cli import serve_main

        return serve_main(rest)
    if command == "demo":
        from batchframe._demo import main as demo_main

        return demo_main(rest)
    sys.stderr.write(f"batchframe: unknown command {command!r}\n\n{_usage()}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
