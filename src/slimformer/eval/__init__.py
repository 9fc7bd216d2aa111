"""Evaluation of (compressed) models: perplexity, zero-shot tasks (lm-eval), speed, reports."""

from .perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
# zero_shot (slimformer.eval.zeroshot), compare_speed (slimformer.eval.speed) and
# render_report (slimformer.eval.report) import lm-eval / matplotlib lazily on use.
