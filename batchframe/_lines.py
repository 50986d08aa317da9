"""Output and error JSONL as text lines, with each line's ``response.body`` cut out verbatim.

Lines are read as text once, by Polars' CSV reader with a separator that cannot occur
in valid JSON (``\\x1f``: control characters must be escaped inside JSON strings) and
no quoting: one String column, CRLF endings, a BOM and very long lines handled, at
several GB/s. Everything else works on that frame:

- the raw ``line`` of a failed row is the text of its line (byte-exact, minus the line
  ending), so nothing has to be found again in the file;
- :func:`cut_body` finds the ``response.body`` value of each line by its position,
  giving the API's exact body text without a JSON engine serialising it again (see
  the function for why the cut is safe);
- the JSON engine (``_duckdb_json``) parses only the cut body and a short head, which
  is most of its work, and the whole line only where the cut was not possible.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import orjson
import polars as pl

__all__ = [
    "as_bytes",
    "cut_body",
    "diagnose",
    "embeddings_are_base64",
    "iter_lines",
    "read_text_lines",
    "split_at_lines",
]

# -- reading lines ---------------------------------------------------------------------

_WS = r"[ \t\n\r]*"
# A JSON string token, strictly (so a matched head always parses).
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'


def _member(name: str, value: str) -> str:
    return f'"{name}"{_WS}:{_WS}{value}'


_SEP = f"{_WS},{_WS}"
#: The layout OpenAI writes, up to the opening brace of the body (key order and
#: JSON whitespace as in the reference; ``"body":`` then at most one space).
_HEAD = (
    r"^\{"
    + _WS
    + _member("id", _STRING)
    + _SEP
    + _member("custom_id", _STRING)
    + _SEP
    + _member("response", r"\{")
    + _WS
    + _member("status_code", "[0-9]{1,9}")
    + _SEP
    + _member("request_id", _STRING)
    + _SEP
    + r'"body": ?\{'
)
_BODY_KEY = '"body":'
#: What may follow the body, with the number of bytes after the body's closing brace.
_TAILS = {'}},"error":null}': 15, '}}, "error": null}': 17}
#: ASCII whitespace as ``bytes.strip`` sees it: lines of only these are blank.
_BLANK = " \t\r\n\x0b\x0c"


def read_text_lines(
    data: bytes | os.PathLike[str], *, cut: bool = True, pieces: int | None = None
) -> pl.DataFrame:
    """The non-blank lines of ``data``, each with its ``response.body`` cut out if it can be.

    Columns: ``_ordinal`` (position among the non-blank lines), ``_lineno`` (1-based
    line number in the file), ``line`` (the text: CRLF endings lose their ``\\r``, the
    first line its UTF-8 BOM, nothing else changes), and with ``cut`` ``_span`` and
    ``_head`` from :func:`cut_body`.

    A file is read in ``pieces`` ranges of whole lines (:func:`split_at_lines`; default
    with ``cut``: one per core, each of at least 4 MiB; else one), one thread each (Polars works without the
    GIL; one call of its engine on a shard-sized input keeps one core busy), and the
    pieces are renumbered and put back in order: the same frame as reading it whole.

    Raises
    ------
    polars.exceptions.PolarsError
        The bytes are not UTF-8 text, or a line holds the ``\\x1f`` control character
        (neither can be a JSON line; callers turn this into a ``ResultsError``).
    """
    raw = as_bytes(data)
    if pieces is None:
        # Without the cut, reading is a small part of parsing (embeddings: ~10%), not
        # worth a second copy of the text (each piece is one).
        fit = len(raw) // _MIN_PIECE_BYTES if cut else 1
        pieces = max(1, min(os.cpu_count() or 1, fit))
    ranges = split_at_lines(raw, pieces)
    if len(ranges) == 1:
        return _read_piece(raw, cut)
    try:
        frames = list(_pool().map(lambda r: _read_piece(raw[r[0] : r[1]], cut), ranges))
    except pl.exceptions.PolarsError:
        return _read_piece(raw, cut)  # raises the error of reading the file whole
    lineno = ordinal = 0
    renumbered = []
    for frame in frames:
        renumbered.append(
            frame.with_columns(pl.col("_ordinal") + ordinal, pl.col("_lineno") + lineno)
        )
        # A piece but the last ends in a non-blank line (split_at_lines): its last
        # row's number is its count of lines.
        lineno += int(frame["_lineno"][-1]) if len(frame) else 0
        ordinal += len(frame)
    return pl.concat(renumbered)


_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The reader threads of this process, kept: new threads each call grow the heap."""
    with _POOL_LOCK:
        pid = os.getpid()
        if pid not in _POOL:
            _POOL.clear()  # a forked child cannot use its parent's threads
            _POOL[pid] = ThreadPoolExecutor(
                max(2, os.cpu_count() or 1), thread_name_prefix="batchframe-lines"
            )
        return _POOL[pid]


#: Bytes per piece below which a file is not split (a piece costs ~1 ms to set up).
_MIN_PIECE_BYTES = 4 * 2**20


def _read_piece(data: bytes, cut: bool) -> pl.DataFrame:
    lines = pl.scan_csv(
        data,
        separator="\x1f",
        quote_char=None,
        has_header=False,
        new_columns=["line"],
        schema={"line": pl.String},
        comment_prefix=None,
    ).with_row_index("_lineno", offset=1)
    if cut:
        # A line whose head matched is not blank: only the others are searched for a
        # character that is not white space.
        lines = lines.with_columns(**cut_body(pl.col("line")))
        rest = pl.when(pl.col("_head").is_null()).then(pl.col("line"))
        keep = pl.col("_head").is_not_null() | _not_blank(rest).fill_null(False)
    else:
        keep = _not_blank(pl.col("line"))
    return (
        lines.filter(keep)
        .with_row_index("_ordinal")
        .select("_ordinal", "_lineno", "line", *(["_span", "_head"] if cut else []))
        .collect(engine="streaming")
    )


