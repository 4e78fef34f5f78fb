"""Evaluation: validation loss / perplexity / bits per byte, HellaSwag, CORE, and an lm-evaluation-harness adapter.

    from gpt25.eval import evaluate_loss, evaluate_hellaswag, load_hellaswag

`loss` and `hellaswag` are what the trainer calls every `--eval_every` steps (and `core`, nanochat's
CORE score, every `--core_every` steps); `run` is the `gpt25 eval` command's body (eval.json +
table); `lm_eval_adapter` (imported on demand, it needs the lm-eval package) lets
lm-evaluation-harness run any of its tasks on a gpt25 checkpoint.
"""

from gpt25.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from gpt25.eval.loss import evaluate_loss

__all__ = ["evaluate_hellaswag", "evaluate_loss", "load_hellaswag"]
