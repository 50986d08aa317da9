"""Token counters: per-row purity, the estimate's formula, its error against exact counts."""

from __future__ import annotations

import inspect
import itertools
import json
import math
import random
import re
import subprocess
import sys

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

import batchframe as bf
from batchframe import _tokens
from batchframe.exceptions import InputError

pytestmark = pytest.mark.skipif(not _tokens.has_exact(), reason="needs bpe-openai")

# -- corpora -------------------------------------------------------------------------------


def _english() -> list[str]:
    import argparse
    import collections
    import json as json_mod
    import logging
    import pathlib

    docs = []
    for mod in (argparse, collections, json_mod, logging, pathlib, inspect, re, random):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                docs.append(doc)
    return list(dict.fromkeys(docs))[:300]


def _code() -> list[str]:
    import argparse
    import logging
    import pathlib

    out = []
    for mod in (argparse, logging, pathlib):
        src = inspect.getsource(mod)
        out += [src[i : i + 1500] for i in range(0, len(src), 1500)]
    return out


def _numbers() -> list[str]:
    rng = random.Random(3)
    rows = []
    for _ in range(400):
        cells = [
            rng.choice(
                [
                    str(rng.randint(0, 10 ** rng.randint(1, 10))),
                    f"{rng.uniform(-1e4, 1e4):.{rng.randint(1, 5)}f}",
                    f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                ]
            )
            for _ in range(rng.randint(3, 30))
        ]
        rows.append(rng.choice([", ", " ", "\t", "\n"]).join(cells))
    return rows


def _json() -> list[str]:
    rng = random.Random(4)
    words = " ".join(_english()[:50]).split()
    out = []
    for _ in range(300):
        obj = {
            rng.choice(words): rng.choice([rng.randint(0, 10**6), rng.choice(words), None, True])
            for _ in range(rng.randint(2, 12))
        }
        out.append(json.dumps(obj, indent=rng.choice([None, 2])))
    return out


_ZH = (
    "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式"
    "做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。"
    "自从人工智能诞生以来，理论和技术日益成熟，应用领域也不断扩大。"
    "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。这座城市有三千多年的建城史。"
    "我们明天早上八点在火车站见面，然后一起去公园散步。天气预报说明天会下雨，请记得带伞。"
    "这家餐厅的菜很好吃，服务也很周到，价格也不贵，我会推荐给我的朋友们。"
)
_JA = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
    "東京は日本の首都であり、世界有数の大都市です。多くの観光客が毎年訪れます。"
    "このレストランの料理はとてもおいしかったです。また来たいと思います。"
    "明日の会議は午前十時から始まりますので、資料を準備しておいてください。"
)
_KO = (
    "대한민국은 동아시아의 한반도 남부에 위치한 민주공화국이다. 수도는 서울특별시이다. "
    "오늘 날씨가 정말 좋네요. 우리 같이 공원에 산책하러 갈까요? "
    "이 식당의 음식은 아주 맛있고 서비스도 친절해서 친구들에게 추천하고 싶어요. "
)


def _split(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(0, len(text), n)]


def _emoji() -> list[str]:
    rng = random.Random(5)
    words = " ".join(_english()[:50]).split()
    faces = [chr(c) for c in range(0x1F600, 0x1F64F)] + ["❤️", "👍🏽", "🇫🇷", "✨"]
    return [
        " ".join(
            rng.choice(faces) * rng.randint(1, 3) if rng.random() < 0.3 else rng.choice(words)
            for _ in range(rng.randint(3, 40))
        )
        for _ in range(400)
    ]


CORPORA = {
    "english": _english,
    "code": _code,
    "numbers": _numbers,
    "json": _json,
    "chinese": lambda: _split(_ZH, 37),
    "japanese": lambda: _split(_JA, 29),
    "korean": lambda: _split(_KO, 31),
    "emoji": _emoji,
}

# The documented bounds (README, "Token estimates"): the estimate's total over a corpus
# against the exact total, (low, high) as estimate / exact - 1, for both encodings.
LATIN, CJK = (-0.15, 0.35), (-0.30, 0.40)
BOUNDS = {
    "english": LATIN,
    "code": LATIN,
    "numbers": LATIN,
    "json": LATIN,
    "emoji": LATIN,
    "chinese": CJK,
    "japanese": CJK,
    "korean": CJK,
}

# -- the estimate's formula ------------------------------------------------------------------


def _reference(text: str) -> int:
    """The estimate of one text, written out character by character."""
    total = 0
    for ch in text:
        n = len(ch.encode())
        total += 201 + 374 * (n - 1) + (1220 if n == 4 else 0)
        if ch.isascii() and ch.isdigit():
            total += 361
        elif ch in ",.;:!?()\"'":
            total += 264
        elif ch in "{}[]=_-/<>":
            total += 1113
    return math.ceil(total / 1000)


mixed_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("abc xyz 019,.;:!?()\"'{}[]=_-/<>\n\téü日本😀")),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), mixed_text), max_size=40))
def test_estimate_matches_the_formula_per_text(texts: list[str | None]) -> None:
    got = _tokens.estimate_tokens(pl.Series(texts, dtype=pl.String)).to_list()
    assert got == [_reference(t) if t else 0 for t in texts]


# -- purity: a text's count depends on that text alone ---------------------------------------


def _chunked(counter: _tokens.Counter, texts: list[str | None], cuts: list[int]) -> list[int]:
    s = pl.Series(texts, dtype=pl.String)
    bounds = [0, *sorted(c % (len(texts) + 1) for c in cuts), len(texts)]
    out: list[int] = []
    for a, b in itertools.pairwise(bounds):
        out += counter(s.slice(a, b - a)).to_list()
    return out


