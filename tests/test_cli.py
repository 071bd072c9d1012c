"""The command line explains itself: every subcommand has --help, --json, and errors exit nonzero."""

from __future__ import annotations

import argparse

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
