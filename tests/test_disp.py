"""DISP-LLM: mask hooks, exact parameter counting, hypernetwork training, exact budget, resume, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from slimformer.arch import get_adapter
from slimformer.methods.disp import DISPConfig
from slimformer.methods.disp.hypernet import HyperNet, uniform_sizes
from slimformer.methods.disp.masks import (
    BlockMasks,
    MaskHooks,
    block_shapes,
    full_masks,
    kept_params,
    mask_sizes,
    params_after,
    prunable_params,
    total_params,
)
from slimformer.methods.disp.train import exact_masks, train_hypernet

from tiny_models import FAMILIES, VOCAB, make_model


def _random_masks(model, adapter, keep: float = 0.6, seed: int = 0) -> list[BlockMasks]:
    g = torch.Generator().manual_seed(seed)
    return [BlockMasks(**{k: (torch.rand(n, generator=g) < keep).float() for k, n in sz.items()})
            for sz in mask_sizes(block_shapes(model, adapter))]


def _masked_copy(model, adapter, masks: list[BlockMasks]):
    """Dense copy with every pruned weight/bias entry set to zero (the brute-force reference)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for block, bm in zip(adapter.get_layers(m), masks):
            for p in adapter.attn_readers:
                adapter.get(block, p).weight.mul_(bm.attn_in[None, :])
            o = adapter.get(block, adapter.o)
            o.weight.mul_(bm.attn_out[:, None])
            if o.bias is not None:
                o.bias.mul_(bm.attn_out)
            for p in adapter.mlp_readers:
                lin = adapter.get(block, p)
                lin.weight.mul_(bm.mlp_mid[:, None] * bm.mlp_in[None, :])
                if lin.bias is not None:
                    lin.bias.mul_(bm.mlp_mid)
            down = adapter.get(block, adapter.down)
            down.weight.mul_(bm.mlp_out[:, None] * bm.mlp_mid[None, :])
            if down.bias is not None:
                down.bias.mul_(bm.mlp_out)
    return m


def _live_attn_mlp_params(model, adapter) -> int:
    """Non-zero entries of the attention + MLP linears (random weights are never exactly 0)."""
    n = 0
    for block in adapter.get_layers(model):
        for p in (*adapter.attn_readers, adapter.o, *adapter.mlp_readers, adapter.down):
            lin = adapter.get(block, p)
            n += int((lin.weight != 0).sum()) + (0 if lin.bias is None else int((lin.bias != 0).sum()))
    return n


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_equal_masked_weights_and_count_is_exact(family: str) -> None:
    model = make_model(family)
    adapter = get_adapter(model)
    shapes = block_shapes(model, adapter)
    masks = _random_masks(model, adapter)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    ref = _masked_copy(model, adapter, masks)
    with torch.no_grad():
        dense = model(ids).logits
        with MaskHooks(model, adapter) as hooks:
            hooks.masks = full_masks(shapes)
            full = model(ids).logits
            hooks.masks = masks
            masked = model(ids).logits
        after = model(ids).logits  # hooks removed on exit
        brute = ref(ids).logits
    assert torch.equal(full, dense) and torch.equal(after, dense)
    assert (masked - dense).abs().max() > 1e-2  # the masks really act
    assert torch.allclose(masked, brute, atol=1e-5, rtol=0)
    assert int(kept_params(shapes, masks)) == _live_attn_mlp_params(ref, adapter)
    assert int(kept_params(shapes, full_masks(shapes))) == prunable_params(shapes) == _live_attn_mlp_params(model, adapter)
    assert params_after(model, shapes, masks) == total_params(model) - prunable_params(shapes) + _live_attn_mlp_params(ref, adapter)


def test_hypernet_masks_shapes_ranges_and_straight_through_gradient() -> None:
    model = make_model("llama")
    adapter = get_adapter(model)
    shapes = block_shapes(model, adapter)
    net = HyperNet(len(shapes), uniform_sizes(mask_sizes(shapes)), hidden=16, seed=0)
    masks = net.sample(0.4, torch.Generator().manual_seed(0))
    assert len(masks) == len(shapes)
    for bm, sz in zip(masks, mask_sizes(shapes)):
        for k, m in bm.items():
            assert m.shape == (sz[k],) and bm.is_hard()
    frac = sum(float(m.detach().sum()) for bm in masks for _, m in bm.items()) / sum(sum(s.values()) for s in mask_sizes(shapes))
    assert frac > 0.98  # the +3 shift and the (positive-mean) Gumbel noise start with the dense model
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with MaskHooks(model, adapter, masks):
        loss = model(input_ids=ids, labels=ids).loss + kept_params(shapes, masks) / prunable_params(shapes)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    det = net.deterministic()
    assert all(bm.is_hard() for bm in det) and all(min(bm.widths().values()) >= 1 for bm in det)
    assert all(torch.equal(a.attn_in, b.attn_in) for a, b in zip(det, net.deterministic()))  # no noise


