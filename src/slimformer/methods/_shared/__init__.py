"""Machinery several methods share (no method folder imports another method folder).

* :mod:`.pruning_config` -- :class:`PruningConfig`, the knobs of every structured pruning
  method (FASP, the baselines, PruneNet); torch-free.
* :mod:`.pruning` -- the structured-pruning pipeline: plan kept counts (:func:`plan_counts`),
  score, restore, rewrite layer by layer (:func:`prune_structured`), and :class:`PrunePlan`.
* :mod:`.wanda` -- the Wanda-style structure score (FASP, Wanda-SP).
* :mod:`.widths` -- :class:`ResidualWidthsConfig`, the width/schedule settings of the
  residual-slicing methods (SliceGPT, DOTResize); torch-free.
* :mod:`.residual` -- the residual-slicing pipeline (:func:`slice_residual_stream`):
  plan widths, fuse norms, rotate and slice with a method's basis chooser.
* :mod:`.selection` -- held-out calibration windows and their score (:func:`split_calibration`,
  :func:`heldout_nll`), and :func:`become` (a model takes another's modules): ``auto`` and
  ``composite`` choose between candidates with them.

Nothing is imported here: the torch-free registry imports only the config modules.
"""
