"""The LoRA component of a recovery fine-tune: choose targets by role, attach peft adapters, merge them.

Targets are named by *role* (``q k v o gate up down`` and the residual shortcut maps
``attn_shortcut mlp_shortcut``) or by Hugging Face leaf name, and resolved through the
architecture adapter. :func:`merge_lora` folds ``W <- W + (alpha / r) B A`` into the
weights, so the merged model has exactly the input model's shapes.

Plain linears get peft's LoRA layers. Linears whose forward reshapes around their weight
(value channels / q-k dims pruned per head: pad, slice or scatter head dims; DISP's
gather-from / scatter-to residual subsets) cannot: peft adds ``B A x`` to the *output* with
the *input's* shape. They get the same update in weight space instead, ``W + (alpha / r) B A``
as a ``torch.nn.utils.parametrize`` parametrization of ``weight``, so the wrapper's own
forward applies it to exactly the inputs and outputs the weight sees (no input dropout
there: the update is applied to the weight, not to a dropped-out input). Each training
forward materialises ``W + s B A`` once per such linear, which autograd keeps for the
backward pass: one extra copy of those weights in the model dtype.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

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
#: compute, so a peft LoRA layer around one would add an update of the wrong shape
HEAD_WRAPPERS = (HeadPadOutLinear, HeadSliceInLinear, HeadScatterOutLinear)
#: linears of DISP models that read / write a subset of the residual channels
RESIDUAL_WRAPPERS = (GatherInLinear, ScatterOutLinear)
#: every linear that gets a weight-space LoRA instead of a peft layer
WEIGHT_SPACE = HEAD_WRAPPERS + RESIDUAL_WRAPPERS


class WeightSpaceLoRA(nn.Module):
    """``W -> W + scaling * B A``: a LoRA update as a parametrization of a linear's ``weight``.

    ``A: [r, in]`` (Kaiming-uniform, as peft initialises it), ``B: [out, r]`` zeros, so the
    parametrized weight equals ``W`` until trained. Both are float32 whatever the weight's
    dtype (as peft keeps adapters of half-precision models); the update is cast to it.
    """

    def __init__(self, weight: torch.Tensor, r: int, scaling: float) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=weight.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=weight.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = float(scaling)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # weight: [out, in] -> [out, in]
        return weight + (self.scaling * (self.lora_B @ self.lora_A)).to(weight.dtype)


def resolve_targets(model: nn.Module, targets: tuple[str, ...] | None,
                    weight_space: bool = True) -> dict[str, list[str]]:
    """Full module names of the LoRA targets, per role.

    Args:
        model: a (compressed) causal LM of a supported family.
        targets: role names or Hugging Face leaf names; ``None`` = all linear roles.
        weight_space: include the linears that reshape around their weight (head-pruned
            v/o/q/k, DISP's gathered/scattered linears); they get a weight-space LoRA.
            ``False`` (a peft-portable adapter is wanted) leaves head-reshaping linears
            frozen with a warning and refuses DISP models.

    Returns:
        ``{role: [model-level module name, ...]}`` for every requested role.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or a role that
            matches no module of this model (e.g. ``mlp_shortcut`` on an unrotated model).

    Without ``weight_space``, a role made only of head-reshaping linears is dropped from the
    default targets, and an explicitly requested one is a ValueError.
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
            if isinstance(module, RESIDUAL_WRAPPERS) and not weight_space:
                raise ValueError(f"a peft adapter cannot hold {role} of block {i}: it reads/writes a subset of the "
                                 "residual channels (a DISP model), which peft's LoRA layers do not know about; drop "
                                 "--keep-adapter (the merged model is saved either way)")
            if isinstance(module, HEAD_WRAPPERS) and not weight_space:
                reshaped.append(f"{role} of block {i}")
            elif isinstance(module, nn.Linear):
                names.append(f"{adapter.layers}.{i}.{paths[role]}")
        if not names and reshaped and targets is None:
            continue  # every block's linear of this role is head-reshaped: the default targets skip the role
        if not names:
            why = ("its linears pad or scatter pruned head dims (value channels / q-k dims per head), which "
                   "peft's LoRA layers do not know about" if reshaped else
                   f"this model has no {role} (identity shortcuts are not stored)")
            raise ValueError(f"LoRA target {role} matches no module: {why}; drop it from the targets"
                             + (" (or drop --keep-adapter)" if reshaped else ""))
        resolved[role] = names
    if reshaped:
        logger.warning("a peft adapter skips %d head-reshaping linears (pruned value channels or q/k dims per head: "
                       "%s%s); the other targets are trained (without --keep-adapter they are trained too)",
                       len(reshaped), ", ".join(reshaped[:3]), ", ..." if len(reshaped) > 3 else "")
    return resolved


def attach_lora(model: nn.Module, config: FinetuneConfig,
                weight_space: bool = True) -> tuple[nn.Module, dict[str, list[str]]]:
    """Wrap ``model`` in a peft LoRA model; only the LoRA weights are trainable.

    The LoRA ``A`` matrices are initialised from ``config.seed`` and ``B = 0``, so the
    wrapped model computes exactly what ``model`` computes until it is trained. Linears
    that reshape around their weight get a :class:`WeightSpaceLoRA` (see the module
    docstring); ``weight_space=False`` leaves them out (see :func:`resolve_targets`).

    Returns:
        ``(peft_model, {role: [module names]})``.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise RuntimeError(
            "fine-tuning needs the peft package: pip install 'slimformer[finetune]' (or pip install peft)"
        ) from exc

    targets = resolve_targets(model, config.targets, weight_space)
    names = [name for group in targets.values() for name in group]
    special = {name: model.get_submodule(name) for name in names}
    special = {name: module for name, module in special.items() if isinstance(module, WEIGHT_SPACE)}
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none",
        target_modules=[name for name in names if name not in special],
    )
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():  # peft probes deprecated transformers attributes
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, lora) if len(special) < len(names) else _frozen(model)
    for module in special.values():
        parametrize.register_parametrization(
            module, "weight", WeightSpaceLoRA(module.weight, config.lora_r, config.lora_alpha / config.lora_r))
    if special:
        logger.info("weight-space LoRA on %d linears that reshape around their weight (e.g. %s)", len(special),
                    next(iter(special)))
    return peft_model, targets


def _frozen(model: nn.Module) -> nn.Module:
    """``model`` with every parameter frozen (no peft targets: only weight-space adapters train)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _fold_weight_space(model: nn.Module) -> int:
    """Fold every :class:`WeightSpaceLoRA` into its weight (a plain ``nn.Parameter`` again); returns the count."""
    folded = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, WeightSpaceLoRA) for p in module.parametrizations["weight"]):
            with torch.no_grad():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(False)
            folded += 1
    return folded


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + (alpha/r) B A``) and unwrap.

    Returns the base model with plain ``nn.Linear`` modules of unchanged shapes.
    """
    _fold_weight_space(peft_model)
    if not hasattr(peft_model, "merge_and_unload"):  # only weight-space adapters (a DISP model)
        return peft_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = peft_model.merge_and_unload()
    left = [n for n, _ in model.named_modules() if "lora_" in n]
    if left:
        raise RuntimeError(f"LoRA merge left adapter modules behind (e.g. {left[0]}); cannot save a plain model")
    return model.eval()


__all__ = ["WeightSpaceLoRA", "attach_lora", "merge_lora", "resolve_targets"]
