"""CLI commands for export (filled in by its owner)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `gpt25` parser."""