def _tiny_training(family: str, steps: int, **kw):
    model = make_model(family)
    adapter = get_adapter(model)
    ids = torch.randint(0, VOCAB, (8, 48), generator=torch.Generator().manual_seed(2))
    cfg = DISPConfig(target_params=0.3, steps=steps, batch=2, seqlen=32, learning_rate=1e-2, **kw)
    return model, adapter, cfg, ids


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_training_meets_budget_and_exact_masks_hit_target(family: str) -> None:
    model, adapter, cfg, ids = _tiny_training(family, 60)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_hypernet(model, adapter, cfg, ids, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # frozen
    assert all(p.requires_grad for p in model.parameters()) and not model.training  # flags restored
    reg = [h[1] for h in res.history]
    total = [h[0] + cfg.lam * h[1] for h in res.history]
    assert sum(total[-10:]) < sum(total[:10])  # the objective decreases (mostly its budget term here)
    assert sum(reg[-10:]) / 10 < 0.3 * sum(reg[:10]) / 10  # the regulariser drives r to p
    assert abs(res.history[-1][2] - res.p) < 0.06
    ex = exact_masks(model, adapter, res.hypernet, cfg.target_params)
    assert abs(ex.removed - cfg.target_params) < 0.01 and ex.removed >= cfg.target_params
    assert ex.params_after == params_after(model, block_shapes(model, adapter), ex.masks)


def test_grad_checkpointing_gives_the_same_training() -> None:
    model, adapter, cfg, ids = _tiny_training("qwen2", 4)
    a = train_hypernet(model, adapter, cfg, ids, progress=False)
    cfg.grad_checkpointing = True
    b = train_hypernet(model, adapter, cfg, ids, progress=False)
    for (k, x), y in zip(a.hypernet.state_dict().items(), b.hypernet.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k
    assert "forward" not in vars(adapter.get_layers(model)[0])  # wrappers removed


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, adapter, cfg, ids = _tiny_training("phi", 12, checkpoint_every=5)
    full = train_hypernet(model, adapter, cfg, ids, progress=False)
    cfg.checkpoint = str(tmp_path / "disp.pt")
    part = train_hypernet(model, adapter, cfg, ids, progress=False, stop_after=7)  # "interrupted" after step 7
    assert part.steps == 7 and Path(cfg.checkpoint).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disp.pt"]  # no checkpoint temporaries left
    with caplog.at_level("WARNING", logger="slimformer"):
        resumed = train_hypernet(model, adapter, cfg, ids, progress=False)
    assert resumed.resumed_from == 7 and resumed.steps == 12 and len(resumed.history) == 12
    assert any("resumed from checkpoint" in r.getMessage() and "step 7 of 12" in r.getMessage()
               for r in caplog.records)  # the CLI shows warnings: a resume is never silent
    for (k, x), y in zip(full.hypernet.state_dict().items(), resumed.hypernet.state_dict().values()):
        assert torch.equal(x, y), k
    other = DISPConfig(**{**cfg.__dict__, "lam": 1.0})
    with pytest.raises(ValueError, match="other settings.*lam"):
        train_hypernet(model, adapter, other, ids, progress=False)
    with pytest.raises(ValueError, match="another model or other calibration data"):
        train_hypernet(model, adapter, cfg, ids[:4], progress=False)


@pytest.mark.parametrize("kw, msg", [
    ({}, "disp needs target_params"),
    ({"target_params": 1.0}, "target_params"),
    ({"target_params": 0.3, "steps": -1}, "steps must be an integer >= 0"),
    ({"target_params": 0.3, "learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
    ({"target_params": 0.3, "mask_temperature": float("nan")}, "mask_temperature"),
    ({"target_params": 0.3, "lam": -1.0}, "lam must be a finite number >= 0"),
    ({"target_params": 0.3, "batch": 0}, "batch must be an integer >= 1"),
    ({"target_params": 0.3, "seqlen": 1}, "seqlen must be an integer >= 2"),
    ({"target_params": 0.3, "checkpoint": " "}, "checkpoint must be a file path"),
])
def test_config_validation(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        DISPConfig(**({"target_params": None} | kw))


def test_bad_budget_and_data_are_clear_errors() -> None:
    model, adapter, cfg, ids = _tiny_training("llama", 1)
    with pytest.raises(ValueError, match="attention \\+ MLP hold only"):
        train_hypernet(model, adapter, DISPConfig(target_params=0.99), ids, progress=False)
    with pytest.raises(ValueError, match="exceeds the calibration window length"):
        train_hypernet(model, adapter, DISPConfig(target_params=0.3, seqlen=64), ids, progress=False)


def test_learned_masks_beat_random_masks_on_stories(stories_dir: Path, tinystories_train: Path,
                                                    tinystories_valid: Path) -> None:
    """On a real model, 80 steps of training give far better masks than random ones of the same widths."""
    import slimformer as sf

    model, tok = sf.load_model(stories_dir)
    adapter = get_adapter(model)
    calib = sf.data.load(str(tinystories_train), tok, samples=32, seqlen=256, seed=0).input_ids
    valid = sf.data.tokenize_text(sf.data.load_text(str(tinystories_valid)).text, tok)[: 8 * 256].view(8, 256)
    cfg = DISPConfig(target_params=0.3, steps=80, batch=4, seqlen=128)
    res = train_hypernet(model, adapter, cfg, calib, progress=False)
    ex = exact_masks(model, adapter, res.hypernet, cfg.target_params)
    g = torch.Generator().manual_seed(0)
    rnd = [BlockMasks(**{k: torch.zeros_like(m).index_fill_(0, torch.randperm(m.numel(), generator=g)[: int(m.sum())], 1.0)
                         for k, m in bm.items()}) for bm in ex.masks]
    shapes = block_shapes(model, adapter)
    assert int(kept_params(shapes, rnd)) == int(kept_params(shapes, ex.masks))

    def loss(masks: list[BlockMasks]) -> float:
        with torch.no_grad(), MaskHooks(model, adapter, masks):
            return float(model(input_ids=valid, labels=valid).loss)

    dense, learned, random = loss(full_masks(shapes)), loss(ex.masks), loss(rnd)
    assert abs(ex.removed - 0.3) < 0.01
    assert dense < learned < random - 0.5, (dense, learned, random)  # ppl ratio > e^0.5


def _export_module():
    try:
        from slimformer.methods.disp import export
    except ImportError as exc:  # pragma: no cover - only while the export lands
        pytest.skip(f"DISP export not available yet: {exc}")
    return export


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_compress_end_to_end_equals_masked_model_and_count(family: str) -> None:
    """sf.compress: the exported model equals the masked dense model, and kept_params predicted its size."""
    _export_module()
    import slimformer as sf
    from slimformer.methods.base import Runtime
    from slimformer.methods.disp.apply import learn_masks

    model, adapter, cfg, ids = _tiny_training(family, 10)
    masks, _ = learn_masks(model, adapter, cfg, ids, Runtime(torch.device("cpu"), progress=False))
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), MaskHooks(model, adapter, masks):
        want = model(x).logits
    predicted = params_after(model, block_shapes(model, adapter), masks)
    res = sf.compress(model, cfg, ids, progress=False)  # same seed and data: the same masks
    with torch.no_grad():
        got = res.model(x).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert res.report["params_after"] == predicted
    assert abs(res.report["removed_fraction"] - 0.3) < 0.01
    assert res.report["target_params"]["achieved"] == pytest.approx(res.report["removed_fraction"], abs=1e-12)
    assert res.report["steps"] == 10 and len(res.report["kept_widths"]) == len(masks)
    assert [m.widths() for m in masks] == res.report["kept_widths"]


def test_cli_compress_disp_on_stories(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                                      tinystories_valid: Path, capsys: pytest.CaptureFixture) -> None:
    _export_module()
    from slimformer.cli import main

    out = tmp_path / "disp"
    code = main(["compress", str(stories_dir), "--method", "disp", "--target-params", "0.25", "--calib",
                 str(tinystories_train), "--calib-samples", "16", "--calib-seqlen", "128", "--steps", "60", "--learning-rate", "0.01",
                 "--batch", "4", "--checkpoint", str(tmp_path / "h.pt"), "--out", str(out), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((out / "slimformer_report.json").read_text())
    assert report["method"] == "disp" and report["steps"] == 60 and (tmp_path / "h.pt").exists()
    assert abs(report["removed_fraction"] - 0.25) < 0.01
    assert (out / "disp_hypernet.safetensors").exists()
    js = tmp_path / "ppl.json"
    code = main(["eval", str(out), "--ppl", str(tinystories_valid), "--seqlen", "256", "--max-tokens", "4096",
                 "--json", str(js), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert 1.0 < json.loads(js.read_text())["ppl"] < 40.0  # random masks of these widths: ~100
