"""`gpt25 eval` (validation loss / perplexity / bits per byte, HellaSwag, CORE) and `gpt25 generate` (sampling).
Manual: docs/evaluation.md, docs/sampling.md."""

from __future__ import annotations

import argparse

from gpt25.cli.flags import add_command, add_model_arguments, add_sampling_arguments, model_inputs, one_line_warnings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "eval", run_eval,
        help="validation loss, perplexity, bits per byte, HellaSwag and CORE of a checkpoint",
        description="Score a checkpoint on the whole validation split (fixed non-overlapping windows), HellaSwag "
        "and/or CORE (DCLM's 22 in-context tasks, as nanochat scores them); print a table and write eval.json "
        "beside the checkpoint (or --out).",
    )
    add_model_arguments(parser, dtype_help="compute dtype (autocast)")
    parser.add_argument("--data", default=None, help="prepared data folder; its val split gives loss/perplexity/bpb")
    parser.add_argument(
        "--hellaswag", default=None, metavar="FILE|download",
        help="HellaSwag validation jsonl (ctx, endings, label per line), or 'download' to fetch it",
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N HellaSwag examples")
    parser.add_argument("--max_tokens", type=int, default=None, help="score only the first N validation tokens")
    parser.add_argument(
        "--core", action="store_true",
        help="score CORE; the eval bundle is downloaded once into ~/.cache/gpt25 ($GPT25_CACHE) unless --core_bundle",
    )
    parser.add_argument("--core_bundle", default=None, metavar="DIR",
                        help="an unpacked eval bundle (core.yaml, eval_meta_data.csv, eval_data/), for offline use")
    parser.add_argument("--core_limit", type=int, default=None,
                        help="score N examples per CORE task (nanochat's seeded shuffle, then the first N)")
    parser.add_argument("--out", default=None, help="JSON file to write (default: eval.json beside the checkpoint)")
    parser.add_argument(
        "--batch_size", type=int, default=8,
        help="context windows per forward pass (default 8); HellaSwag packs 4x as many of its short sequences",
    )
    register_generate(subparsers)


def run_eval(args: argparse.Namespace) -> None:
    import torch

    from gpt25.eval.run import format_table, run_evaluation

    checkpoint, tokenizer, device, dtype = model_inputs(args)
    results = run_evaluation(checkpoint, tokenizer, data_dir=args.data, hellaswag=args.hellaswag, limit=args.limit,
                             core=args.core, core_bundle=args.core_bundle, core_limit=args.core_limit,
                             max_tokens=args.max_tokens, out=args.out, batch_size=args.batch_size, device=device,
                             autocast_dtype=None if dtype == torch.float32 else dtype)
    print(format_table(results))


def register_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "generate", run_generate,
        help="sample text from a checkpoint",
        description="Continue a prompt with temperature / top-k / nucleus sampling and a KV cache; stops at "
        "end-of-text or --max_new_tokens. An empty prompt starts from end-of-text; a prompt too long for the "
        "context is cut from the left with a warning.",
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", default="", help="text to continue (default: empty, start from end-of-text)")
    add_sampling_arguments(parser)
    parser.add_argument("--num_samples", type=int, default=1, help="samples, generated together as one batch")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are produced (one sample)")
    parser.add_argument("--no_cache", action="store_true", help="recompute the whole prefix each step (slow)")


def run_generate(args: argparse.Namespace) -> None:
    from gpt25.checkpoint import load_for_inference
    from gpt25.engine import validate_sampling
    from gpt25.sample import generate

    validate_sampling(args.temperature, args.top_p, args.top_k)
    if args.stream and args.num_samples != 1:
        raise ValueError("--stream prints one sample as it is produced; drop --stream or use --num_samples 1")
    model, tokenizer, _ = load_for_inference(*model_inputs(args))
    # --stream writes the prompt together with the first text, so that the settings `generate` checks first
    # (e.g. max_new_tokens against the context) fail on a clean line.
    pending = [args.prompt]

    def print_piece(_sample_index: int, text: str) -> None:
        print("".join(pending) + text, end="", flush=True)
        pending.clear()

    with one_line_warnings("generate"):
        samples = generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                           num_samples=args.num_samples, seed=args.seed, use_cache=not args.no_cache,
                           static_decode=False if args.no_cuda_graph else None,
                           on_token=print_piece if args.stream else None)
    if args.stream:
        print_piece(0, "\n")
    elif len(samples) == 1:
        print(args.prompt + samples[0])
    else:
        for index, sample in enumerate(samples, 1):
            print(f"--- sample {index} ---\n{args.prompt}{sample}")

