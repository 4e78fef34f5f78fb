"""lm-evaluation-harness adapter: importing it registers the model type "gpt25" (`GPT25LM`); run as a
module it is lm-eval's command line with `--model gpt25` implied.
Manual: docs/evaluation.md (lm-evaluation-harness).
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from gpt25.checkpoint import load_for_inference
from gpt25.device import resolve_device
from gpt25.engine import generate_tokens
from gpt25.eval.scoring import score_rows
from gpt25.tokenizer import Tokenizer

DEFAULT_BATCH_SIZE = 16


class GPT25LM(TemplateLM):
    """A gpt25 TransformerLM behind lm-eval's LM interface (loglikelihood, rolling, generate_until).
    As lm-eval's Hugging Face backend, TemplateLM encodes context and continuation together and splits them."""

    def __init__(self, checkpoint: str | None = None, tokenizer: str | Tokenizer | None = None,
                 model: torch.nn.Module | None = None, device: str | None = None,
                 batch_size: int | str | None = DEFAULT_BATCH_SIZE, dtype: str | None = None, max_gen_toks: int = 256,
                 cuda_graph: bool = True, **_unused_lm_eval_options) -> None:
        super().__init__()
        if tokenizer is None:
            raise ValueError("no tokenizer: give tokenizer=DIR, the folder the model was trained with "
                             "(--model_args checkpoint=RUN,tokenizer=DIR)")
        if (model is None) == (checkpoint is None):
            raise ValueError("give exactly one of checkpoint=PATH or model=TransformerLM")
        self._device = resolve_device(device)
        model, self.tokenizer, _ = load_for_inference(checkpoint if model is None else model, tokenizer, self._device,
                                                      getattr(torch, dtype) if dtype else None)
        self.model = model.eval()
        auto = batch_size is None or str(batch_size).startswith("auto")  # lm-eval passes ints, strings or "auto"
        self.batch_size = DEFAULT_BATCH_SIZE if auto else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_gen_toks = int(max_gen_toks)
        self.static_decode = None if cuda_graph else False  # None: replay a CUDA graph per step on a GPU

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    @property
    def tokenizer_name(self) -> str:
        return f"gpt25-{self.tokenizer.fingerprint()[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: (cache key, context ids, continuation ids) -> (log-likelihood, is greedy) each."""
        rows = []
        for _, context, continuation in requests:
            sequence = (context + continuation)[-(self.max_length + 1) :]
            rows.append((sequence, min(len(continuation), len(sequence) - 1)))
        sums, greedy = score_rows(self.model, rows, batch_size=self.batch_size, device=self._device,
                                  desc="gpt25 loglikelihood", show_progress=not disable_tqdm)
        results = list(zip(sums, greedy, strict=True))
        for (key, _, _), result in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, in disjoint context-sized windows (lm-eval's recipe)."""
        totals = []
        for (text,) in tqdm([request.args for request in requests], desc="gpt25 rolling", disable=disable_tqdm):
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scored = self._loglikelihood_tokens([(None, context, target) for context, target in windows], True)
            total = sum(log_likelihood for log_likelihood, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuation of each context, cut at the first stop string."""
        outputs = []
        for context, gen_kwargs in tqdm([r.args for r in requests], desc="gpt25 generate", disable=disable_tqdm):
            text = self.generate_one(context, dict(gen_kwargs))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    def generate_one(self, context: str, gen_kwargs: dict) -> str:
        options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        stop_strings = handle_stop_sequences(options.pop("until", None), eos=self.tok_decode([self.eot_token_id]))
        max_new_tokens = min(int(options.pop("max_gen_toks")), self.max_length - 1)
        temperature = float(options.get("temperature", 0.0)) if options.get("do_sample") else 0.0
        top_p = float(options.get("top_p") or 1.0)
        top_k = options.get("top_k")  # the settings are checked by `decode` before its first step
        context_ids = (self.tok_encode(context) or [self.eot_token_id])[-(self.max_length - max_new_tokens) :]
        new_ids: list[int] = []

        def collect(next_token: torch.Tensor) -> bool:
            new_ids.append(int(next_token[0]))
            return any(stop in self.tok_decode(new_ids) for stop in stop_strings)

        generate_tokens(self.model, torch.tensor([context_ids], dtype=torch.long, device=self._device),
                        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_id=self.eot_token_id, vocab_size=self.tokenizer.vocab_size,
                        static_decode=self.static_decode, on_step=collect)
        text = self.tok_decode(new_ids)
        cut = min((text.index(stop) for stop in stop_strings if stop in text), default=len(text))
        return text[:cut]


if __name__ != "__main__":
    # `python -m` runs this file as __main__ and imports it again under its real name (below); only
    # that importable copy registers, since lm-eval refuses a second class under the same name.
    register_model("gpt25")(GPT25LM)


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "run":
        arguments = arguments[1:]
    if "--model" not in arguments:
        arguments = ["--model", "gpt25", *arguments]
    sys.argv = ["lm-eval", "run", *arguments]
    try:
        cli_evaluate()
    except (ValueError, OSError) as error:  # bad --model_args or paths: one line, not lm-eval's traceback
        print(f"gpt25 lm_eval_adapter: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from gpt25.eval import lm_eval_adapter

    lm_eval_adapter.main()
