"""DISP-LLM ``variant="reference"`` (official-code recipe) and the ReinMax estimator.

The reference variant feeds *soft* Gumbel-sigmoid masks to the LM loss and hard masks of a
separate draw to the budget term only; its hypernetwork runs its GRU over all 5L masks with
one linear head per mask; lam defaults to 16. The library variant stays as it was
(tests/test_disp.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import slimformer.methods.disp.train as disp_train
from slimformer.arch import get_adapter
from slimformer.methods.disp import DISPConfig
from slimformer.methods.disp.hypernet import (
    INPUT_DIM,
    HyperNet,
    HyperNetBase,
    MaskSeqHyperNet,
    build_hypernet,
    reinmax_binary,
    uniform_sizes,
)
from slimformer.methods.disp.masks import MASK_KINDS, BlockMasks, MaskHooks, block_shapes, mask_sizes
from slimformer.methods.disp.train import exact_masks, step_generator, train_hypernet, training_masks

from tiny_models import VOCAB, make_model


def _tiny(family: str = "llama", steps: int = 3, **kw):
    model = make_model(family)
    adapter = get_adapter(model)
    ids = torch.randint(0, VOCAB, (8, 48), generator=torch.Generator().manual_seed(2))
    cfg = DISPConfig(target_params=0.3, steps=steps, batch=2, seqlen=32, learning_rate=1e-2, **kw)
    return model, adapter, cfg, ids


def _values(masks: list[BlockMasks]) -> torch.Tensor:
    return torch.cat([m.detach().flatten().float() for bm in masks for _, m in bm.items()])


class _Recorder:
    """Wraps the real code paths (calls the originals) and keeps what they saw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lm: list[torch.Tensor] = []  # every mask a MaskHooks forward hook multiplied an activation by
        self.budget: list[list[BlockMasks]] = []  # every mask list the budget term counted
        orig_mask, orig_kept = MaskHooks._mask, disp_train.kept_params

        def mask(hooks: MaskHooks, layer: int, kind: str, like: torch.Tensor) -> torch.Tensor | None:
            m = orig_mask(hooks, layer, kind, like)
            if m is not None:
                self.lm.append(m.detach().clone())
            return m

        def kept(shapes, masks):
            self.budget.append([bm.detach() for bm in masks])
            return orig_kept(shapes, masks)

        monkeypatch.setattr(MaskHooks, "_mask", mask)
        monkeypatch.setattr(disp_train, "kept_params", kept)


def test_reference_lm_sees_soft_masks_and_budget_sees_hard_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, adapter, cfg, ids = _tiny(steps=3, variant="reference")
    rec = _Recorder(monkeypatch)
    train_hypernet(model, adapter, cfg, ids, progress=False)
    n_hooks = sum(len(adapter.attn_readers) + len(adapter.mlp_readers) + 3 for _ in adapter.get_layers(model))
    assert len(rec.lm) == 3 * n_hooks and len(rec.budget) == 3  # every hooked forward of every step
    lm = torch.cat([m.flatten() for m in rec.lm])
    inside = ((lm > 0) & (lm < 1)).float().mean()
    assert lm.min() >= 0 and lm.max() <= 1
    assert inside > 0.9, inside  # soft: in (0, 1) (a few saturate to 1.0 in float32 at sigmoid(>~17))
    for masks in rec.budget:
        assert all(bm.is_hard() for bm in masks)  # the budget term counts exact 0/1 masks


def test_library_lm_and_budget_see_the_same_hard_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, adapter, cfg, ids = _tiny(steps=2)
    rec = _Recorder(monkeypatch)
    train_hypernet(model, adapter, cfg, ids, progress=False)
    assert all(bool(((m == 0) | (m == 1)).all()) for m in rec.lm)
    assert all(bm.is_hard() for masks in rec.budget for bm in masks)


class _FixedLogits(HyperNetBase):
    """Logits ``-3`` (masks around 0.5, so two draws disagree on many channels), mask drawing of the real base class."""

    def __init__(self, n_layers: int, sizes: dict[str, int]) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.a = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.full((n_layers, n), -3.0))
                                         for k, n in sizes.items()})

    def logits(self) -> dict[str, torch.Tensor]:
        return dict(self.a.items())


