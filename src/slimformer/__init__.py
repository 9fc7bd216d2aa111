"""slimformer: structured width compression of Hugging Face causal LLMs."""

__version__ = "0.1.0"

from . import data  # noqa: E402
from .api import CompressionResult, compress, count_params, load_model  # noqa: E402
from .arch import UnsupportedModelError, supported_model_types  # noqa: E402
from .methods import SliceGPTConfig  # noqa: E402

__all__ = [
    "CompressionResult",
    "SliceGPTConfig",
    "UnsupportedModelError",
    "__version__",
    "compress",
    "count_params",
    "data",
    "load_model",
    "supported_model_types",
]
