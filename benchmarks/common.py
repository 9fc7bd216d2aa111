"""Shared pieces of the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
#: the seed of the real models' calibration windows
CALIB_SEED = 42

#: the real models' text (paths under ../shared): calibration text, and the evaluation text that
#: is never used for a choice; calibration sizes as in benchmarks/fasp.py
SETUPS = {
    "stories260k": {"calib": "data/tinystories/tinystories_train_prefix.txt", "samples": 128, "seqlen": 256,
                    "eval": "data/tinystories/tinystories_valid_prefix.txt", "eval_seqlen": 512,
                    "eval_tokens": 100_000},
    "opt-fixture": {"calib": "data/wikitext2/wiki.valid.raw", "samples": 64, "seqlen": 256,
                    "eval": "data/wikitext2/wiki.test.raw", "eval_seqlen": 256, "eval_tokens": 40_000},
}


def load_real(name: str) -> tuple[torch.nn.Module, Any, Any]:
    """``(fp32 model, tokenizer, calibration windows)`` of the real model ``name`` in :data:`SETUPS`."""
    import slimformer as sf

    s = SETUPS[name]
    model, tok = sf.load_model(SHARED / "models" / name, dtype="float32")
    calib = sf.data.load(str(SHARED / s["calib"]), tok, samples=s["samples"], seqlen=s["seqlen"], seed=CALIB_SEED)
    return model, tok, calib


def eval_ids(name: str, tok: Any, tokens: int | None = None) -> torch.Tensor:
    """The first ``tokens`` (default: the setup's ``eval_tokens``) token ids of ``name``'s evaluation text."""
    import slimformer as sf

    s = SETUPS[name]
    return sf.data.tokenize_text(sf.data.load_text(str(SHARED / s["eval"])).text, tok)[: tokens or s["eval_tokens"]]


def eval_ppl(model: torch.nn.Module, tok: Any, ids: torch.Tensor, name: str) -> float:
    """Perplexity of ``model`` on ``ids`` in ``name``'s evaluation windows (non-overlapping, batch 16)."""
    from slimformer.eval import perplexity

    return perplexity(model, tok, ids, seqlen=SETUPS[name]["eval_seqlen"], batch_size=16, progress=False).ppl


def llama_config(hidden: int = 1024, mlp: int = 2816, heads: int = 16, layers: int = 8,
                 vocab: int = 32000) -> LlamaConfig:
    """The random Llama of the speed benchmarks (default: hidden 1024, 8 layers, MHA, vocab 32000)."""
    return LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=2048)


def random_llama(**kw: int) -> LlamaForCausalLM:
    """A randomly initialised fp32 Llama in eval mode (seed it with ``torch.manual_seed`` first)."""
    return LlamaForCausalLM(llama_config(**kw)).eval()
