"""The LoRA component of a recovery fine-tune: choose targets by role, attach peft adapters, merge them.

Targets are named by *role* (``q k v o gate up down`` and the residual shortcut maps
``attn_shortcut mlp_shortcut``) or by Hugging Face leaf name, and resolved through the
architecture adapter. :func:`merge_lora` folds ``W <- W + (alpha / r) B A`` into the
weights, so the merged model has exactly the input model's shapes.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter, get_module
from ..finetune_config import LINEAR_ROLES, SHORTCUT_ROLES, TARGET_ROLES, FinetuneConfig
from ..runtime.modeling_slimformer import (GatherInLinear, HeadPadOutLinear, HeadScatterOutLinear,
                                           HeadSliceInLinear, ScatterOutLinear)


# ----------------------------------------------------------------------------- targets


def _role_paths(adapter: ArchAdapter) -> dict[str, str]:
    """Role -> block-level module path for the roles this family has."""
    paths = {role: getattr(adapter, role) for role in LINEAR_ROLES if getattr(adapter, role) is not None}
    paths.update({role: role for role in SHORTCUT_ROLES})
    return paths


def _aliases(adapter: ArchAdapter) -> dict[str, str]:
    """Accepted target names -> role: roles themselves and the Hugging Face leaf names."""
    names = {role: role for role in TARGET_ROLES}
    for role, path in _role_paths(adapter).items():
        names.setdefault(path.rsplit(".", 1)[-1], role)
    return names


logger = logging.getLogger("slimformer.finetune.lora")

#: linears whose forward pads / slices / scatters pruned head dims: their weight is not the map they
#: compute, so a peft LoRA layer around one adds an update of the wrong shape (they are left frozen)
HEAD_WRAPPERS = (HeadPadOutLinear, HeadSliceInLinear, HeadScatterOutLinear)


def resolve_targets(model: nn.Module, targets: tuple[str, ...] | None) -> dict[str, list[str]]:
    """Full module names of the LoRA targets, per role.

    Args:
        model: a (compressed) causal LM of a supported family.
        targets: role names or Hugging Face leaf names; ``None`` = all linear roles.

    Returns:
        ``{role: [model-level module name, ...]}`` for every requested role.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or a role that
            matches no module of this model (e.g. ``mlp_shortcut`` on an unrotated model).

    Head-reshaping linears (value channels or q/k dims pruned per head) are left out with a
    warning; a role made only of them is dropped from the default targets, and an explicitly
    requested one is a ValueError.
    """
    adapter = get_adapter(model)
    aliases = _aliases(adapter)
    paths = _role_paths(adapter)
    wanted = [r for r in LINEAR_ROLES if r in paths] if targets is None else list(targets)
    unknown = [t for t in wanted if t not in aliases]
    if unknown:
        raise ValueError(
            f"unknown LoRA target(s) {', '.join(unknown)} for a {adapter.name} model; valid targets: "
            f"{', '.join(r for r in TARGET_ROLES if r in paths)} "
            f"(or {', '.join(a for a in aliases if a not in TARGET_ROLES)})"
        )
    resolved: dict[str, list[str]] = {}
    reshaped: list[str] = []
    for role in dict.fromkeys(aliases[t] for t in wanted):
        if role not in paths:
            raise ValueError(f"LoRA target {role} does not exist in a {adapter.name} model; valid targets: "
                             f"{', '.join(r for r in TARGET_ROLES if r in paths)}")
        names = []
        for i, block in enumerate(adapter.get_layers(model)):
            module = getattr(block, role, None) if role in SHORTCUT_ROLES else get_module(block, paths[role])
            if isinstance(module, (GatherInLinear, ScatterOutLinear)):
                raise ValueError(f"LoRA cannot wrap {role} of block {i}: it reads/writes a subset of the residual "
                                 "channels (a DISP model), which peft's LoRA layers do not know about; fine-tuning "
                                 "DISP-compressed models is not supported yet")
            if isinstance(module, HEAD_WRAPPERS):
                reshaped.append(f"{role} of block {i}")
            elif isinstance(module, nn.Linear):
                names.append(f"{adapter.layers}.{i}.{paths[role]}")
        if not names and reshaped and targets is None:
            continue  # every block's linear of this role is head-reshaped: the default targets skip the role
        if not names:
            why = ("its linears pad or scatter pruned head dims (value channels / q-k dims per head), which "
                   "peft's LoRA layers do not know about" if reshaped else
                   f"this model has no {role} (identity shortcuts are not stored)")
            raise ValueError(f"LoRA target {role} matches no module: {why}; drop it from the targets")
        resolved[role] = names
    if reshaped:
        logger.warning("LoRA skips %d head-reshaping linears (pruned value channels or q/k dims per head: %s%s); "
                       "the other targets are trained", len(reshaped), ", ".join(reshaped[:3]),
                       ", ..." if len(reshaped) > 3 else "")
    return resolved


def attach_lora(model: nn.Module, config: FinetuneConfig) -> tuple[nn.Module, dict[str, list[str]]]:
    """Wrap ``model`` in a peft LoRA model; only the LoRA weights are trainable.

    The LoRA ``A`` matrices are initialised from ``config.seed`` and ``B = 0``, so the
    wrapped model computes exactly what ``model`` computes until it is trained.

    Returns:
        ``(peft_model, {role: [module names]})``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError(
            "fine-tuning needs the peft package: pip install 'slimformer[finetune]' (or pip install peft)"
        ) from exc

    targets = resolve_targets(model, config.targets)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none",
        target_modules=[name for names in targets.values() for name in names],
    )
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():  # peft probes deprecated transformers attributes
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, lora)
    return peft_model, targets


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + (alpha/r) B A``) and unwrap.

    Returns the base model with plain ``nn.Linear`` modules of unchanged shapes.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = peft_model.merge_and_unload()
    left = [n for n, _ in model.named_modules() if "lora_" in n]
    if left:
        raise RuntimeError(f"LoRA merge left adapter modules behind (e.g. {left[0]}); cannot save a plain model")
    return model.eval()


__all__ = ["attach_lora", "merge_lora", "resolve_targets"]
