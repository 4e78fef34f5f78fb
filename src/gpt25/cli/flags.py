"""One flag style for every command: `--vocab_size`, as the recipe's TrainConfig fields are spelled.

Each multi-word flag also accepts its dashed spelling (`--vocab-size`), so commands written
before the style was settled keep working; help lists only the first spelling of each flag.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any


def dashed_aliases(option_strings: list[str]) -> list[str]:
    """`--a-b` for every `--a_b` among the option strings that is not already there."""
    dashed = [f"--{name[2:].replace('_', '-')}" for name in option_strings if name.startswith("--") and "_" in name]
    return [name for name in dashed if name not in option_strings]


class FlagHelpFormatter(argparse.HelpFormatter):
    """Help shows a flag's short form and its first long spelling, not the aliases after it."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        long_names = [name for name in action.option_strings if name.startswith("--")]
        if len(long_names) < 2:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = [name for name in action.option_strings if not name.startswith("--")] + long_names[:1]
        return super()._format_action_invocation(shown)


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, its sub-commands) that accepts `--a-b` for `--a_b`."""

    def __init__(self, *args: Any, formatter_class: type = FlagHelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def _add_action(self, action: argparse.Action) -> argparse.Action:
        # Here rather than in add_argument: flags added through a mutually exclusive group arrive here too.
        action.option_strings = action.option_strings + dashed_aliases(action.option_strings)
        return super()._add_action(action)

