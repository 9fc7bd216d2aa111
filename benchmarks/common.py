"""Shared pieces of the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

#: the real models' text (paths under ../shared): calibration text, and the evaluation text that
#: is never used for a choice; calibration sizes as in benchmarks/fasp.py
SETUPS = {
    "stories260k": {"calib": "data/tinystories/tinystories_train_prefix.txt", "samples": 128, "seqlen": 256,
                    "eval": "data/tinystories/tinystories_valid_prefix.txt", "eval_seqlen": 512,
                    "eval_tokens": 100_000},
    "opt-fixture": {"calib": "data/wikitext2/wiki.valid.raw", "samples": 64, "seqlen": 256,
                    "eval": "data/wikitext2/wiki.test.raw", "eval_seqlen": 256, "eval_tokens": 40_000},
}


def llama_config(hidden: int = 1024, mlp: int = 2816, heads: int = 16, layers: int = 8,
                 vocab: int = 32000) -> LlamaConfig:
    """The random Llama of the speed benchmarks (default: hidden 1024, 8 layers, MHA, vocab 32000)."""
    return LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=2048)


def random_llama(**kw: int) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama in eval mode (seed it with ``torch.manual_seed`` first)."""
    return LlamaForCausalLM(llama_config(**kw)).eval()
