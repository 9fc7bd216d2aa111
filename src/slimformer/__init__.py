"""slimformer: structured width compression of Hugging Face causal LLMs."""

__version__ = "0.1.0"

from . import data  # noqa: E402
from .api import CompressionResult, compress, compress_offloaded, count_params, load_model  # noqa: E402
from .arch import UnsupportedModelError, supported_model_types  # noqa: E402
from .methods import SliceGPTConfig  # noqa: E402
from .methods import FASPConfig, MagnitudeConfig, RandomConfig, WandaSPConfig  # noqa: E402
from .methods import DOTResizeConfig  # noqa: E402
from .methods import MoDeGPTConfig, PruneNetConfig  # noqa: E402
from .methods import DISPConfig  # noqa: E402
from .finetune import FinetuneConfig, FinetuneResult, finetune  # noqa: E402  (sf.finetune is the function)

__all__ = [
    "CompressionResult",
    "FASPConfig",
    "MagnitudeConfig",
    "RandomConfig",
    "WandaSPConfig",
    "DOTResizeConfig",
    "MoDeGPTConfig",
    "PruneNetConfig",
    "DISPConfig",
    "FinetuneConfig",
    "FinetuneResult",
    "SliceGPTConfig",
    "UnsupportedModelError",
    "__version__",
    "compress",
    "compress_offloaded",
    "count_params",
    "data",
    "finetune",
    "load_model",
    "supported_model_types",
]
