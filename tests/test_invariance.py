"""Exactness first: fusion + rotation (no deletion) reproduces dense logits."""

from __future__ import annotations

import pytest
import torch

from slimformer.arch import get_adapter
from slimformer.core.fuse import fuse
from slimformer.core.rotate import random_orthogonal, rotate_model

from tiny_models import FAMILIES, VOCAB, make_model

TOL = 1e-4


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(seed))


def _random_bases(adapter, d: int, n_layers: int, seed: int = 0):
    seed_iter = iter(range(seed, seed + 1000))
    embed = random_orthogonal(d, next(seed_iter), torch.float32)
    blocks = []
    for _ in range(n_layers):
        mid = None if adapter.parallel else random_orthogonal(d, next(seed_iter), torch.float32)
        blocks.append((mid, random_orthogonal(d, next(seed_iter), torch.float32)))
    return embed, blocks


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_fuse_and_rotate_is_exact(family: str, tied: bool) -> None:
    model = make_model(family, tied)
    ids = _ids()
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    adapter = get_adapter(model)
    fuse(model, adapter)
    with torch.no_grad():
        fused = model(input_ids=ids).logits
    assert (fused - dense).abs().max().item() <= TOL
    d = model.config.hidden_size
    embed, blocks = _random_bases(adapter, d, model.config.num_hidden_layers)
    rotate_model(model, adapter, embed, blocks)
    with torch.no_grad():
        rotated = model(input_ids=ids).logits
    assert (rotated - dense).abs().max().item() <= TOL
    # the rotation really changed the weights (the test can fail)
    assert not torch.allclose(model.lm_head.weight, model.get_input_embeddings().weight)
