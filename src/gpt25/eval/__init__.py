"""Evaluation: validation loss / perplexity / bits per byte, HellaSwag, CORE, and an lm-evaluation-harness adapter
(`lm_eval_adapter`, not imported here: it needs the lm-eval package). Manual: docs/evaluation.md.
"""

from gpt25.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from gpt25.eval.loss import evaluate_loss

__all__ = ["evaluate_hellaswag", "evaluate_loss", "load_hellaswag"]
