"""Quality rules each fire on a crafted document and pass normal ones; normalization keeps its invariants."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import load_config
from common.errors import BadRecordError
from pipeline.document import Document, DropLog
from pipeline.normalize import NormalizeConfig, NormalizeStep, make_normalizer, normalize
from pipeline.quality import QualityConfig, QualityFilter, QualityStep, describe_rules, ngram_char_fractions

ENGLISH = (
    "Tide pools form where the ocean meets rocky shores. When the tide goes out, water remains trapped in "
    "hollows of the rock, and a small world survives there until the sea returns. Anemones open their "
    "tentacles to catch drifting food, while hermit crabs search the bottom for empty shells that fit their "
    "growing bodies. Visitors who explore these pools at low tide should walk slowly and watch where they "
    "step, because many of the animals are hidden under weed or clinging to the undersides of stones. "
    "Turning a rock over can expose creatures to the sun, so it is better to look without touching."
)
CHINESE = (
    "潮汐池是海水退去以后留在岩石凹陷处的小水洼。退潮的时候，海葵张开触手捕捉漂浮的食物，寄居蟹在池底寻找合适的空壳。"
    "游客在低潮时观察这些水池，应该放慢脚步，注意脚下，因为许多小动物藏在海藻下面或者附着在石头背面。"
    "把石头翻过来会让它们暴露在阳光下，所以最好只看不碰。讲解员常常提醒大家，这些水池是生物的家，而不是水族馆。"
)
WORDS = [
    "apple", "river", "stone", "cloud", "garden", "window", "silver", "forest", "candle", "harbor",
    "meadow", "pencil", "bridge", "winter", "orange", "planet", "rocket", "violin", "jacket", "mirror",
    "castle", "button", "desert", "falcon", "ginger", "helmet", "island", "jungle", "kettle", "lantern",
    "marble", "needle", "oyster", "pepper", "quartz", "ribbon", "saddle", "tunnel", "velvet", "walnut",
    "yogurt", "zipper", "anchor", "basket", "copper", "dragon", "engine", "feather", "goblet", "hammer",
    "insect", "jigsaw", "kitten", "ladder", "magnet", "napkin", "orchid", "puzzle", "quiver", "rabbit",
]  # fmt: skip


def check(text: str, lang: str = "", source: str = "pile", **config) -> tuple[str | None, str]:
    verdict = QualityFilter(QualityConfig(**config)).check(text, lang, source)
    return verdict.reason, verdict.detail


def test_normal_documents_pass_with_a_score():
    for text, lang in ((ENGLISH, "en"), (CHINESE, "zh"), (ENGLISH, ""), (CHINESE, "")):
        verdict = QualityFilter().check(text, lang, "crawl")
        assert verdict.reason is None, verdict.detail
        assert 0.5 < verdict.score <= 1.0 and verdict.text == text


CRAFTED = {
    "too_short": ("Just a few words here, nothing more.", {}),
    "too_long": (ENGLISH, {"max_words": 50}),
    "mean_word_length": ("the and " + " ".join(w * 3 for w in WORDS), {}),
    "symbol_ratio": (ENGLISH + " " + " ".join(f"#{w}" for w in WORDS[:20]), {}),
    "bullet_lines": ("\n".join(f"- the {a} and the {b}" for a, b in zip(WORDS[::2], WORDS[1::2])), {}),
    "ellipsis_lines": (
        "\n".join(
            f"the {w} and {v} went to the {u}" + ("..." if i % 5 < 2 else ".")
            for i, (w, v, u) in enumerate(zip(WORDS, WORDS[20:], WORDS[40:]))
        ),
        {},
    ),
    "alpha_ratio": (ENGLISH + " " + " ".join(str(1000 + 7 * i) for i in range(40)), {}),
    "stop_words": (" ".join(WORDS), {}),
    "dup_lines": ("\n".join([ENGLISH] + ["the same short line again"] * 5 + WORDS[:6]), {}),
    "dup_line_chars": ("\n".join([ENGLISH, ENGLISH] + [f"the {w} line" for w in WORDS[:10]]), {}),
    "dup_paragraphs": ("\n\n".join([ENGLISH.replace(". ", ".\n"), "A short one.", "A short one."]), {}),
    "dup_paragraph_chars": (
        "\n\n".join(
            [ENGLISH, ENGLISH, "\n".join(WORDS[:12]), "\n".join(WORDS[12:24]), "\n".join(WORDS[24:36])]
        ),
        {"max_dup_line_fraction": 1.0, "max_dup_line_char_fraction": 1.0},
    ),
    "top_ngram": (ENGLISH + " " + " ".join(f"tide pool {w}" for w in WORDS[:25]), {}),
    "dup_ngram": (ENGLISH + " " + ENGLISH, {}),
    "lorem_ipsum": (ENGLISH + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", {}),
}


@pytest.mark.parametrize("reason", sorted(CRAFTED))
def test_each_rule_fires(reason):
    text, config = CRAFTED[reason]
    got, detail = check(text, "en", "crawl", **config)
    assert got == reason, detail


def test_chinese_rules():
    assert check(CHINESE + CHINESE, "zh")[0] == "dup_ngram"
    no_function_chars = "山高水长云深雾重鸟飞鱼跃花开叶落风吹草动日出月升星移斗转人来车往灯明夜静雨打芭蕉雪压松枝江河湖海峰峦叠嶂林木葱茏鸡鸣犬吠桃红柳绿莺歌燕舞春华秋实"
    assert check(no_function_chars, "zh")[0] == "stop_words"
    assert check("潮汐池是小水洼。", "zh")[0] == "too_short"
    numbers = CHINESE + " ".join(str(i % 10) for i in range(200))
    assert check(numbers, "zh")[0] == "alpha_ratio"
    # Character-based length: 50 CJK characters are enough, with no spaces at all.
    assert check(CHINESE[:60], "zh")[0] is None


def test_c4_line_rules_only_for_configured_sources():
    boilerplate = (
        "Please enable JavaScript to view this page.\nThis site uses cookies.\n版权所有 © 2024 海边网"
    )
    text = ENGLISH + "\n" + boilerplate
    kept = QualityFilter().check(text, "en", "crawl")
    assert kept.reason is None and kept.text == ENGLISH and kept.lines_removed == 3
    assert kept.score < QualityFilter().check(ENGLISH, "en", "crawl").score
    assert QualityFilter().check(text, "en", "pile").text == text
    # A long paragraph that mentions a privacy policy is content, not a footer.
    long_line = ENGLISH + " Read our privacy policy."
    assert QualityFilter().check(long_line, "en", "crawl").text == long_line


def test_step_counts_and_sets_quality():
    docs = [
        Document(text, "crawl", "mem", i)
        for i, text in enumerate([ENGLISH, "too short", CHINESE, ENGLISH * 2])
    ]
    step = QualityStep()
    drops = DropLog(strict=True)  # quality drops are policy, never bad input
    kept = list(step.run(docs, drops))
    assert [d.offset for d in kept] == [0, 2] and all(0 < d.quality <= 1 for d in kept)
    assert step.stats.docs_in == 4 and step.stats.docs_out == 2
    assert dict(step.stats.dropped) == dict(drops.counts) == {"too_short": 1, "dup_ngram": 1}


def test_batch_equals_single_documents():
    texts = [text for text, _ in CRAFTED.values()] + [ENGLISH, CHINESE, "", "   ", "😀 " * 60]
    quality = QualityFilter()
    batch = quality.check_batch(texts, ["en"] * len(texts), ["crawl"] * len(texts))
    single = [quality.check(text, "en", "crawl") for text in texts]
    assert [(v.reason, v.score, v.text) for v in batch] == [(v.reason, v.score, v.text) for v in single]


def reference_fractions(tokens: list[str], n: int) -> tuple[float, float]:
    """Plain-Python Gopher statistics: most frequent n-gram's characters; characters in repeated n-grams."""
    total = sum(map(len, tokens))
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    counts: dict[tuple[str, ...], int] = {}
    for gram in grams:
        counts[gram] = counts.get(gram, 0) + 1
    top = max(((c, sum(map(len, g))) for g, c in counts.items() if c >= 2), default=(0, 0))
    covered = [False] * len(tokens)
    seen: set[tuple[str, ...]] = set()
    for i, gram in enumerate(grams):
        if gram in seen:
            covered[i : i + n] = [True] * n
        seen.add(gram)
    dup = sum(len(t) for t, c in zip(tokens, covered) if c)
    return min(top[0] * top[1] / total, 1.0), dup / total


