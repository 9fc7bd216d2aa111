"""Tiny random models of every supported family, built in the test (seconds)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PhiConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 128


def _common(tied: bool) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, tie_word_embeddings=tied)


def make_config(family: str, tied: bool = False):
    """Config of a 2-layer, width-64 model; GQA where the family has it."""
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
        kw = dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        if family == "qwen3":
            kw["head_dim"] = 16
        return cls(**_common(tied), **kw)
    if family == "opt":
        return OPTConfig(
            **_common(tied), ffn_dim=96, num_attention_heads=4, max_position_embeddings=128,
            word_embed_proj_dim=64, do_layer_norm_before=True,
        )
    if family == "phi":
        return PhiConfig(
            **_common(tied), intermediate_size=96, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=128, partial_rotary_factor=0.5,
        )
    raise ValueError(family)


def make_model(family: str, tied: bool = False, seed: int = 0, **overrides) -> torch.nn.Module:
    """Random fp32 model with non-trivial norm scales/biases (so fusion is really tested).

    ``overrides``: config attributes set after the config is built, for an even smaller model
    (set the derived ones too: ``hidden_size=32`` with ``head_dim=8``)."""
    torch.manual_seed(seed)
    config = make_config(family, tied)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "opt", "phi"]
