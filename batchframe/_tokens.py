"""Input-token estimates per request (``est_tokens``).

They keep the organisation's enqueued-token queue under its limit, so an estimate that
errs slightly high is safer than one that errs low.

* ``"estimate"``: a vectorised formula over a few character counts of each text (see
  :func:`estimate_tokens`), with constants fitted offline to the ``o200k_base`` and
  ``cl100k_base`` encodings. Costs about 0.2 s of CPU per million texts of ~190 bytes
  (more on text dense in digits, punctuation or emoji), runs outside the GIL, and needs
  no extra package. Totals over many texts land within -15 % to +35 % of the exact count
  on English, code, numbers, JSON and emoji-laden text, -20 % to -5 % on German and
  French, -30 % to +40 % on CJK, -25 % to +115 % on other scripts; see "Token counts"
  in benchmarks/README.md for the corpora and per-corpus errors.
* ``"exact"``: count with the model's BPE encoding (``o200k_base`` / ``cl100k_base``)
  from the ``bpe-openai`` package, which ships the encodings inside its wheel
  (``pip install "batchframe[tokens]"``). Nothing is downloaded, ever. About 50 MB/s of
  text on one core, holding the GIL: 10-20x slower than the whole rest of a build.
* ``"auto"`` (default): with ``bpe-openai`` installed, :func:`quick_estimate_tokens`
  scaled per template leaf by exact counts of sample blocks of rows (see
  :mod:`batchframe._calibrate`; +0.1 % of exact on the benchmark), and the template's
  constant text counted exactly (see :func:`const_counter`; loading ``bpe-openai``'s
  tokenizer costs ~0.1 s once per process, see :func:`_backend`); without it, the
  estimate.

Every counter is a pure function of each text: a text's count never depends on the other
texts of a call or on call order, so a build cut into chunks anywhere gets the same
counts as one in a single piece (``"auto"``'s scale depends on row positions only).

Tokens are counted over the text the model reads: every string in the body except the
``model`` name, plus a fixed overhead of 3 tokens per request and 4 per chat message
(the chat format's framing tokens).
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import itertools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, Literal

import polars as pl

from batchframe.exceptions import InputError

TokenizerSpec = Literal["auto", "exact", "estimate"]
TOKENIZERS: tuple[str, ...] = ("auto", "exact", "estimate")

REQUEST_OVERHEAD = 3
MESSAGE_OVERHEAD = 4

# Model families whose tokenizer is cl100k_base; everything newer uses o200k_base.
_CL100K_PREFIXES = ("gpt-4-", "gpt-4", "gpt-3.5", "text-embedding-", "davinci", "babbage")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")

Counter = Callable[[pl.Series], pl.Series]

# bpe-openai refuses inputs of over 200,000 tokens (and its Python wrapper any of a million
# characters or more); such texts are estimated instead.
EXACT_MAX_TOKENS = 200_000
EXACT_MAX_CHARS = 1_000_000

# -- the estimate ------------------------------------------------------------------------
#
# tokens ~= ceil(sum(weight * count) / 1000) over these counts of a text. Weights are in
# thousandths of a token, integers so that the sum is exact (the same on every chunking).
# Fitted on 2026-11-30 to exact o200k_base and cl100k_base counts of 16 corpora (see
# "Token counts" in benchmarks/README.md) by least squares on each corpus's relative error of the total, errors
# below the exact count weighted 9x (the queue prefers high), one set of weights for both
# encodings (they agree within 2 % on ASCII text; on other scripts cl100k_base needs more
# tokens, and the weights lean towards it).
_W_CHAR = 201  # every character
_W_EXTRA_BYTE = 374  # every UTF-8 byte past a character's first (1 per c2, 2 per c3, 3 per c4)
_W_CHAR4 = 1220  # extra per 4-byte character (emoji, rare CJK)
# ASCII characters that usually start a token of their own, in classes of at most ten
# literals (the regex engine then scans for them with SIMD: ~5 GB/s when they are rare;
# an eleventh literal makes the scan ten times slower).
_W_ASCII = (
    (r"[0-9]", 361),  # digits: numbers are split into groups of 1-3 digits
    (r"[,.;:!?()\"']", 264),  # prose punctuation
    (r"[{}\[\]=_\-/<>]", 1113),  # code and markup punctuation
)
_CHAR4 = r"[\x{10000}-\x{10FFFF}]"


def _char4_thousandths(texts: pl.Series, extra: pl.Series) -> pl.Series | None:
    """Per text, the weight of its 4-byte characters, or None if no text can hold one."""
    rows = (extra >= 3).arg_true()  # a 4-byte character adds 3 bytes past the first
    if rows.is_empty():
        return None
    n4 = (
        texts.gather(rows)
        .to_frame("t")
        .lazy()
        .select(pl.col("t").str.count_matches(_CHAR4).cast(pl.Int64) * _W_CHAR4)
        .collect()
        .to_series()
    )
    return pl.repeat(0, len(texts), dtype=pl.Int64, eager=True).scatter(rows, n4)


def estimate_tokens(texts: pl.Series) -> pl.Series:
    """Estimate the tokens of each text of a String series (nulls and ``""`` count 0).

    ``ceil(0.201 chars + 0.374 (utf8_bytes - chars) + 1.220 c4 + 0.361 digits
    + 0.264 [,.;:!?()"'] + 1.113 [{}[]=_-/<>])``, where ``c4`` counts characters of 4
    UTF-8 bytes (emoji). So a CJK character counts 0.95, an accented or Cyrillic letter
    0.58, an emoji 2.54. Vectorised and computed in integers (thousandths); a text's
    count depends on that text alone.

    Parameters
    ----------
    texts
        A String series.

    Returns
    -------
    pl.Series
        ``est_tokens``, Int64, one per text.
    """
    t = pl.col("t")
    c = t.str.len_chars().cast(pl.Int64)
    extra = t.str.len_bytes().cast(pl.Int64) - c
    total = _W_CHAR * c + _W_EXTRA_BYTE * extra
    for pattern, weight in _W_ASCII:
        total = total + weight * t.str.count_matches(pattern).cast(pl.Int64)
    # One query (Polars runs it without the GIL), not a chain of eager Series calls.
    texts = texts.fill_null("").rename("t")
    out = texts.to_frame().lazy().select(total.alias("total"), extra.alias("extra")).collect()
    thousandths = out["total"]
    char4 = _char4_thousandths(texts, out["extra"])
    if char4 is not None:
        thousandths = thousandths + char4
    return ((thousandths + 999) // 1000).alias("est_tokens")


def quick_estimate_tokens(texts: pl.Series) -> pl.Series:
    """``ceil(0.201 chars + 0.374 (utf8_bytes - chars))`` per text: the base of ``"auto"``.

    The two cheapest terms of :func:`estimate_tokens` (about a tenth of its cost, two
    length kernels), for ``"auto"``, which scales it per template leaf by exact counts
    of the input's first rows: the scale absorbs what the other terms would add.
    """
    out = texts.to_frame("t").lazy().select(quick_estimate_expr(pl.col("t")).alias("est_tokens"))
    return out.collect().to_series()


def quick_estimate_expr(texts: pl.Expr) -> pl.Expr:
    """:func:`quick_estimate_tokens` as an expression over a String column."""
    t = texts.fill_null("")
    c = t.str.len_chars().cast(pl.Int64)
    extra = t.str.len_bytes().cast(pl.Int64) - c
    return (_W_CHAR * c + _W_EXTRA_BYTE * extra + 999) // 1000


def _estimate_one(text: str) -> int:
    return int(estimate_tokens(pl.Series([text], dtype=pl.String))[0])


def encoding_name(model: str | None) -> str:
    """The BPE encoding a model uses (``o200k_base`` unless it is an older family)."""
    m = (model or "").lower()
    if m.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if m.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


@functools.cache
def _encoding(name: str) -> Any:
    with warnings.catch_warnings():
        # bpe-openai 0.1.4 loads its bundled ranks through a deprecated importlib API.
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        return bpe_openai.get_encoding(name)


@functools.cache
def _backend(name: str) -> Any:
    """bpe-openai's Rust tokenizer for an encoding (what ``_encoding(name)._backend`` is).

    Its extension module is loaded on its own when it can be: importing the
    ``bpe_openai`` package decodes the rank tables of all its encodings in Python
    (~0.6 s once per process on a quiet machine, 2 s under load), which counting never
    uses; the extension builds its tokenizer from data inside it (~0.1 s). Falls back
    to the package if the extension cannot be found or loaded that way.
    """
    try:
        return _bindings().tokenizer_for_encoding(name)
    except Exception:  # an unexpected layout of the package: import it whole
        return _encoding(name)._backend


def _bindings() -> Any:
    name = "bpe_openai._bindings"
    module = sys.modules.get(name)
    if module is not None:
        return module
    package = importlib.util.find_spec("bpe_openai")  # finds it without importing it
    where = package.submodule_search_locations if package is not None else None
    for folder in where or []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_bindings" + suffix)
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                spec = importlib.util.spec_from_file_location(name, path, loader=loader)
                assert spec is not None
                module = importlib.util.module_from_spec(spec)
                # Registered first: the package, if imported later, must find this one
                # (a PyO3 module can be initialised only once per process).
                sys.modules[name] = module
                try:
                    loader.exec_module(module)
                except BaseException:
                    # Not left half-initialised: the package import (the fallback)
                    # must load the extension itself.
                    sys.modules.pop(name, None)
                    raise
                return module
    msg = "bpe_openai's extension module was not found"
    raise ImportError(msg)


def has_exact() -> bool:
    """Whether an offline BPE tokenizer (``bpe-openai``) is installed."""
    return importlib.util.find_spec("bpe_openai") is not None


def _check(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        msg = f"`tokenizer` must be one of {TOKENIZERS}, got {tokenizer!r}"
        raise InputError(msg)


def exact_counter(model: str | None) -> Counter:
    """A counter with the model's BPE encoding; texts it refuses are estimated.

    Texts of a million characters or more, or of over 200,000 tokens, get
    :func:`estimate_tokens`. Each distinct text of a call is counted once.

    Parameters
    ----------
    model
        The model name (``None``: ``o200k_base``).

    Returns
    -------
    Counter
        Tokens per text of a String series (nulls count 0).
    """
    if not has_exact():
        msg = (
            "`tokenizer='exact'` needs the offline BPE encodings of the `bpe-openai` package; "
            'install them with `pip install "batchframe[tokens]"` or use `tokenizer="estimate"`'
        )
        raise InputError(msg)
    # The Rust tokenizer under bpe-openai's tiktoken-like wrapper: `count` skips building
    # the token list (about 1.4x faster than len(encode_ordinary(...))).
    backend = _backend(encoding_name(model))
    count_till_limit = backend.count_till_limit

    def one(text: str) -> int:
        if not text:
            return 0
        if len(text) >= EXACT_MAX_CHARS:
            return _estimate_one(text)
        n: int | None = count_till_limit(text, EXACT_MAX_TOKENS)
        return _estimate_one(text) if n is None else n

    def all_of(values: list[str]) -> list[int]:
        # The usual case in one C-level map (no Python call per text): every text short
        # enough for the tokenizer, which then only returns None past the token limit.
        if max(map(len, values), default=0) >= EXACT_MAX_CHARS:
            return [one(t) for t in values]
        counts: list[int | None] = list(
            map(count_till_limit, values, itertools.repeat(EXACT_MAX_TOKENS))
        )
        if None in counts:
            return [one(t) for t in values]
        return counts  # type: ignore[return-value]

    def count(texts: pl.Series) -> pl.Series:
        texts = texts.fill_null("")
        distinct = texts.unique(maintain_order=True)
        counts = pl.Series(all_of(distinct.to_list()), dtype=pl.Int64)
        if len(distinct) == len(texts):
            return counts.alias("est_tokens")
        return texts.replace_strict(distinct, counts, return_dtype=pl.Int64).alias("est_tokens")

    return count


def resolve(tokenizer: str, model: str | None) -> Counter:
    """Return a function counting tokens of each string in a String series.

    Parameters
    ----------
    tokenizer
        ``"exact"`` (BPE, needs ``bpe-openai``), ``"estimate"`` or ``"auto"`` (both: the
        vectorised :func:`estimate_tokens`; see :func:`const_counter` for what ``"auto"``
        counts exactly).
    model
        The model name, for the encoding (``None``: ``o200k_base``).

    Returns
    -------
    Counter
        :func:`estimate_tokens` itself for ``"estimate"`` and ``"auto"``.
    """
    _check(tokenizer)
    if tokenizer == "exact":
        return exact_counter(model)
    return estimate_tokens


def const_counter(tokenizer: str, model: str | None) -> Counter:
    """The counter for a template's constant text, counted once per build.

    ``"auto"`` counts it exactly when ``bpe-openai`` is installed (it is one text, so
    this costs nothing measurable); otherwise it is the same counter as :func:`resolve`.

    Parameters
    ----------
    tokenizer
        ``"auto"``, ``"exact"`` or ``"estimate"``.
    model
        The model name, for the encoding.

    Returns
    -------
    Counter
        Tokens per text of a String series.
    """
    _check(tokenizer)
    if tokenizer == "auto" and has_exact():
        return exact_counter(model)
    return resolve(tokenizer, model)
