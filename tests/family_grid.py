"""The family x method grid: every registered family (``supported_model_types()`` itself), built
from its adapter's ``tiny`` configuration, against every method.

Used by ``tests/test_family_grid.py`` (assertions) and ``benchmarks/architectures.py`` (the
support table in docs/architectures.md). A cell is either a number (max |delta logits|, removed
fraction, reload error) or the one-line reason the method refuses the family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import AutoModelForCausalLM

import slimformer as sf
from slimformer.arch import ALL_ADAPTERS, UnsupportedModelError, get_adapter

VOCAB = 128
HIDDEN = 64
LAYERS = 2
EXACT_TOL = 1e-4
RELOAD_TOL = 1e-5
TARGET = 0.2
TARGET_TOL = 0.01

#: method label -> config factory ``f(budget) -> config``; ``budget`` is ``{"sparsity": 0.0}`` or
#: ``{"target_params": 0.2}``. DISP has no zero point (its target is a parameter fraction in (0, 1)).
METHODS: dict[str, Callable[..., Any]] = {
    "slicegpt": lambda **b: sf.SliceGPTConfig(**b),
    "fasp": lambda **b: sf.FASPConfig(**b),
    "fasp-heads": lambda **b: sf.FASPConfig(attention="heads", **b),
    "magnitude": lambda **b: sf.MagnitudeConfig(**b),
    "wanda-sp": lambda **b: sf.WandaSPConfig(**b),
    "random": lambda **b: sf.RandomConfig(**b),
    "dotresize": lambda **b: sf.DOTResizeConfig(**b),
    "dotresize-mlp": lambda **b: sf.DOTResizeConfig(where="mlp", **b),
    "modegpt": lambda **b: sf.MoDeGPTConfig(**b),
    "prunenet": lambda **b: sf.PruneNetConfig(episodes=1, samples=2, **b),
    "disp": lambda **b: sf.DISPConfig(steps=4, batch=2, **b),
}
NO_ZERO_POINT = ("disp",)
CALIBRATION_FREE = ("magnitude", "random", "prunenet")


def build(family: str, tied: bool = False, seed: int = 0) -> torch.nn.Module:
    """A random fp32 model of ``family`` from its adapter's ``tiny`` config, with norm weights and
    biases perturbed away from 1 / 0 so a wrong fusion cannot pass."""
    adapter = next(a for a in ALL_ADAPTERS if family in a.model_types)
    kwargs = dict(adapter.tiny)
    cls = getattr(transformers, kwargs.pop("config_class"))
    config = cls(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, tie_word_embeddings=tied,
                 pad_token_id=None, bos_token_id=None, eos_token_id=None, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 - adapter.norm_offset + 0.3 * torch.randn_like(p))  # scale ~ 1 + 0.3 N(0, 1)
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def ids(n: int = 2, t: int = 17, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


#: residual-slicing methods (their configs take ``schedule`` and ``slice_head``)
RESIDUAL_METHODS = ("slicegpt", "dotresize")


def config_for(family: str, method: str, **budget: Any) -> Any:
    """The method's config for ``family``: families whose model needs the head input at the embedding
    width (GPT-2, ``same_width_ends``) slice uniformly with the head."""
    adapter = next(a for a in ALL_ADAPTERS if family in a.model_types)
    if adapter.same_width_ends and method in RESIDUAL_METHODS:
        budget = dict(budget, schedule="uniform", slice_head=True)
    return METHODS[method](**budget)


def _compress(family: str, method: str, tied: bool, **budget: Any) -> sf.CompressionResult:
    config = config_for(family, method, **budget)
    calib = None if method in CALIBRATION_FREE else ids(8, 24, seed=2)
    return sf.compress(build(family, tied), config, calib, progress=False)


def refusal(exc: Exception) -> str:
    """The one-line reason of a refusal (asserted to be one line)."""
    text = str(exc)
    assert text and "\n" not in text, f"refusal is not one line: {text!r}"
    return text


def zero_cell(family: str, method: str, tied: bool = False) -> float | str:
    """Max |delta logits| of ``method`` at sparsity 0 vs the dense model, or the refusal."""
    x = ids()
    dense = logits(build(family, tied), x)
    try:
        result = _compress(family, method, tied, sparsity=0.0)
    except (UnsupportedModelError, ValueError) as exc:
        return refusal(exc)
    return float((logits(result.model, x) - dense).abs().max())


def target_cell(family: str, method: str, out: Path, tied: bool = False) -> dict[str, Any] | str:
    """Compress to ``TARGET`` of the parameters, save, reload with plain transformers
    (``trust_remote_code``) and with ``sf.load_model``; the removed fraction and the larger reload
    error, or the refusal."""
    try:
        result = _compress(family, method, tied, target_params=TARGET)
    except (UnsupportedModelError, ValueError) as exc:
        return refusal(exc)
    saved = Path(result.save(out))
    remote = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True).eval()
    loaded, _ = sf.load_model(saved)  # slimformer's loader: the saved section checked against the weights
    x = ids()
    ref = logits(result.model, x)
    err = max(float((logits(m, x) - ref).abs().max()) for m in (remote, loaded))
    return {"removed": float(result.report["removed_fraction"]), "reload_err": err}


def families() -> list[str]:
    return sf.supported_model_types()


__all__ = ["EXACT_TOL", "METHODS", "NO_ZERO_POINT", "RELOAD_TOL", "TARGET", "TARGET_TOL", "build", "families",
           "get_adapter", "target_cell", "zero_cell"]
