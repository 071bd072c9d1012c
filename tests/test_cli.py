"""The command line explains itself: every subcommand has --help, --json, and errors exit nonzero."""

from __future__ import annotations

import argparse

import numpy as np
import orjson
import pytest

from cli import build_parser, main


def _leaf_commands(parser: argparse.ArgumentParser, prefix=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield prefix + (name,), sub
            yield from _leaf_commands(sub, prefix + (name,))


def test_top_level_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "ingest", "tokenizer", "verify", "shards", "dedup"):
        assert command in out


def test_every_subcommand_has_help_and_a_description(capsys):
    commands = list(_leaf_commands(build_parser()))
    assert len(commands) >= 8
    for path, sub in commands:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        out = capsys.readouterr().out
        assert "usage: glm-corpus " + " ".join(path) in out
        assert sub.description, f"`glm-corpus {' '.join(path)}` has no description"


def test_every_leaf_subcommand_accepts_json():
    for path, sub in _leaf_commands(build_parser()):
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            continue
        assert any("--json" in a.option_strings for a in sub._actions), path


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: glm-corpus" in capsys.readouterr().out


def test_errors_are_messages_not_tracebacks(capsys, tmp_path):
    assert main(["verify", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "glm-corpus verify: error:" in err and "Traceback" not in err


def test_tokenizer_train_writes_a_model_that_round_trips(capsys, tmp_path):
    from pipeline.tokenizer import GLMTokenizer
    from tests.tokenizer_fixtures import chinese_text, english_text

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(english_text(40_000) + "\n" + chinese_text(8_000), encoding="utf-8")
    model = tmp_path / "tok" / "ice_text.model"
    code = main(["tokenizer", "train", "--input", str(corpus), "--out", str(model), "--vocab-size", "400", "--json"])
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["model"] == str(model) and model.is_file()
    assert summary["vocab_size"] == 400 and 300 <= summary["pieces"] <= 400
    assert summary["input_bytes"] == corpus.stat().st_size

    tokenizer = GLMTokenizer(model)
    assert tokenizer.text_vocab_size == summary["pieces"]
    text = "The committee met again.\n委员会下周将再次开会。\n\tindented    by four"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(20_000 <= i < 20_000 + summary["pieces"] or i in tokenizer.special_ids.values() for i in ids)
    assert tokenizer.special_ids["<n>"] in ids and tokenizer.special_ids["<t>"] in ids


def _rendered_scalars(text: str) -> dict[str, str]:
    """`key: value` lines of `render_summary` output, nested keys joined with dots."""
    values, parents = {}, []
    for line in text.splitlines():
        if line.lstrip().startswith("- "):  # list items (columns, prefixes)
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        key, _, value = line.strip().partition(":")
        del parents[depth:]
        if value.strip():
            values[".".join([*parents, key])] = value.strip()
        else:
            parents.append(key)
    return values


def test_shards_info_text_and_json_describe_the_shard_written(capsys, tmp_path):
    from shards.token_shards import TokenShardWriter

    documents = [[20_005, 20_006, 150_003], [20_007, 150_003], [20_010] * 6 + [150_003]]
    sources = ["pile", "pile", "wudao"]
    prefix = tmp_path / "tokens" / "mixed" / "mixed-00000"
    with TokenShardWriter(prefix) as writer:
        for i, (ids, source) in enumerate(zip(documents, sources)):
            writer.add(np.asarray(ids, dtype=np.int32), doc_id=f"{source}:f:{i}", source=source,
                       input_file="f.jsonl", offset=i, lang="en")

    assert main(["shards", "info", str(prefix), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["shards"] == 1 and summary["prefixes"] == [str(prefix)]
    assert summary["documents"] == 3 and summary["tokens"] == 12
    assert summary["tokens_per_document"] == {"min": 2, "mean": 4.0, "max": 7}
    assert summary["documents_per_source"] == {"pile": 2, "wudao": 1}
    assert {"doc_id", "source", "input_file", "offset", "lang"} <= set(summary["provenance_columns"])

    assert main(["shards", "info", str(tmp_path / "tokens")]) == 0  # the directory: same single shard
    text = _rendered_scalars(capsys.readouterr().out)
    assert text["shards"] == "1" and text["documents"] == "3" and text["tokens"] == "12"
    assert {k: float(text[f"tokens_per_document.{k}"]) for k in ("min", "mean", "max")} == \
        summary["tokens_per_document"]
    assert text["documents_per_source.pile"] == "2" and text["documents_per_source.wudao"] == "1"