def test_reference_budget_masks_come_from_a_second_draw() -> None:
    """training_masks: soft masks = first Gumbel draw; hard masks = rounding of the *next* draw."""
    _, _, cfg, _ = _tiny(variant="reference")
    net = _FixedLogits(n_layers=2, sizes={k: 12 for k in MASK_KINDS})
    lm, budget = training_masks(net, cfg, step_generator(0, 5))
    gen = step_generator(0, 5)
    logits = net.logits()
    first = net.soft_masks(logits, cfg.mask_temperature, gen)
    second = net.soft_masks(logits, cfg.mask_temperature, gen)
    assert torch.equal(_values(lm), _values(first))
    assert torch.equal(_values(budget), (_values(second) > 0.5).float())
    assert not torch.equal(_values(budget), (_values(first) > 0.5).float())


def test_reference_hypernet_has_one_gru_step_and_one_head_per_mask() -> None:
    model = make_model("llama")
    adapter = get_adapter(model)
    shapes = block_shapes(model, adapter)
    sizes = uniform_sizes(mask_sizes(shapes))
    n_masks = len(shapes) * len(MASK_KINDS)
    ref = build_hypernet("reference", len(shapes), sizes, hidden=16, seed=0)
    lib = build_hypernet("library", len(shapes), sizes, hidden=16, seed=0)
    assert isinstance(ref, MaskSeqHyperNet) and isinstance(lib, HyperNet)
    assert len(ref.heads) == n_masks and len(lib.heads) == len(MASK_KINDS)
    assert [h.out_features for h in ref.heads] == [sizes[k] for _ in shapes for k in MASK_KINDS]
    assert ref.inputs.shape == (n_masks, INPUT_DIM) and ref.gru.input_size == INPUT_DIM
    assert ref.inputs.requires_grad  # trained, as in the official training loop
    # logits of block b / kind k come from head 5b + k alone
    logits = ref.logits()
    assert all(a.shape == (len(shapes), sizes[k]) for k, a in logits.items())
    with torch.no_grad():
        ref.heads[len(MASK_KINDS) * 1 + 3].weight.zero_()  # block 1, mlp_mid
    after = ref.logits()
    assert torch.equal(after["mlp_mid"][1], torch.zeros(sizes["mlp_mid"]))
    assert torch.equal(after["mlp_mid"][0], logits["mlp_mid"][0]) and torch.equal(after["attn_in"], logits["attn_in"])
    # every head, the GRU and the inputs get gradients from the loss
    masks = ref.sample(0.4, torch.Generator().manual_seed(0))
    sum(m.sum() for bm in masks for _, m in bm.items()).backward()
    assert all(p.grad is not None for p in ref.parameters())


def test_lam_default_depends_on_variant_and_validation() -> None:
    assert DISPConfig(target_params=0.3).lam == 6.0
    assert DISPConfig(target_params=0.3, variant="reference").lam == 16.0
    assert DISPConfig(target_params=0.3, variant="reference", lam=2.0).lam == 2.0
    assert DISPConfig(target_params=0.3, lam=0.0).lam == 0.0
    with pytest.raises(ValueError, match=r"^variant must be one of library, reference, got 'paper'$"):
        DISPConfig(target_params=0.3, variant="paper")
    with pytest.raises(ValueError, match="reinmax must be True or False"):
        DISPConfig(target_params=0.3, reinmax="yes")  # type: ignore[arg-type]
    lib, ref = DISPConfig(target_params=0.3), DISPConfig(target_params=0.3, variant="reference", reinmax=True)
    assert "variant" not in lib.training_key() and "reinmax" not in lib.training_key()  # old checkpoints resume
    assert ref.training_key()["variant"] == "reference" and ref.training_key()["reinmax"] is True


