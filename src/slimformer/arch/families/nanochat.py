"""NanoChat: Llama's attention with per-head q/k norms, a non-gated ReLU-squared MLP ``mlp.fc1`` /
``mlp.fc2``."""

from ._layouts import llama_like

ADAPTER = llama_like("nanochat", "NanoChatConfig", gate=None, up="mlp.fc1", down="mlp.fc2", head_norms=True)
