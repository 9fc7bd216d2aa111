"""Recovery fine-tuning (RFT) of compressed models with LoRA, through ``peft``.

Slicing removes directions of the residual stream; a short low-rank fine-tune of the
remaining weights on ordinary text recovers part of the lost quality (the SliceGPT
paper does this with LoRA on instruction or language data).

* :mod:`.lora` -- the LoRA component: targets by role, :func:`attach_lora`, :func:`merge_lora`.
* :mod:`.recipe` -- the training recipe: :func:`train_lora`, held-out perplexity,
  :func:`finetune` (load, train, merge, record) and :class:`FinetuneResult` (save).

The merged result has exactly the input model's shapes and is saved in the normal
format (it loads with :func:`slimformer.load_model` and with ``trust_remote_code`` alone).
Note: ``slimformer.finetune`` as an attribute of the package is the *function*
:func:`finetune`; this package is ``sys.modules["slimformer.finetune"]``.
"""

# the settings and the role names are torch-free (the CLI parser uses them); re-exported here
from ..finetune_config import LINEAR_ROLES, SHORTCUT_ROLES, TARGET_ROLES, FinetuneConfig
from .lora import attach_lora, merge_lora, resolve_targets
from .recipe import FinetuneResult, _micro_step, finetune, lr_factor, train_lora  # noqa: F401 (_micro_step: tests)

__all__ = [
    "FinetuneConfig", "FinetuneResult", "LINEAR_ROLES", "SHORTCUT_ROLES", "TARGET_ROLES", "attach_lora", "finetune",
    "lr_factor", "merge_lora", "resolve_targets", "train_lora",
]
