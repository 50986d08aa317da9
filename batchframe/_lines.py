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

import functools
import os
import re
import sys
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson
import polars as pl

from batchframe._threads import parse_pool

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "as_bytes",
    "cut_body",
    "diagnose",
    "embeddings_are_base64",
    "iter_lines",
    "read_text_lines",
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


def read_text_lines(data: bytes | os.PathLike[str], *, cut: bool = True) -> pl.DataFrame:
    """The non-blank lines of ``data``, each with its ``response.body`` cut out if it can be.

    Columns: ``_ordinal`` (position among the non-blank lines), ``_lineno`` (1-based
    line number in the file), ``line`` (the text: CRLF endings lose their ``\\r``, the
    first line its UTF-8 BOM, nothing else changes), and with ``cut`` ``_span`` and
    ``_head`` from :func:`cut_body`. The work is spread over all cores by Polars'
    streaming engine (a 50,000-line shard already keeps both cores of a 2-core
    machine busy: reading it in pieces on more threads was measured slower).

    Files of long lines (embeddings) are read by :func:`_long_lines` instead, without
    copying the lines.

    Raises
    ------
    polars.exceptions.PolarsError
        The bytes are not UTF-8 text, or a line holds the ``\\x1f`` control character
        (neither can be a JSON line; callers turn this into a ``ResultsError``). A file
        of long lines does not check for ``\\x1f``: such a line is not JSON, and the
        JSON engine names it.
    """
    raw = as_bytes(data)
    if not cut:
        long = _long_lines(raw)
        if long is not None:
            return long
    lines = pl.scan_csv(
        raw,
        separator="\x1f",
        quote_char=None,
        has_header=False,
        new_columns=["line"],
        schema={"line": pl.String},
        comment_prefix=None,
    ).with_row_index("_lineno", offset=1)
    if cut:
        lines = lines.with_columns(**_CUT)
    return (
        lines.filter(_KEEP_CUT if cut else _KEEP)
        .with_row_index("_ordinal")
        .select("_ordinal", "_lineno", "line", *(["_span", "_head"] if cut else []))
        .collect(engine="streaming")
    )


#: A file whose first line is at least this long is split into lines by `_long_lines`...
_LONG_LINE = 4096
#: ... as long as its lines stay this long on average (else the CSV reader is faster).
_LONG_AVERAGE = 1024
_BOM = b"\xef\xbb\xbf"


def _long_lines(data: bytes) -> pl.DataFrame | None:
    """``read_text_lines(data, cut=False)`` for a file of long lines, as views into ``data``.

    Polars' CSV reader copies every line into buffers of its own: for a 208 MB file
    of embeddings (10,000 lines of 1536 floats) that is ~50 ms on two cores and the
    file's size again in memory. Here ``bytes.find`` finds each line's end (one call
    a line: ~2 µs for a 20 KB line), each line becomes an Arrow string view into
    ``data``, and the bytes are checked as UTF-8 once, on another thread meanwhile.
    Lines, line numbers, CRLF endings and blank lines come out as the CSV reader gives
    them (a differential test checks it).

    ``None`` where the CSV reader reads the file instead: a first line shorter than
    ``_LONG_LINE``, lines of fewer than ``_LONG_AVERAGE`` bytes on average (the
    search stops early), a non-blank line of 12 bytes or fewer (Arrow keeps those
    inside the view), a UTF-8 BOM, 2 GiB or more (32-bit offsets), bytes that are not
    UTF-8 (the CSV reader names the error), pyarrow older than 19 (it cannot build
    string views from buffers).
    """
    n = len(data)
    if n < _LONG_LINE or n >= 2**31 or data.startswith(_BOM) or b"\n" in data[:_LONG_LINE]:
        return None
    import pyarrow as pa  # not at import: `import batchframe` stays without pyarrow

    if sys.byteorder != "little" or not _views_from_buffers():  # views: native byte order
        return None
    buffer = pa.py_buffer(data)
    utf8 = parse_pool().submit(_is_utf8, buffer, n)
    most = n // _LONG_AVERAGE + 1
    views = array("i")  # per line: length, first 4 bytes, buffer 0, offset
    linenos = array("I")
    find, prefix = data.find, int.from_bytes
    pos = lineno = 0
    while pos < n:
        lineno += 1
        if lineno > most:
            utf8.cancel()
            return None
        end = find(b"\n", pos)
        if end < 0:
            end = n
        stop = end - 1 if end > pos and data[end - 1] == 13 else end  # CRLF: the CR goes
        if stop > pos and (data[pos] == 123 or data[pos:stop].strip()):  # 123: `{`
            if stop - pos <= 12:
                utf8.cancel()
                return None
            views.extend((stop - pos, prefix(data[pos : pos + 4], "little", signed=True), 0, pos))
            linenos.append(lineno)
        pos = end + 1
    if not utf8.result():
        return None
    k = len(linenos)
    line = pa.Array.from_buffers(pa.string_view(), k, [None, pa.py_buffer(views), buffer])
    return pl.DataFrame(
        [
            pl.int_range(k, dtype=pl.UInt32, eager=True).alias("_ordinal"),
            pl.Series("_lineno", linenos, dtype=pl.UInt32),
            pl.Series("line", line),
        ]
    )


@functools.cache
def _views_from_buffers() -> bool:
    """Whether this pyarrow builds string views from buffers (19 and newer do)."""
    import pyarrow as pa

    try:
        pa.Array.from_buffers(pa.string_view(), 0, [None, pa.py_buffer(b""), pa.py_buffer(b"")])
    except ValueError:
        return False
    return True


def _is_utf8(buffer: pa.Buffer, n: int) -> bool:
    import pyarrow as pa

    whole = pa.Array.from_buffers(
        pa.large_string(), 1, [None, pa.py_buffer(array("q", [0, n])), buffer]
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _not_blank(line: pl.Expr) -> pl.Expr:
    return line.str.contains(f"[^{re.escape(_BLANK)}]")


def _cut_exprs() -> tuple[dict[str, pl.Expr], pl.Expr, pl.Expr]:
    """The expressions of :func:`read_text_lines`, built once (~0.4 ms a call otherwise)."""
    # A line whose head matched is not blank: only the others are searched for a
    # character that is not white space.
    rest = pl.when(pl.col("_head").is_null()).then(pl.col("line"))
    keep_cut = pl.col("_head").is_not_null() | _not_blank(rest).fill_null(False)
    return cut_body(pl.col("line")), keep_cut, _not_blank(pl.col("line"))


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

    All offsets are in bytes (``str.find`` counts bytes): the cut slices the line as
    ``Binary``, so no line is scanned to count characters.
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


_CUT, _KEEP_CUT, _KEEP = _cut_exprs()


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
