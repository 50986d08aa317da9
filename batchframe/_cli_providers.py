"""CLI options and commands for providers, provider files and cost.

``--provider``, ``--completion-window``, ``--max-cost``, ``--keep-files``,
``--expires-after``, ``--prices`` (a parent parser for ``prepare``, ``submit`` and
``wait``), the cost lines ``prepare`` prints, and ``batchframe cleanup ROOT``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from batchframe._cli_io import EXIT_OK, text_table

if TYPE_CHECKING:
    from batchframe._job import BatchJob
    from batchframe._requests import Requests

__all__ = ["cleanup", "cost_lines", "create_options", "provider_parser", "resume_options"]


def provider_parser() -> argparse.ArgumentParser:
    """Options shared by ``prepare``, ``submit`` and ``wait``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("provider and cost")
    g.add_argument(
        "--provider",
        metavar="NAME",
        help="openai (default), azure, azure-legacy or groq: limits, windows, line URLs, prices",
    )
    g.add_argument(
        "--completion-window",
        metavar="WINDOW",
        help='batch completion window (default "24h"; groq takes up to "7d")',
    )
    g.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="refuse a job estimated above USD; pause before a batch would pass it",
    )
    g.add_argument(
        "--keep-files",
        action="store_true",
        help="keep input/output files on the provider (default: deleted once stored)",
    )
    g.add_argument(
        "--expires-after",
        type=int,
        metavar="SECONDS",
        help="uploaded files expire after SECONDS (default 30 days; 0: never)",
    )
    g.add_argument("--prices", metavar="FILE.json", help="price overrides, USD per 1M tokens")
    return p


def create_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``BatchJob.create`` from the provider options."""
    from batchframe._providers import DEFAULT_EXPIRES_AFTER

    expires = getattr(args, "expires_after", None)
    return {
        "provider": getattr(args, "provider", None),
        "completion_window": getattr(args, "completion_window", None) or "24h",
        "max_cost": getattr(args, "max_cost", None),
        "keep_files": bool(getattr(args, "keep_files", False)),
        "expires_after": DEFAULT_EXPIRES_AFTER if expires is None else (expires or None),
        "prices": getattr(args, "prices", None),
    }


def resume_options(job: BatchJob, args: argparse.Namespace) -> None:
    """Apply options a resumed job takes (``--max-cost``) and check ``--provider``."""
    from batchframe._providers import check_same_provider

    check_same_provider(job._m, getattr(args, "provider", None), job.root)
    if getattr(args, "max_cost", None) is not None:
        job.configure(max_cost=args.max_cost)


def cost_lines(requests: Requests, args: argparse.Namespace) -> list[str]:
    """``prepare``'s expected-cost table (no network)."""
    from batchframe._cost import fmt_usd

    est = requests.estimate_cost(
        getattr(args, "provider", None), prices=getattr(args, "prices", None)
    )
    if not est.height:
        return []
    low = sum(v for v in est["min_usd"].to_list() if v is not None)
    highs = est["max_usd"].to_list()
    high = None if any(v is None for v in highs) else sum(highs)
    shown = est.select(
        "model",
        "n_requests",
        "input_tokens",
        "max_output_tokens",
        "min_usd",
        "max_usd",
    )
    lines = [
        "",
        f"expected cost: {fmt_usd(low)} to {fmt_usd(high) if high is not None else 'unbounded'}"
        " (inputs only .. every request writing its max_tokens; batch prices)",
        text_table(shown),
    ]
    unpriced = est.filter(est["min_usd"].is_null())["model"].to_list()
    if unpriced:
        lines.append(f"no price known for {', '.join(map(str, unpriced))}: pass --prices FILE.json")
    return lines


def cleanup(args: argparse.Namespace) -> int:
    """``batchframe cleanup ROOT``: delete every file the job left on the provider."""
    import sys

    from batchframe._cli_io import cli_client, parse_storage_options
    from batchframe._files import cleanup_job
    from batchframe._job import BatchJob

    job = BatchJob.open(
        args.root,
        client=cli_client(args.base_url, args.api_key_env),
        storage_options=parse_storage_options(getattr(args, "storage_option", None)),
        break_lock=args.break_lock,
    )
    with job:
        n = cleanup_job(job._api, job._m, job._save)
        busy = sum(1 for r in job._m.records if not r.is_settled)
    out = f"job {job.job_id}: deleted {n} file(s) from the provider"
    if busy:
        out += f"; {busy} shard attempt(s) not settled keep theirs (run `batchframe wait` first)"
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
    return EXIT_OK
