"""DISP-LLM (Gao et al., NeurIPS 2024): dimension-independent structural pruning with learned masks.

``masks`` (mask hooks + exact parameter counting), ``hypernet`` (bi-GRU mask generator),
``train`` (hypernetwork training on the frozen model, exact budget), ``export`` (physical
gather/scatter slicing), ``apply`` (the method's entry point).
"""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import DISPConfig

# everything but the config imports torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {
    **{n: ".apply" for n in ("apply_disp", "learn_masks")},
    **{n: ".masks" for n in ("BlockMasks", "BlockShapes", "MaskHooks", "block_shapes", "kept_params",
                             "prunable_params", "total_params")},
})

__all__ = ["BlockMasks", "BlockShapes", "DISPConfig", "MaskHooks", "apply_disp", "block_shapes", "kept_params",
           "learn_masks", "prunable_params", "total_params"]

# trains on all blocks at once: no offloading
register_method("disp", DISPConfig, f"{__name__}.apply:apply_disp")
