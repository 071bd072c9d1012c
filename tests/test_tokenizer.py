"""The GLM tokenizer against DESIGN §2: icetk ids, special ids, whitespace layout, round trips, errors,
deterministic training, and (where icetk can be imported) the same ids as icetk's own tokenizer."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ConfigError, TokenizerError
from pipeline.tokenizer import GLMTokenizer, train_tokenizer
from tests.tokenizer_fixtures import english_text, train_icetk_like_model, train_tiny_model

# DESIGN §2, copied from its text (not from pipeline.special_tokens, which these numbers check).
DESIGN_SPECIAL_IDS = {
    "[MASK]": 150000,
    "[gMASK]": 150001,
    "[sMASK]": 150002,
    "<eod>": 150003,
    "[sop]": 150004,
    "[eop]": 150005,
    "ENC": 150006,
    "dBLOCK": 150007,
    "<t>": 150008,
    "</s>": 20002,
    "<pad>": 0,
    **{f"<blank_{k}>": 150009 + k - 2 for k in range(2, 81)},
}
DESIGN_VOCAB_SIZE = 150528
TEXT_OFFSET = 20000


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="module")
def tok(model_path: Path) -> GLMTokenizer:
    return GLMTokenizer(model_path)


@pytest.fixture(scope="module")
def icetk_like_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_icetk_like_model(tmp_path_factory.mktemp("icetk_like"))


# ---------------------------------------------------------------- the id layout


def test_special_ids_are_designs(tok: GLMTokenizer) -> None:
    from pipeline import special_tokens

    assert {name: tok.special_ids[name] for name in DESIGN_SPECIAL_IDS} == DESIGN_SPECIAL_IDS
    assert special_tokens.SPECIAL_IDS == DESIGN_SPECIAL_IDS
    assert tok.vocab_size == DESIGN_VOCAB_SIZE
    assert (tok.eod_id, tok.eos_id, tok.pad_id) == (150003, 20002, 0)
    assert tok.special_ids["<n>"] == tok.newline_id


def test_text_ids_are_sentencepiece_ids_plus_20000(tok: GLMTokenizer) -> None:
    sp = tok.sentencepiece
    for text in ["Hello, world.", "中华人民共和国", "mixed 中文 and English"]:
        assert tok.encode(text) == [i + TEXT_OFFSET for i in sp.encode(text)]
    assert tok.text_vocab_size == sp.get_piece_size()
    assert [tok.sentencepiece.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<n>"]
    assert tok.id_to_piece(20002) == "</s>"


def test_newline_is_the_n_piece(tok: GLMTokenizer) -> None:
    newline = tok.sentencepiece.piece_to_id("<n>") + TEXT_OFFSET
    assert tok.newline_id == newline == 20003
    assert newline in tok.encode("\n")
    ids = tok.encode("one\ntwo")
    assert ids.count(newline) == 1
    assert tok.id_to_piece(newline) == "<n>"


def test_tab_and_space_runs_are_layout_ids(tok: GLMTokenizer) -> None:
    assert 150008 in tok.encode("a\tb")
    assert 150010 in tok.encode("a   b")  # <blank_3>
    assert tok.encode("a  b").count(150009) == 1
    assert [tok.id_to_piece(i) for i in (150008, 150009, 150087)] == ["<t>", "<blank_2>", "<blank_80>"]
    # No text piece ever holds a tab or two spaces: they never reach SentencePiece.
    text_ids = [i for i in tok.encode("x\t\ty    z\t") if TEXT_OFFSET <= i < 150000]
    assert all("\t" not in tok.id_to_piece(i) and "▁▁" not in tok.id_to_piece(i) for i in text_ids)


@pytest.mark.parametrize(
    ("spaces", "blanks"),
    [(2, [2]), (79, [79]), (80, [80]), (81, [80]), (82, [80, 2]), (160, [80, 80]), (200, [80, 80, 40])],
)
def test_long_space_runs_split_into_blanks_of_80(tok: GLMTokenizer, spaces: int, blanks: list[int]) -> None:
    text = "a" + " " * spaces + "b"
    ids = tok.encode(text)
    assert [i - 150009 + 2 for i in ids if i >= 150009] == blanks
    assert tok.decode(ids) == text


def test_decode_names_and_whitespace(tok: GLMTokenizer) -> None:
    ids = [150001, 150004, 150003, 150005, 150000, 150002, 150006, 150007, 20002, 0, 5]
    assert tok.decode(ids) == "[gMASK][sop]<eod>[eop][MASK][sMASK]ENCdBLOCK</s><pad><image_5>"
    assert tok.decode([150008, 150009, 150087, tok.newline_id]) == "\t" + " " * 2 + " " * 80 + "\n"
    assert tok.decode([20000, 20001]) == "<unk><s>"
    assert tok.decode([]) == ""
    assert tok.decode(np.array(tok.encode("numpy ids"), dtype=np.int32)) == "numpy ids"


def test_decode_keeps_the_space_of_a_run_after_a_special_token(tok: GLMTokenizer) -> None:
    # Only the text's first piece loses SentencePiece's dummy-prefix space, as in one SentencePiece call.
    assert tok.decode(tok.encode("a b")) == "a b"
    assert tok.decode([150001] + tok.encode("a b")) == "[gMASK] a b"
    assert tok.decode(tok.encode("a\n b")) == "a\n b"
    assert tok.decode(tok.encode("a\t b")) == "a\t b"


# ---------------------------------------------------------------- round trips

ENGLISH_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-",
                       min_size=1, max_size=12)
CHINESE = st.text(alphabet="的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会，。、；：？！“”《》",
                  min_size=1, max_size=20)
RARE_CHINESE = st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=5)
EMOJI = st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), min_size=1, max_size=3)
SPACES = st.integers(1, 200).map(lambda k: " " * k)
LAYOUT = st.sampled_from(["\n", "\t", "\n\n", "\t\t", " \n", "\n ", "<n>", "\r\n"])
ANY_UNICODE = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8)
PIECE = st.one_of(ENGLISH_WORD, CHINESE, RARE_CHINESE, EMOJI, SPACES, LAYOUT, ANY_UNICODE)
NORMALIZED_TEXT = st.lists(PIECE, max_size=30).map("".join).map(lambda s: unicodedata.normalize("NFC", s))

ROUND_TRIP_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP_SETTINGS
@given(text=NORMALIZED_TEXT)
def test_round_trip_any_normalized_text(tok: GLMTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < DESIGN_VOCAB_SIZE for i in ids)
    batch = tok.encode_batch([text])[0]
    assert batch.dtype == np.int32 and batch.tolist() == ids


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.tuples(ENGLISH_WORD, st.integers(1, 200)), min_size=1, max_size=10))
def test_round_trip_english_with_space_runs(tok: GLMTokenizer, words: list[tuple[str, int]]) -> None:
    text = "".join(word + " " * spaces for word, spaces in words)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.tuples(st.integers(0, 3), st.one_of(CHINESE, ENGLISH_WORD)), max_size=10))
def test_round_trip_indented_lines(tok: GLMTokenizer, lines: list[tuple[int, str]]) -> None:
    text = "\n".join("\t" * depth + line for depth, line in lines)
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_real_text(tok: GLMTokenizer) -> None:
    text = english_text(20_000)
    assert tok.decode(tok.encode(text)) == text
    assert tok.lossless


def test_literal_n_piece_text_round_trips(tok: GLMTokenizer) -> None:
    # icetk would read a literal "<n>" as a newline; we escape it so the text comes back unchanged.
    for text in ["<n>", "a<n>b", "<<n>>", "<n><n>", "x\n<n>\ty", "template<n>  x"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    assert tok.newline_id not in tok.encode("a<n>b")


def test_encode_batch_equals_encode(tok: GLMTokenizer) -> None:
    texts = ["", "plain prose.", "two\nlines", "tab\there", "run    of spaces", "中文\n\n文本", "a<n>b", "😀 " * 5,
             " ", "\n", "  leading", "trailing  "]
    batch = tok.encode_batch(texts)
    assert len(batch) == len(texts)
    assert all(isinstance(ids, np.ndarray) and ids.dtype == np.int32 for ids in batch)
    assert [ids.tolist() for ids in batch] == [tok.encode(text) for text in texts]
    assert tok.encode_batch([]) == []
    assert [ids.tolist() for ids in tok.encode_batch(tuple(texts))] == [ids.tolist() for ids in batch]


def test_tokenizer_pickles(tok: GLMTokenizer) -> None:
    copy = pickle.loads(pickle.dumps(tok))
    text = "pickled\tfor  Ray workers\n中文"
    assert copy.encode(text) == tok.encode(text)
    assert copy.decode(copy.encode(text)) == text


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("value", "type_name"), [(b"bytes", "bytes"), (None, "NoneType"), (42, "int")])
def test_encode_rejects_non_str(tok: GLMTokenizer, value: object, type_name: str) -> None:
    with pytest.raises(TokenizerError, match=f"text must be str, got {type_name}"):
        tok.encode(value)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match=rf"texts\[1\] must be str, got {type_name}"):
        tok.encode_batch(["fine", value])  # type: ignore[list-item]


def test_encode_batch_rejects_a_single_str(tok: GLMTokenizer) -> None:
    with pytest.raises(TokenizerError, match="use encode"):
        tok.encode_batch("one text")  # type: ignore[arg-type]


def test_lone_surrogate_is_named_with_its_position(tok: GLMTokenizer) -> None:
    with pytest.raises(TokenizerError, match=r"lone surrogate U\+D800 at character 3"):
        tok.encode("abc\ud800def")
    with pytest.raises(TokenizerError, match=r"texts\[2\] .*lone surrogate U\+DCFF at character 0"):
        tok.encode_batch(["ok", "also\tok", "\udcff tail"])


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([5, -1], "id -1 at position 1 is not a token: ids are 0..150527"),
        ([150528], "id 150528 at position 0"),
        ([150100], "unused padding rows"),
        ([149999], r"text ids are 20000\.\.2\d+"),
    ],
)
def test_decode_rejects_invalid_ids(tok: GLMTokenizer, ids: list[int], message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        tok.decode(ids)
    with pytest.raises(TokenizerError, match="not a token"):
        tok.decode([TEXT_OFFSET + tok.text_vocab_size])
    assert tok.decode([TEXT_OFFSET + tok.text_vocab_size - 1]) is not None


def test_decode_rejects_non_integers(tok: GLMTokenizer) -> None:
    with pytest.raises(TokenizerError, match="int ids"):
        tok.decode([1.5, 2.0])
    with pytest.raises(TokenizerError, match="not str"):
        tok.decode("20001")  # type: ignore[arg-type]


def test_missing_model_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TokenizerError) as error:
        GLMTokenizer()
    message = str(error.value)
    assert ".icetk_models/ice_text.model" in message
    assert "glm-corpus tokenizer train" in message and "--tokenizer" in message
    with pytest.raises(TokenizerError, match="no tokenizer model at"):
        GLMTokenizer(tmp_path / "absent.model")


def test_icetk_cache_and_directory_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = tmp_path / ".icetk_models"
    cache.mkdir()
    shutil.copy(model_path, cache / "ice_text.model")
    assert GLMTokenizer().path == cache / "ice_text.model"
    assert GLMTokenizer(cache).encode("same") == GLMTokenizer(model_path).encode("same")


def test_not_a_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "ice_text.model"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        GLMTokenizer(bad)


# ---------------------------------------------------------------- training


def test_training_is_deterministic(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(english_text(40_000) + "\n\tindented\tline  with   runs\n中文句子。\n", encoding="utf-8")
    first = train_tokenizer([corpus], tmp_path / "a.model", vocab_size=400)
    second = train_tokenizer([corpus], tmp_path / "b.model", vocab_size=400)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert first["sha256"] == second["sha256"]
    assert first["pieces"] == 400 and first["input_bytes"] == corpus.stat().st_size
    assert {"model", "vocab_size", "pieces", "seconds", "input_bytes"} <= set(first)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
    bpe = train_tokenizer([corpus], tmp_path / "bpe.model", vocab_size=400, model_type="bpe")
    text = "BPE\tmodels  work\ntoo 😀"
    assert GLMTokenizer(bpe["model"]).decode(GLMTokenizer(bpe["model"]).encode(text)) == text


def test_training_rejects_bad_arguments_and_input(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="vocab-size"):
        train_tokenizer([corpus], tmp_path / "m.model", vocab_size=100)
    with pytest.raises(ConfigError, match="model type"):
        train_tokenizer([corpus], tmp_path / "m.model", vocab_size=400, model_type="word")
    with pytest.raises(ConfigError, match="not a file"):
        train_tokenizer([tmp_path / "absent.txt"], tmp_path / "m.model", vocab_size=400)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(TokenizerError, match=r"bad.txt at byte 14: invalid UTF-8"):
        train_tokenizer([bad], tmp_path / "m.model", vocab_size=400)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="no training text"):
        train_tokenizer([empty], tmp_path / "m.model", vocab_size=400)
    assert not (tmp_path / "m.model").exists()


# ---------------------------------------------------------------- a model shaped like GLM-130B's


def test_icetk_like_model_keeps_our_layout(icetk_like_path: Path) -> None:
    tok = GLMTokenizer(icetk_like_path)
    assert not tok.lossless  # NFKC, collapsed whitespace, no byte fallback
    ids = tok.encode("indented\n\tcode  with   runs")
    assert 150008 in ids and 150009 in ids and 150010 in ids and tok.newline_id in ids
    text = "The quick brown fox.\nNew line\twith tab and  two spaces."
    assert tok.decode(tok.encode(text)) == text
    assert TEXT_OFFSET in tok.encode("unseen \U0001F9FF")  # <unk>: a documented caveat of real models
    # NFKC turns fullwidth ＜ｎ＞ into <n>: the separator count no longer matches and the fallback runs.
    ids = tok.encode("a\tb＜ｎ＞c")
    assert ids.count(150008) == 1 and tok.newline_id in ids
    assert tok.decode(ids) == "a\tb\nc"


def test_models_without_the_icetk_layout_are_refused(tmp_path: Path) -> None:
    no_newline = train_icetk_like_model(tmp_path / "plain", vocab_size=600, newline=False)
    with pytest.raises(TokenizerError, match="no <n> piece"):
        GLMTokenizer(no_newline)


# ---------------------------------------------------------------- icetk itself

ICETK_SCRIPT = r"""
import importlib.util, json, sys, types
if importlib.util.find_spec("torchvision") is None:
    # icetk imports torchvision at module level for its image tokenizer only; the text path never uses it.
    tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                "torchvision.transforms.functional"))
    fn.pil_to_tensor, tv.transforms, tr.functional = None, tr, fn
    sys.modules.update({m.__name__: m for m in (tv, tr, fn)})
