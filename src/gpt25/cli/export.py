"""`gpt25 export hf|hub-upload|hub-download`: to Hugging Face `transformers` folders and the Hub.
Manual: docs/export.md."""

from __future__ import annotations

import argparse
import sys

from gpt25.cli.flags import add_command, add_model_arguments, model_inputs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export to Hugging Face transformers and the Hub",
        description="Convert gpt25 checkpoints to transformers folders (LlamaForCausalLM for --arch gpt25, "
        "GPT2LMHeadModel for --arch gpt2; `gpt25 checkpoint import` reads them back); move them to and from the Hub.",
    )
    commands = parser.add_subparsers(dest="export_command", metavar="SUBCOMMAND", required=True)

    hf = add_command(commands, "hf", run_export_hf, help="write a transformers Llama or GPT-2 folder from a checkpoint",
                     description="Write config.json, model.safetensors and tokenizer.json to --out.")
    add_model_arguments(hf, device=False, dtype_help="weight dtype on disk")
    hf.add_argument("--out", required=True, help="output folder")
    hf.add_argument("--force", action="store_true", help="replace --out if it exists")

    upload = add_command(commands, "hub-upload", run_hub_upload, help="upload an exported folder to the Hugging Face Hub",
                         description="Create the repo if needed and upload the folder (needs a login token).")
    upload.add_argument("--dir", required=True, help="folder written by `gpt25 export hf`")
    upload.add_argument("--repo", required=True, help="Hub repo id, e.g. your-name/gpt25-124m")
    upload.add_argument("--private", action="store_true", help="create the repo as private")

    download = add_command(commands, "hub-download", run_hub_download, help="download a model repo from the Hub",
                           description="Download a snapshot of a Hub model repo into --out: an alias of "
                           "`gpt25 data download --repo_type model`.")
    download.add_argument("--repo", required=True, help="Hub repo id")
    download.add_argument("--out", required=True, help="local folder")


def run_export_hf(args: argparse.Namespace) -> None:
    from gpt25.interop import export_hf

    checkpoint, tokenizer, _, dtype = model_inputs(args, tokenizer_required=False)
    if tokenizer is None:
        print("gpt25 export: note: the run has no tokenizer and no --tokenizer was given, writing weights and "
              "config only", file=sys.stderr)
    out = export_hf(checkpoint, tokenizer, args.out, dtype=dtype, overwrite=args.force)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")


def run_hub_upload(args: argparse.Namespace) -> None:
    from gpt25.interop import upload_to_hub

    print(f"uploaded to {upload_to_hub(args.dir, args.repo, private=args.private)}")


def run_hub_download(args: argparse.Namespace) -> None:
    from gpt25.data.sources import download_repo

    print(f"downloaded to {download_repo(args.repo, 'model', args.out)}")