def test_vectorized_ngram_statistics_match_reference():
    rng = random.Random(1)
    vocabulary = ["a", "bb", "ccc", "dddd", "e", "ff", "ggggg"]
    documents = [
        [rng.choice(vocabulary[: rng.randint(2, 7)]) for _ in range(rng.randint(0, 60))] for _ in range(40)
    ]
    ids = {word: i for i, word in enumerate(vocabulary)}
    hashes = np.array([ids[w] * 0x9E3779B97F4A7C15 % 2**64 for d in documents for w in d], dtype=np.uint64)
    lengths = np.array([len(w) for d in documents for w in d], dtype=np.int64)
    docs = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    sizes = [1, 2, 3, 5]
    top, dup = ngram_char_fractions(hashes, lengths, docs, len(documents), sizes, sizes, -1.0)
    for d, tokens in enumerate(documents):
        for column, n in enumerate(sizes):
            if not tokens:
                continue
            expected_top, expected_dup = reference_fractions(tokens, n)
            assert top[d, column] == pytest.approx(expected_top), (d, n)
            assert dup[d, column] == pytest.approx(expected_dup), (d, n)


def test_rules_are_described_in_order():
    reasons = [rule["reason"] for rule in describe_rules()]
    assert reasons[0] == "lorem_ipsum" and reasons[-1] == "dup_ngram"
    assert set(CRAFTED) == set(reasons)