from icetk.ice_tokenizer import IceTokenizer
ice = IceTokenizer(path=sys.argv[1], device="cpu")
texts = json.loads(sys.stdin.read())
ids = [ice.encode(t, ignore_linebreak=False) for t in texts]
print(json.dumps({"ids": ids, "decoded": [ice.decode(i) for i in ids], "text_tokens": ice.num_text_tokens,
                  "newline": ice["<n>"]}))
"""

ICETK_TEXTS = [
    "Hello, world. This is GLM-130B's tokenizer.",
    "中华人民共和国成立于1949年。",
    "Mixed 中文 and English, with numbers 3.14159.",
    "line one\nline two\n\nparagraph",
    "\nstarts with a newline",
    "emoji 😀 and café",
    "",
]


@pytest.mark.parametrize("which", ["ours", "icetk_like", "real"])
def test_same_ids_as_icetk(which: str, model_path: Path, icetk_like_path: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("icetk") is None:
        pytest.skip("icetk is not installed: see docs/TOKENIZER.md (python -m venv /tmp/icetk-venv; "
                    "/tmp/icetk-venv/bin/pip install --no-deps icetk; PYTHONPATH=its site-packages)")
    if which == "real":
        real = os.environ.get("GLM_CORPUS_REAL_ICE_TEXT")
        if not real or not Path(real).is_file():
            pytest.skip("set GLM_CORPUS_REAL_ICE_TEXT to GLM-130B's ice_text.model to compare on it")
        path = Path(real)
        if path.name != "ice_text.model":  # icetk looks for DIR/ice_text.model (and downloads it otherwise)
            path = Path(shutil.copy(path, tmp_path / "ice_text.model"))
    else:
        path = model_path if which == "ours" else icetk_like_path
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    result = subprocess.run([sys.executable, "-c", ICETK_SCRIPT, str(path.parent)], input=json.dumps(ICETK_TEXTS),
                            capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0 and ("ImportError" in result.stderr or "ModuleNotFoundError" in result.stderr):
        pytest.skip(f"icetk cannot be imported here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    tok = GLMTokenizer(path)
    assert theirs["text_tokens"] == tok.text_vocab_size
    assert theirs["newline"] == tok.newline_id
    assert theirs["ids"] == [tok.encode(text) for text in ICETK_TEXTS]
    if which == "ours":
        assert theirs["decoded"] == [tok.decode(tok.encode(text)) for text in ICETK_TEXTS] == ICETK_TEXTS