def test_cli_options_for_variant_and_reinmax() -> None:
    import argparse

    from slimformer.cli_options import add_method_options, build_method_config, method_options

    opts = method_options()
    assert {"library", "reference"} <= set(opts["variant"].choices) and "disp" in opts["variant"].fields
    assert "disp" in opts["reinmax"].fields
    p = argparse.ArgumentParser()
    add_method_options(p)
    cfg = build_method_config("disp", p.parse_args(["--target-params", "0.3", "--variant", "reference", "--reinmax"]))
    assert cfg.variant == "reference" and cfg.reinmax is True and cfg.lam == 16.0
    cfg = build_method_config("disp", p.parse_args(["--target-params", "0.3", "--variant", "reference", "--lam", "3"]))
    assert cfg.lam == 3.0
    with pytest.raises(SystemExit):
        p.parse_args(["--target-params", "0.3", "--variant", "paper"])


def test_reinmax_binary_values_and_gradient() -> None:
    theta = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    u = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.99])
    out = reinmax_binary(theta, u)
    pi0 = torch.sigmoid(theta.detach())
    hard = (u < pi0).float()
    assert torch.equal(out.detach(), hard)  # exact 0/1 forward
    out.sum().backward()
    pi1 = (hard + pi0) / 2
    want = 2 * pi1 * (1 - pi1) - 0.5 * pi0 * (1 - pi0)
    assert torch.allclose(theta.grad, want, atol=1e-6)


@pytest.mark.parametrize("variant", ["library", "reference"])
def test_reinmax_training_masks_are_hard_and_train(variant: str) -> None:
    model, adapter, cfg, ids = _tiny(steps=40, variant=variant, reinmax=True)
    shapes = block_shapes(model, adapter)
    net = build_hypernet(variant, len(shapes), uniform_sizes(mask_sizes(shapes)), 16, 0)
    _, budget = training_masks(net, cfg, step_generator(0, 0))
    assert all(bm.is_hard() for bm in budget)
    res = train_hypernet(model, adapter, cfg, ids, progress=False)
    assert abs(res.history[-1][2] - res.p) < 0.08


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_reference_trains_to_target_saves_and_reloads(family: str, tmp_path: Path) -> None:
    import slimformer as sf

    model, adapter, cfg, ids = _tiny(family, steps=60, variant="reference")
    res = train_hypernet(model, adapter, cfg, ids, progress=False)
    reg = [h[1] for h in res.history]
    assert sum(reg[-10:]) / 10 < 0.3 * sum(reg[:10]) / 10  # the regulariser drives r to p
    assert abs(res.history[-1][2] - res.p) < 0.06
    ex = exact_masks(model, adapter, res.hypernet, cfg.target_params)
    assert abs(ex.removed - cfg.target_params) < 0.01 and all(bm.is_hard() for bm in ex.masks)

    out = sf.compress(model, cfg, ids, progress=False)
    assert abs(out.report["removed_fraction"] - 0.3) < 0.01
    assert out.report["config"]["variant"] == "reference" and out.report["config"]["lam"] == 16.0
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = out.model(x).logits
    saved = out.save(tmp_path / "ref")
    loaded, _ = sf.load_model(saved)
    with torch.no_grad():
        got = loaded(x).logits
    assert sf.count_params(loaded) == out.report["params_after"]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_reference_checkpoint_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    model, adapter, cfg, ids = _tiny("qwen2", steps=8, variant="reference", checkpoint_every=3)
    full = train_hypernet(model, adapter, cfg, ids, progress=False)
    cfg.checkpoint = str(tmp_path / "ref.pt")
    train_hypernet(model, adapter, cfg, ids, progress=False, stop_after=4)
    resumed = train_hypernet(model, adapter, cfg, ids, progress=False)
    assert resumed.resumed_from == 4
    for (k, x), y in zip(full.hypernet.state_dict().items(), resumed.hypernet.state_dict().values()):
        assert torch.equal(x, y), k
    lib = DISPConfig(**{**cfg.__dict__, "variant": "library"})
    with pytest.raises(ValueError, match="other settings.*variant"):
        train_hypernet(model, adapter, lib, ids, progress=False)