@pytest.mark.parametrize("tokenizer", ["estimate", "exact"])
@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(
        st.one_of(st.none(), mixed_text, st.sampled_from(["same", "same"])), max_size=30
    ),
    cuts=st.lists(st.integers(0, 30), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_counts_are_per_row_across_chunkings_and_orders(
    tokenizer: str, texts: list[str | None], cuts: list[int], seed: int
) -> None:
    counter = _tokens.resolve(tokenizer, "gpt-4o-mini")
    whole = counter(pl.Series(texts, dtype=pl.String)).to_list()
    assert _chunked(counter, texts, cuts) == whole
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    shuffled = counter(pl.Series([texts[i] for i in order], dtype=pl.String)).to_list()
    assert shuffled == [whole[i] for i in order]
    singles = [counter(pl.Series([t], dtype=pl.String)).item() for t in texts]
    assert singles == whole


# -- exact counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-3.5-turbo"])
def test_exact_counter_is_the_encoders_count(model: str) -> None:
    enc = _tokens._encoding(_tokens.encoding_name(model))
    texts = [*_english()[:50], *_split(_ZH, 37), *_emoji()[:20], "a", "a", "", None]
    got = _tokens.resolve("exact", model)(pl.Series(texts, dtype=pl.String)).to_list()
    assert got == [len(enc.encode_ordinary(t)) if t else 0 for t in texts]


def test_exact_counter_estimates_what_the_encoder_refuses() -> None:
    over_tokens = "é😀 \\n" * 80_000  # ~240k tokens in 400k characters
    over_chars = "a b " * 250_000  # a million characters
    s = pl.Series([over_tokens, over_chars, "hello world"])
    exact = _tokens.resolve("exact", "gpt-4o").__call__(s).to_list()
    est = _tokens.estimate_tokens(s).to_list()
    assert exact[:2] == est[:2] and est[0] > 200_000
    assert exact[2] == 2


# -- the estimate against exact counts -------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4-turbo"])
@pytest.mark.parametrize("corpus", list(CORPORA))
def test_estimate_totals_are_within_the_documented_bound(corpus: str, model: str) -> None:
    s = pl.Series(CORPORA[corpus](), dtype=pl.String)
    exact = _tokens.resolve("exact", model)(s).sum()
    est = _tokens.estimate_tokens(s).sum()
    low, high = BOUNDS[corpus]
    assert low <= est / exact - 1 <= high, (corpus, model, est, exact)


# -- modes -------------------------------------------------------------------------------------


def test_modes() -> None:
    assert _tokens.resolve("auto", "gpt-4o") is _tokens.estimate_tokens
    assert _tokens.resolve("estimate", None) is _tokens.estimate_tokens
    assert _tokens.const_counter("estimate", None) is _tokens.estimate_tokens
    assert _tokens.const_counter("auto", "gpt-4o") is not _tokens.estimate_tokens
    for bad in ("fast", "Exact", ""):
        with pytest.raises(InputError, match="tokenizer"):
            _tokens.resolve(bad, None)
        with pytest.raises(InputError, match="tokenizer"):
            _tokens.const_counter(bad, None)


def test_auto_calibrates_rows_and_counts_the_constant_text_exactly() -> None:
    system = "You label customer reviews: answer positive, negative or neutral, in lowercase."
    texts = ["The delivery was late, but the food was great!", "Terrible. Would not buy again."]
    df = pl.DataFrame({"id": [1, 2], "text": texts})
    body = bf.chat_body("gpt-4o-mini", user=pl.col("text"), system=system)
    built = {
        t: bf.build_requests(
            df, endpoint="/v1/chat/completions", body=body, custom_id="id", tokenizer=t
        )
        for t in ("auto", "estimate", "exact")
    }
    assert {t: r.tokenizer for t, r in built.items()} == {
        "auto": "calibrated",
        "estimate": "estimate",
        "exact": "exact",
    }
    enc = _tokens._encoding("o200k_base")
    overhead = _tokens.REQUEST_OVERHEAD + 2 * _tokens.MESSAGE_OVERHEAD
    rows = _tokens.estimate_tokens(pl.Series(texts)).to_list()
    quick = _tokens.quick_estimate_tokens(pl.Series(texts)).to_list()  # what "auto" scales
    const = ["system", system, "user"]  # the template's constant strings: roles and prompt
    exact_const = sum(len(enc.encode_ordinary(t)) for t in const)
    auto = built["auto"].frame["est_tokens"].to_list()
    # The rows' estimates are scaled by exact / estimated tokens over the first rows (here:
    # all of them), so their sum is the exact count up to rounding.
    exact_rows = [len(enc.encode_ordinary(t)) for t in texts]
    ratio = sum(exact_rows) / sum(quick)
    assert auto == [overhead + exact_const + round(r * ratio) for r in quick]
    assert abs(sum(a - overhead - exact_const for a in auto) - sum(exact_rows)) <= 1
    estimate = built["estimate"].frame["est_tokens"].to_list()
    assert estimate == [overhead + sum(map(_tokens._estimate_one, const)) + r for r in rows]


def test_exact_counts_load_the_extension_without_the_package() -> None:
    """Counting loads bpe-openai's Rust extension alone (~0.1 s), not the whole package
    (which decodes every encoding's rank tables in Python); importing the package later
    still works and counts the same."""
    code = """
import sys
import polars as pl
from batchframe import _tokens
texts = pl.Series(["hello world", "日本語のテキスト", "emoji 😀 and code {x: [1, 2]}", ""])
got = _tokens.exact_counter("gpt-4o-mini")(texts).to_list()
print("bpe_openai" in sys.modules)
import bpe_openai
enc = bpe_openai.get_encoding("o200k_base")
print(got == [len(enc.encode_ordinary(t)) for t in texts.to_list()], got)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "False"
    assert out[1].startswith("True [2, ")
