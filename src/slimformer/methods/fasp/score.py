"""FASP's structure score (defined in :mod:`slimformer.methods._shared.wanda`, shared with Wanda-SP)."""

from .._shared.wanda import WandaScorer, wanda_column_scores

__all__ = ["WandaScorer", "wanda_column_scores"]