def _not_blank(line: pl.Expr) -> pl.Expr:
    return line.str.contains(f"[^{re.escape(_BLANK)}]")


#: Bytes that may end a line that is not blank (not ASCII white space), as ints.
_BLANK_BYTES = frozenset(_BLANK.encode())


def split_at_lines(data: bytes, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` ``(start, end)`` byte ranges of ``data`` that read like the whole.

    Each range but the last ends just after a ``\\n`` that ends a non-blank line, so
    the last row :func:`read_text_lines` gives for it is its last line, and its line
    count is that row's ``_lineno``; no range but the first starts with a UTF-8 BOM
    (which the reader drops only at the start of its input). Reading the ranges one by
    one and renumbering gives the lines, numbers and text of reading ``data`` whole.
    Fewer ranges come back where no such split point is near the even split.
    """
    bounds = [0]
    for k in range(1, parts):
        at = max(bounds[-1], len(data) * k // parts)
        for _ in range(64):  # a few lines on: then give up this split
            nl = data.find(b"\n", at)
            if nl < 0:
                break
            end = nl - 1 if nl > 0 and data[nl - 1] == 0x0D else nl
            if (
                end > bounds[-1]
                and data[end - 1] not in _BLANK_BYTES
                and not data.startswith(b"\xef\xbb\xbf", nl + 1)
                and nl + 1 < len(data)
            ):
                bounds.append(nl + 1)
                break
            at = nl + 1
    bounds.append(len(data))
    return list(itertools.pairwise(bounds))


def cut_body(line: pl.Expr) -> dict[str, pl.Expr]:
    """``_span`` (the ``response.body`` text) and ``_head`` of lines of the usual layout.

    A line qualifies when it starts with ``{"id": <string>, "custom_id": <string>,
    "response": {"status_code": <digits>, "request_id": <string>, "body": {`` (any JSON
    whitespace between tokens, but ``"body":`` then at most one space) and ends with
    ``}}, "error": null}`` (minified or with one space after ``,`` and ``:``). Then
    ``_span`` is the text between, from the body's ``{`` to its ``}``, and ``_head`` is
    the line up to ``"body":`` followed by ``null}}`` (a small JSON document with
    custom_id, status_code and request_id). Other lines get nulls in both.

    The cut is only a candidate: it is the body exactly when ``_span`` is one valid
    JSON value, which the JSON engine checks as it parses it (it never has to parse the
    whole line). The head pattern consists of whole JSON tokens, so it fixes the
    structure up to the body; if something else followed the body (more members of
    ``response``, or of the line before ``"error"``), the text between would be the
    body followed by a comma or a closing brace and more, which is not one JSON value.
    ``"body":`` cannot occur inside a JSON string (its quotes would be escaped), so the
    first one in a qualifying line is the key the pattern ends with.

    All offsets are in bytes (``str.find`` counts bytes): the cut works on the line as
    ``Binary``, where slicing a string view is a new view of the same bytes.
    """
    raw = line.cast(pl.Binary)
    key_end = line.str.find(_BODY_KEY, literal=True) + len(_BODY_KEY)
    tail = pl.lit(None, dtype=pl.Int64)
    for text, size in reversed(_TAILS.items()):
        tail = pl.when(line.str.ends_with(text)).then(size).otherwise(tail)
    head = pl.when(line.str.contains(_HEAD) & tail.is_not_null()).then(raw.bin.slice(0, key_end))
    # `"body":` then one space (the pattern allows at most one): the body starts after it.
    start = key_end + (raw.bin.slice(key_end, 1) == b" ").cast(pl.Int64)
    span = raw.bin.slice(start, raw.bin.size().cast(pl.Int64) - start - tail)
    return {
        "_span": pl.when(head.is_not_null()).then(span).cast(pl.String),
        "_head": (head + pl.lit(b"null}}")).cast(pl.String),
    }


# -- raw bytes -------------------------------------------------------------------------


def as_bytes(data: bytes | os.PathLike[str]) -> bytes:
    """The bytes of ``data`` (read from disk if it is a path)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    with open(data, "rb") as f:
        return f.read()


_EMBEDDING_VALUE = re.compile(rb'"embedding"\s*:\s*(\S)')


def embeddings_are_base64(data: bytes | os.PathLike[str]) -> bool:
    """Whether vectors came as base64 strings (``encoding_format="base64"``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        with open(data, "rb") as f:
            data = f.read(1 << 20)
    match = _EMBEDDING_VALUE.search(data)
    return bool(match and match.group(1) == b'"')


def iter_lines(data: bytes) -> Iterable[tuple[int, bytes]]:
    """``(1-based line number, line)`` for every non-blank line."""
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield lineno, line.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else line


def diagnose(data: bytes) -> str | None:
    """Name the first line that is not a JSON object with a ``custom_id``."""
    for lineno, text in iter_lines(data):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return f"line {lineno} is not valid JSON ({exc})"
        if not isinstance(obj, dict):
            return f"line {lineno} is not a JSON object"
        if not isinstance(obj.get("custom_id"), str) or not obj["custom_id"]:
            return f"line {lineno} has no `custom_id`"
        if not isinstance(obj.get("response"), (dict, type(None))):
            return f"line {lineno}: `response` is not an object"
    return None