def test_quality_config_loads(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[quality]\nmin_words = 20\nc4_sources = ["crawl", "pile"]\n')
    config = load_config(
        QualityConfig, path, section="quality", overrides=["max_top_ngram_char_fraction=[0.3, 0.2, 0.1]"]
    )
    assert config.min_words == 20 and config.c4_sources == ["crawl", "pile"]
    assert config.max_top_ngram_char_fraction == [0.3, 0.2, 0.1]
    assert load_config(NormalizeConfig, values={"form": "NFKC"}).form == "NFKC"


# ---- normalization ------------------------------------------------------------------------------


def test_normalize_policy():
    assert normalize("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    assert normalize("keep\ttabs  and   runs\n    indented") == "keep\ttabs  and   runs\n    indented"
    assert normalize("ctrl\x00\x07\x1b[0m\x7f\x85 chars") == "ctrl[0m chars"
    assert normalize("\ufeffzero\u200bwidth\u2060soft\u00adhyphen") == "zerowidthsofthyphen"
    assert normalize("emoji 👩\u200d💻 and ZWNJ می\u200cخواهم") == "emoji 👩\u200d💻 and ZWNJ می\u200cخواهم"
    assert normalize("trailing   \nspaces\t\n") == "trailing\nspaces"
    assert normalize("a" + "\n" * 10 + "b") == "a\n\n\nb"
    assert normalize("  \n\n  text  \n\n") == "text"
    assert normalize("e\u0301") == "\u00e9"  # NFC composes
    full_width = "全角标点，句号。数字１２３！"
    assert normalize(full_width) == full_width  # NFC keeps full-width forms
    assert make_normalizer(NormalizeConfig(form="NFKC"))(full_width) == "全角标点,句号。数字123!"
    assert (
        make_normalizer(NormalizeConfig(max_blank_lines=-1, strip_trailing_spaces=False))("a \n\n\n\n\nb")
        == "a \n\n\n\n\nb"
    )


NASTY = st.lists(
    st.sampled_from(
        list("ab é\t\n\r ")
        + [
            "\x00",
            "\x85",
            "\u200b",
            "\ufeff",
            "\u2028",
            "\u00ad",
            "e\u0301",
            "，",
            "１",
            "中",
            "\u3000",
            "\x0b",
            "\u0301",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(NASTY)
def test_normalize_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once
    nfkc = make_normalizer(NormalizeConfig(form="NFKC"))
    assert nfkc(nfkc(text)) == nfkc(text)
    assert "\r" not in once and "\x00" not in once and "\u200b" not in once


def test_normalize_step_drops_what_becomes_empty():
    docs = [Document("\u200b\ufeff \n", "pile", "mem", 0), Document("text  \n", "pile", "mem", 9)]
    drops = DropLog()
    kept = list(NormalizeStep().run(docs, drops))
    assert [d.text for d in kept] == ["text"] and drops.counts == {"empty_text": 1}
    with pytest.raises(BadRecordError, match="mem at offset 0: empty_text"):
        list(NormalizeStep().run([Document("\u200b", "pile", "mem", 0)], DropLog(strict=True)))
