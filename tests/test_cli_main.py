"""gpt25.cli.main: how a command's exceptions reach the terminal."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

import pytest

from gpt25 import cli

FLOODING_COMMAND = """
import argparse
from gpt25 import cli

def flood(args):
    for _ in range(100_000):
        print("x" * 100)

def build_parser():
    parser = argparse.ArgumentParser(prog="gpt25")
    parser.add_subparsers(dest="command", required=True).add_parser("flood").set_defaults(handler=flood)
    return parser

cli.build_parser = build_parser
cli.main(["flood"])
"""


def parser_with(handler: Callable) -> Callable[[], argparse.ArgumentParser]:
    """A build_parser whose only command, `fake`, runs `handler`."""
    def build_parser() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="gpt25")
        parser.add_subparsers(dest="command", required=True).add_parser("fake").set_defaults(handler=handler)
        return parser
    return build_parser


@pytest.mark.parametrize("error", [
    IsADirectoryError(21, "Is a directory", "out"), NotADirectoryError(20, "Not a directory", "afile/sub"),
    ValueError("--top_p must be in (0, 1]"), FileExistsError(17, "File exists", "tok"),
])
def test_user_errors_are_one_line_with_status_2(monkeypatch, capsys, error: Exception) -> None:
    def fail(args) -> None:
        raise error

    monkeypatch.setattr(cli, "build_parser", parser_with(fail))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fake"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"gpt25 fake: error: {error}\n"


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    """`gpt25 ... | head`: no traceback, no "Broken pipe" error, the SIGPIPE status."""
    process = subprocess.Popen([sys.executable, "-c", FLOODING_COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(10) == b"x" * 10
    process.stdout.close()
    assert process.wait(timeout=60) == 141
    assert process.stderr.read() == b""
