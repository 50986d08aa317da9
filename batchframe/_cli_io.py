"""Inputs and outputs of the command line: tables, templates, options, clients, text tables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl

from batchframe._cli_template import compile_string, compile_template
from batchframe._storage import Storage
from batchframe.exceptions import TemplateError

if TYPE_CHECKING:
    import openai

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED_ROWS",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_SETTLED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FORMATS",
    "CliError",
    "cli_client",
    "client_configured",
    "infer_format",
    "load_template",
    "normalize_endpoint",
    "parse_custom_id",
    "parse_pairs",
    "parse_queue_limit",
    "parse_storage_options",
    "read_table",
    "text_table",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_SETTLED = 3
EXIT_FAILED_ROWS = 4
EXIT_INTERRUPTED = 130

FORMATS = ("parquet", "csv", "tsv", "ndjson", "json")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
}
_COMPRESSION = (".gz", ".zst", ".zstd")


class CliError(Exception):
    """An error the command line reports in one line and turns into an exit code.

    Parameters
    ----------
    message
        What went wrong and what to do.
    code
        The process exit code (default 2, a usage or input error).
    """

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- options ---------------------------------------------------------------------------


def _value(text: str) -> Any:
    """JSON if it parses (``true``, ``3``, ``{"a": 1}``), else the text itself."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def parse_pairs(values: Sequence[str] | None, option: str, *, typed: bool) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` into ``{"a": 1, "b": {"c": "x"}}`` (dots nest when ``typed``).

    Parameters
    ----------
    values
        The repeated ``KEY=VALUE`` arguments.
    option
        The option's name, for error messages.
    typed
        Parse values as JSON when they are JSON, and nest dotted keys; otherwise keep
        keys and values as plain strings.
    """
    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            msg = f"{option} takes KEY=VALUE, got {item!r}"
            raise CliError(msg)
        if not typed:
            out[key] = raw
            continue
        *parents, leaf = key.split(".")
        target = out
        for part in parents:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                msg = f"{option} {item!r}: `{part}` was already given a value"
                raise CliError(msg)
            target = nested
        target[leaf] = _value(raw)
    return out


def parse_storage_options(values: Sequence[str] | None) -> dict[str, Any]:
    """``--storage-option`` values as fsspec keyword arguments (JSON values, dotted keys nest)."""
    return parse_pairs(values, "--storage-option", typed=True)


def parse_queue_limit(values: Sequence[str] | None) -> int | dict[str, int] | None:
    """``--queue-token-limit 2000000`` or repeated ``MODEL=TOKENS`` into the job option."""
    if not values:
        return None
    whole: int | None = None
    per_model: dict[str, int] = {}
    for item in values:
        model, sep, raw = item.rpartition("=")
        try:
            tokens = int(raw.replace("_", "").replace(",", ""))
        except ValueError:
            msg = f"--queue-token-limit takes TOKENS or MODEL=TOKENS, got {item!r}"
            raise CliError(msg) from None
        if sep:
            per_model[model] = tokens
        else:
            whole = tokens
    if whole is not None and per_model:
        per_model.setdefault("*", whole)
    return per_model or whole


def normalize_endpoint(endpoint: str) -> str:
    """``chat/completions`` or ``v1/embeddings`` into ``/v1/chat/completions`` etc."""
    path = endpoint.strip().strip("/")
    if not path.startswith("v1/"):
        path = "v1/" + path
    return "/" + path


def parse_custom_id(value: str | None) -> str | pl.Expr | None:
    """A column name, or a ``{{column}}`` template such as ``"{{user}}-{{n}}"``."""
    if value is None or "{{" not in value:
        return value
    return compile_string(value, "--custom-id")


# -- inputs ----------------------------------------------------------------------------


def infer_format(url: str) -> str:
    """Input format from the file name: ``.parquet``, ``.csv``, ``.tsv``, ``.ndjson``... ."""
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    for ext in _COMPRESSION:
        if name.endswith(ext):
            name = name[: -len(ext)]
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    msg = f"cannot tell the format of {url!r} from its name; pass --format ({', '.join(FORMATS)})"
    raise CliError(msg)


def _open(url: str, storage_options: Mapping[str, Any] | None, what: str) -> bytes:
    try:
        storage = Storage(url, storage_options)
        if not storage.exists(""):
            msg = f"{what} {url!r} does not exist"
            raise CliError(msg)
        return storage.read_bytes("")
    except CliError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        msg = f"cannot read {what} {url!r}: {exc}"
        raise CliError(msg) from exc


def read_table(
    url: str,
    *,
    fmt: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    limit: int | None = None,
) -> pl.DataFrame | pl.LazyFrame:
    """Read a Parquet, CSV, TSV, NDJSON or JSON table from a local path or fsspec URL.

    A local Parquet file (or a ``*`` glob of them) is scanned, not read: the build then
    streams it in bounded memory. Other inputs are read whole.

    Parameters
    ----------
    url
        Where the table is (``data/reviews.parquet``, ``s3://bucket/x.csv``, ...).
    fmt
        One of :data:`FORMATS`; ``None`` infers it from the extension (a ``.gz`` or
        ``.zst`` suffix is looked through).
    storage_options
        fsspec options for ``url``.
    limit
        Keep only the first rows (to try a template on a few rows first).
    """
    fmt = fmt or infer_format(url)
    if fmt == "parquet" and "://" not in url:
        if not any(c in url for c in "*?[") and not os.path.exists(url):
            msg = f"input {url!r} does not exist"
            raise CliError(msg)
        try:
            lf = pl.scan_parquet(url)
            lf.collect_schema()
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            msg = f"cannot read {url!r} as parquet: {exc}"
            raise CliError(msg) from exc
        return lf.head(limit) if limit is not None else lf
    data = _open(url, storage_options, "input")
    try:
        if fmt == "parquet":
            df = pl.read_parquet(data)
        elif fmt in ("csv", "tsv"):
            df = pl.read_csv(data, separator="\t" if fmt == "tsv" else ",")
        elif fmt == "ndjson":
            df = pl.read_ndjson(data)
        else:
            df = pl.read_json(data)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        msg = f"cannot read {url!r} as {fmt}: {exc}"
        raise CliError(msg) from exc
    return df.head(limit) if limit is not None else df


def load_template(spec: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The body template from inline JSON (``'{...}'``) or a JSON file path/URL, compiled.

    Raises
    ------
    CliError
        The file is missing or not a JSON object.
    TemplateError
        A malformed placeholder (see :mod:`batchframe._cli_template`).
    """
    inline = spec.lstrip().startswith("{")
    data = spec.encode() if inline else _open(spec, storage_options, "body template")
    where = "--body" if inline else spec
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        msg = f"the body template {where} is not valid JSON: {exc}"
        raise CliError(msg) from exc
    if not isinstance(parsed, dict):
        msg = f"the body template {where} must be a JSON object, got {type(parsed).__name__}"
        raise CliError(msg)
    template = compile_template(parsed)
    if not isinstance(template, dict):  # a top-level {"$col": ...} or {"$lit": ...}
        msg = f"the body template {where} must be an object, not a single column or literal"
        raise TemplateError(msg, column="body")
    return template


# -- client ----------------------------------------------------------------------------


def cli_client(base_url: str | None, api_key_env: str) -> openai.OpenAI:
    """An ``openai.OpenAI`` client whose key comes only from the environment.

    Parameters
    ----------
    base_url
        ``--base-url``; ``None`` uses ``OPENAI_BASE_URL`` or the public API.
    api_key_env
        Name of the environment variable holding the key. When it is unset and a base
        URL is set (a local server), a placeholder key is sent.

    Raises
    ------
    CliError
        No key in the environment and no base URL.
    """
    from batchframe._api import make_client

    key = os.environ.get(api_key_env) or None
    if base_url is None:
        base_url = os.environ.get("OPENAI_BASE_URL") or None
    if key is None:
        if base_url is None:
            msg = (
                f"no API key: set {api_key_env} in the environment (or name another variable "
                "with --api-key-env), or pass --base-url for a local server such as "
                "`batchframe serve`"
            )
            raise CliError(msg)
        key = "no-key"
    return make_client(base_url, api_key=key)


def client_configured(base_url: str | None, api_key_env: str) -> str | None:
    """Why no client can be built from the options and environment, or ``None`` if one can."""
    if base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get(api_key_env):
        return None
    return f"no API key ({api_key_env} is unset) and no --base-url"


# -- text output -----------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:59] + "…"


def text_table(df: pl.DataFrame) -> str:
    """A plain-text table (markdown style): numbers right-aligned, nulls as ``-``."""
    numeric = [dtype.is_numeric() for dtype in df.dtypes]
    rows = [[_cell(v) for v in row] for row in df.iter_rows()]
    widths = [max([len(name), *(len(r[i]) for r in rows)]) for i, name in enumerate(df.columns)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    out = [line(df.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)
