"""MoDeGPT end to end: exact keep-all rewrites per family, shapes, save/load, target params, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter, get_module
from slimformer.core.plan import plan_from_model
from slimformer.methods.modegpt import MoDeGPTConfig
from slimformer.methods.modegpt.apply import compress_mlp, compress_qk, compress_vo
from slimformer.calib.stats import Covariance

from test_saved_format import _remote_code_logits
from tiny_models import FAMILIES, VOCAB, make_model

IDS = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))


def _grams(model, adapter, li: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G_x (augmented attention input) and G_h (down input) of block ``li`` on IDS, dense model."""
    block = adapter.get_layers(model)[li]
    norm = get_module(block, adapter.attn_norm)
    down = get_module(block, adapter.down)
    acc_x = Covariance(get_module(block, adapter.q).in_features + 1)
    acc_h = Covariance(down.in_features)
    hs = [norm.register_forward_hook(lambda m, a, o: acc_x.update(torch.cat([o, torch.ones_like(o[..., :1])], -1))),
          down.register_forward_pre_hook(lambda m, a: acc_h.update(a[0]))]
    with torch.no_grad():
        model(IDS)
    for h in hs:
        h.remove()
    return acc_x.value(), acc_h.value()


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_decompositions_reproduce_dense_logits(family: str) -> None:
    """Every module rewritten at full size (wrappers installed, weights re-solved) is exact."""
    model, dense = make_model(family), make_model(family)
    ad = get_adapter(model)
    hd = model.config.hidden_size // model.config.num_attention_heads
    hd = getattr(model.config, "head_dim", None) or hd
    for li, block in enumerate(ad.get_layers(model)):
        G_x, G_h = _grams(model, ad, li)
        compress_vo(block, ad, model.config, G_x, hd, damping=0.01)
        if family != "qwen3":
            compress_qk(block, ad, model.config, G_x, hd)
        compress_mlp(block, ad, model.config, G_h, get_module(block, ad.down).in_features, ridge=0.01, damping=0.0)
    with torch.no_grad():
        assert (model(IDS).logits - dense(IDS).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_shapes_plan_and_round_trip(family: str, tmp_path: Path) -> None:
    model = make_model(family, tied=family in ("llama", "opt"))
    mods = "mlp,vo" if family == "qwen3" else "mlp,qk,vo"
    res = sf.compress(model, MoDeGPTConfig(sparsity=0.3, modules=mods, schedule="uniform"), IDS, progress=False)
    ad = get_adapter(model)
    plan = plan_from_model(model, ad)
    b = plan.blocks[0]
    hd = b.head_dim
    assert b.v_head_dim < hd and b.mlp_width < 96
    if family != "qwen3":
        assert b.qk_head_dim < hd and len(b.qk_index) == b.n_kv_heads
        if family in ("llama", "mistral", "qwen2"):  # whole RoPE pairs (j, j + hd/2)
            kept = set(b.qk_index[0])
            assert all((j + hd // 2) % hd in kept for j in kept)
    assert res.report["params_after"] == sum(p.numel() for p in model.parameters())
    out = res.save(tmp_path / "m")
    loaded, _ = sf.load_model(out)
    with torch.no_grad():
        want = model(IDS).logits
        assert (loaded(IDS).logits - want).abs().max() <= 1e-5
    if family == "llama":  # and without slimformer installed
        got = _remote_code_logits(Path(out), IDS, tmp_path)
        assert (got - want).abs().max() <= 1e-5


def test_quality_improves_over_deletion_on_real_model(stories_dir: Path, tinystories_train: Path,
                                                      tinystories_valid: Path) -> None:
    """stories260k at 20% removed: MoDeGPT beats deleting the same groups without its solves
    (magnitude-free baseline: random MLP channels + value channels) and stays a working LM."""
    from slimformer.eval import perplexity

    model, tok = sf.load_model(str(stories_dir))
    calib = sf.data.load(str(tinystories_train), tok, samples=32, seqlen=256, seed=42)
    res = sf.compress(model, MoDeGPTConfig(target_params=0.2), calib, progress=False)
    assert abs(res.report["target_params"]["achieved"] - 0.2) <= 0.01
    ppl = perplexity(model, tok, str(tinystories_valid), seqlen=512, max_tokens=20000, progress=False).ppl
    base, _ = sf.load_model(str(stories_dir))
    sf.compress(base, sf.RandomConfig(target_params=0.2), progress=False)
    ppl_rand = perplexity(base, tok, str(tinystories_valid), seqlen=512, max_tokens=20000, progress=False).ppl
    assert ppl < ppl_rand, (ppl, ppl_rand)


@pytest.mark.parametrize("family", ["llama", "opt", "phi", "qwen3"])
def test_target_params_quarter(family: str) -> None:
    model = make_model(family)
    mods = "mlp,vo" if family == "qwen3" else "mlp,qk,vo"
    res = sf.compress(model, MoDeGPTConfig(target_params=0.25, modules=mods, schedule="uniform"), IDS, progress=False)
    assert abs(res.report["target_params"]["achieved"] - 0.25) <= 0.01


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        MoDeGPTConfig()
    with pytest.raises(ValueError, match="modules must be"):
        MoDeGPTConfig(sparsity=0.2, modules="mlp,attn")
    with pytest.raises(ValueError, match="sparsity must be in"):
        MoDeGPTConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="per-head q/k norms"):
        sf.compress(make_model("qwen3"), MoDeGPTConfig(sparsity=0.2), IDS, progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        sf.compress(make_model("llama"), MoDeGPTConfig(sparsity=0.2), progress=False)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture, stories_dir: Path, tinystories_train: Path) -> None:
    from slimformer.cli import main

    out = tmp_path / "mg"
    code = main(["compress", str(stories_dir), "--method", "modegpt", "--target-params", "0.25", "--calib",
                 str(tinystories_train), "--calib-samples", "8", "--calib-seqlen", "128", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((out / "slimformer_report.json").read_text())
    assert rep["method"] == "modegpt" and abs(rep["target_params"]["achieved"] - 0.25) <= 0.01
    code = main(["compress", str(stories_dir), "--method", "modegpt", "--sparsity", "0.2", "--modules", "mlp,xx",
                 "--calib", str(tinystories_train), "--out", str(tmp_path / "bad")])
    assert code == 2 and "modules must be" in capsys.readouterr().err and not (tmp_path / "bad").exists()
