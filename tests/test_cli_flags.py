"""One flag style on every command: underscores in help, the dashed spelling accepted as an alias."""

from __future__ import annotations

import argparse
import re

import pytest

from gpt25.cli import build_parser
from gpt25.train.config import resolve_config


def all_parsers(parser: argparse.ArgumentParser, name: str = "gpt25") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name, sub-commands included."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                found |= all_parsers(subparser, f"{name} {command}")
    return found


COMMANDS = all_parsers(build_parser())


@pytest.mark.parametrize(("argv", "name", "value"), [
    (["tokenizer", "train", "--input", "a.txt", "--out", "tok", "--vocab_size", "300"], "vocab_size", 300),
    (["tokenizer", "train", "--input", "a.txt", "--out", "tok", "--vocab_size", "300", "--special_token", "<s>"],
     "special_token", ["<s>"]),
    (["data", "prepare", "--source", "a.txt", "--tokenizer", "tok", "--out", "d", "--val_fraction", "0.1"],
     "val_fraction", 0.1),
    (["data", "prepare", "--source", "a.txt", "--tokenizer", "tok", "--out", "d", "--val_docs", "7"], "val_docs", 7),
    (["data", "corpus", "--out", "c.txt", "--doc_split", "file"], "doc_split", "file"),
    (["data", "download", "--repo_type", "model"], "repo_type", "model"),
    (["demo", "--vocab_size", "512"], "vocab_size", 512),
    (["eval", "--checkpoint", "run", "--tokenizer", "tok", "--max_tokens", "64"], "max_tokens", 64),
    (["generate", "--checkpoint", "run", "--tokenizer", "tok", "--no_cache"], "no_cache", True),
    (["train", "--batch_size", "3"], "batch_size", 3),
])
def test_underscore_and_dashed_spellings_parse_alike(argv: list[str], name: str, value: object) -> None:
    dashed = [re.sub(r"^--(\w+)$", lambda match: "--" + match.group(1).replace("_", "-"), item) for item in argv]
    assert dashed != argv
    assert getattr(build_parser().parse_args(argv), name) == value
    assert getattr(build_parser().parse_args(dashed), name) == value


def test_every_multi_word_flag_takes_both_spellings() -> None:
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and ("_" in flag or "-" in flag[2:]):
                    underscored = "--" + flag[2:].replace("-", "_")
                    assert {underscored, "--" + flag[2:].replace("_", "-")} <= set(action.option_strings), (command, flag)


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "gpt25"])
def test_help_shows_only_the_underscore_spelling(command: str) -> None:
    text = COMMANDS[command].format_help()
    assert not re.findall(r"--[a-z]+-[a-z]", text), command


@pytest.mark.parametrize("command", ["gpt25 train", "gpt25 sft"])
def test_train_help_shows_rope_theta_not_its_alias_and_one_compile_flag(command: str) -> None:
    text = COMMANDS[command].format_help()
    assert ("--rope_theta ROPE_THETA" in text) == (command == "gpt25 train") and "--theta" not in text
    assert "--no_compile" not in text and "--compile [auto|on|off]" in text


def test_the_old_theta_flag_is_an_alias() -> None:
    for flag in ("--theta", "--rope_theta", "--rope-theta"):
        assert resolve_config(build_parser().parse_args(["train", flag, "500"])).rope_theta == 500.0
