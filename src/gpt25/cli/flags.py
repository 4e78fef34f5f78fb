"""What every command shares: `add_command`, the inference preamble (`add_model_arguments` / `model_inputs`),
the sampling flags, the flag style (`FlagParser`) and one-line warnings. Manual: docs/sampling.md (Options)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def add_command(subparsers: argparse._SubParsersAction, name: str, handler: Callable[[argparse.Namespace], int | None],
                help: str, description: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(handler=handler)
    return parser


@contextlib.contextmanager
def one_line_warnings(command: str, every_time: bool = False) -> Iterator[None]:
    """Show warnings as `gpt25 COMMAND: warning: ...` on stderr; with `every_time`, each time one is raised."""
    with warnings.catch_warnings():
        # Not for chat: its many replies would repeat one that every reply raises (a failed CUDA-graph capture).
        if every_time:
            warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_: print(f"gpt25 {command}: warning: {message}", file=sys.stderr,
                                                         flush=True)
        yield


def add_model_arguments(parser: argparse.ArgumentParser, device: bool = True,
                        dtype_help: str = "weights and KV cache dtype") -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="run dir (its newest checkpoint), step dir or .safetensors file")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder the model was trained with "
                        "(default: the run's tokenizer/ or the one its training used)")
    if device:
        parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    default = "bfloat16 on CUDA, float32 on CPU" if device else "float32"  # without --device: the CPU
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help=f"{dtype_help} (default: {default})")


def model_inputs(args: argparse.Namespace, tokenizer_required: bool = True) -> tuple[str, str | None, torch.device,
                                                                                     torch.dtype]:
    """`add_model_arguments`' flags, checked; without --tokenizer, the run's (or None if not `tokenizer_required`)."""
    import torch

    from gpt25.checkpoint import find_tokenizer_dir
    from gpt25.device import resolve_device

    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} not found; pass a run dir, a step dir or a "
                                ".safetensors file")
    tokenizer = args.tokenizer
    if tokenizer is None:
        try:
            tokenizer = str(find_tokenizer_dir(args.checkpoint))
        except FileNotFoundError:
            if tokenizer_required:
                raise
    elif not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer folder {tokenizer} not found; pass the model's tokenizer folder")
    device = resolve_device(getattr(args, "device", "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    return args.checkpoint, tokenizer, device, dtype


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int | None = 50,
                           max_new_tokens_help: str = "per sample (default 50)") -> None:
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens,
                        help=f"tokens to generate {max_new_tokens_help}")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling mass in (0, 1] (default 0.9)")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the K most likely tokens only")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    parser.add_argument("--no_cuda_graph", action="store_true",
                        help="on a GPU, run each decoding step eagerly instead of replaying a captured CUDA graph")


class FlagHelpFormatter(argparse.HelpFormatter):
    """Help shows a flag's short form and its first long spelling, not the aliases after it."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        long_names = [name for name in action.option_strings if name.startswith("--")]
        shown = copy.copy(action)
        shown.option_strings = [name for name in action.option_strings if not name.startswith("--")] + long_names[:1]
        return super()._format_action_invocation(shown)


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, its sub-commands) that accepts `--a-b` for `--a_b`."""

    def __init__(self, *args: Any, formatter_class: type = FlagHelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def _add_action(self, action: argparse.Action) -> argparse.Action:
        # Here rather than in add_argument: flags added through a mutually exclusive group arrive here too.
        names = action.option_strings  # spelled as TrainConfig's fields; dashed aliases keep older commands working
        dashed = [f"--{name[2:].replace('_', '-')}" for name in names if name.startswith("--") and "_" in name]
        action.option_strings = names + [name for name in dashed if name not in names]
        return super()._add_action(action)

