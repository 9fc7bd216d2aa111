"""FASP and the structured baselines: restoration maths, exactness, GQA structures, saved format, CLI, quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter, get_module
from slimformer.core.structures import (
    BlockKeep,
    LayerCounts,
    attention_shape,
    o_columns,
    prune_block,
    pruned_param_count,
    query_heads,
    reconstruction_error,
    restore_columns,
)
from slimformer.io.format import PlainExportError
from slimformer.runtime.modeling_slimformer import SlimformerFormatError

from test_saved_format import _remote_code_logits
from tiny_models import FAMILIES, VOCAB, make_model


def _calib(n: int = 8, t: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(0))


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 15), generator=torch.Generator().manual_seed(7))


def _logits(model: torch.nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_probe() if ids is None else ids).logits


# ----- restoration -------------------------------------------------------------------


def test_restoration_is_the_least_squares_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 40, generator=g, dtype=torch.float64)
    W = torch.randn(16, 40, generator=g, dtype=torch.float64)  # [out, in]
    keep = torch.sort(torch.randperm(40, generator=g)[:25]).values
    G = X.T @ X
    restored = restore_columns(W, G, keep, damping=0.0)  # [16, 25]
    optimum = torch.linalg.lstsq(X[:, keep], X @ W.T).solution.T  # argmin ||X W^T - X_S B^T||
    assert torch.allclose(restored, optimum, atol=1e-8, rtol=1e-6)

    def err(B: torch.Tensor) -> float:
        return float(((X @ W.T - X[:, keep] @ B.T) ** 2).sum() / ((X @ W.T) ** 2).sum())

    assert err(restored) < err(W[:, keep])  # restoration beats plain deletion
    assert err(restored) <= err(optimum + 1e-3 * torch.randn(optimum.shape, generator=g, dtype=torch.float64))
    assert reconstruction_error(W, restored, G, keep) == pytest.approx(err(restored), rel=1e-9)
    # the damped solve stays close to the optimum and is still better than deletion
    assert err(W[:, keep]) > err(restore_columns(W, G, keep, damping=0.01)) >= err(restored)


# ----- exactness -----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_reproduces_dense_logits(family: str) -> None:
    for attention in ("channels", "heads"):
        model = make_model(family)
        dense = _logits(model)
        result = sf.compress(model, sf.FASPConfig(sparsity=0.0, attention=attention), _calib(), progress=False)
        assert result.report["removed_fraction"] == 0.0
        assert (_logits(model) - dense).abs().max().item() <= 1e-5


def _zero_and_keep(model: torch.nn.Module, heads: bool) -> list[BlockKeep]:
    """Zero the o columns (and down columns) of some groups, return keep sets without them."""
    adapter = get_adapter(model)
    keeps = []
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in adapter.get_layers(model):
            shape = attention_shape(block, adapter, model.config)
            down, o = get_module(block, adapter.down), get_module(block, adapter.o)
            mlp_keep = torch.sort(torch.randperm(down.in_features, generator=g)[:60]).values
            dead = torch.ones(down.in_features, dtype=torch.bool)
            dead[mlp_keep] = False
            down.weight[:, dead] = 0
            if heads:  # drop the last kv head group
                kv = torch.arange(shape.n_kv_heads - 1)
                cols = torch.ones(o.in_features, dtype=torch.bool)
                cols[(query_heads(kv, shape)[:, None] * shape.head_dim + torch.arange(shape.head_dim)).reshape(-1)] = False
                o.weight[:, cols] = 0
                keeps.append(BlockKeep(mlp=mlp_keep, heads=kv))
            else:  # each kv head keeps a different set of 5 value channels
                v_keep = torch.stack([torch.sort(torch.randperm(shape.head_dim, generator=g)[:5]).values
                                      for _ in range(shape.n_kv_heads)])
                cols = torch.ones(o.in_features, dtype=torch.bool)
                cols[o_columns(shape, v_keep)] = False
                o.weight[:, cols] = 0
                keeps.append(BlockKeep(mlp=mlp_keep, v=v_keep))
    return keeps


@pytest.mark.parametrize("family", FAMILIES)
def test_deleting_dead_groups_is_exact_and_round_trips(family: str, tmp_path: Path) -> None:
    """Groups whose second-layer columns are zero carry nothing: deleting them (value
    channels per GQA group, whole heads, MLP channels) keeps the logits, also after save/load."""
    for heads in (False, True):
        model = make_model(family, tied=heads)
        adapter = get_adapter(model)
        keeps = _zero_and_keep(model, heads)
        ref = _logits(model)
        before = sum(p.numel() for p in model.parameters())
        for block, keep in zip(adapter.get_layers(model), keeps):
            prune_block(block, adapter, model.config, keep)
        assert (_logits(model) - ref).abs().max().item() <= 1e-5
        assert sum(p.numel() for p in model.parameters()) < before
        section = {"method": "manual", "plan": sf.api.plan_from_model(model, adapter).to_dict()}
        out = sf.io.format.save_compressed(model, tmp_path / f"{family}{heads}", section)
        loaded, _ = sf.load_model(out)
        assert (_logits(loaded) - ref).abs().max().item() <= 1e-5


def test_pruned_attention_loads_without_slimformer_and_plan_is_validated(tmp_path: Path) -> None:
    model = make_model("llama")  # GQA 4 q / 2 kv heads
    result = sf.compress(model, sf.FASPConfig(sparsity=0.4), _calib(), progress=False)
    blocks = result.section["plan"]["blocks"]
    assert [b["v_head_dim"] for b in blocks] == [9, 9] and blocks[0]["n_heads"] == 4
    out = Path(result.save(tmp_path / "m"))
    ref = _logits(result.model)
    assert (_remote_code_logits(out, _probe(), tmp_path) - ref).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in sf.load_model(out)[0].parameters()) == result.report["params_after"]
    cfg = json.loads((out / "config.json").read_text())
    cfg["slimformer"]["plan"]["blocks"][1]["v_head_dim"] = 8
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimformerFormatError, match="block 1: inconsistent attention shape"):
        sf.load_model(out)


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_layerwise_pass_feeds_the_pruned_blocks_outputs_forward(family: str) -> None:
    """The activations the pass hands to block i+1 are exactly the pruned model's (one forward per sublayer)."""
    from slimformer.calib.prune_pass import prune_layerwise
    from slimformer.calib.runner import capture_block_inputs
    from slimformer.calib.scores import _block_output
    from slimformer.methods.fasp.apply import _Pruner, layer_counts
    from slimformer.methods.fasp.score import WandaScorer

    model = make_model(family)
    adapter = get_adapter(model)
    cpu = torch.device("cpu")
    inputs = capture_block_inputs(model, adapter, _calib(), 4, cpu, False)
    counts = [layer_counts(b, adapter, model.config, 0.4, "channels", 1, "floor") for b in adapter.get_layers(model)]
    pruner = _Pruner(model, adapter, counts, WandaScorer(), restore=True, damping=0.01)
    prune_layerwise(model, adapter, inputs, pruner, cpu, progress=False)
    assert all(set(e) == {"attn", "mlp"} for e in pruner.errors)
    ref = capture_block_inputs(model, adapter, _calib(), 4, cpu, False)
    for block in adapter.get_layers(model):
        ref.hidden = [_block_output(block, x, kw) for x, kw in zip(ref.hidden, ref.kwargs)]
    for got, want in zip(inputs.hidden, ref.hidden):
        assert (got - want).abs().max().item() <= 1e-5


# ----- plain export, target params, seeds ----------------------------------------------


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_mlp_only_pruning_exports_plain_hf_config(family: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = sf.compress(make_model(family, tied=True), sf.FASPConfig(sparsity=0.25, attention="none"),
                         _calib(), progress=False)
    out = Path(result.save(tmp_path / "plain", plain=True))
    cfg = json.loads((out / "config.json").read_text())
    assert "auto_map" not in cfg and cfg[get_adapter(result.model).mlp_width_config_attr] == 72
    assert not (out / "modeling_slimformer.py").exists()
    plain = AutoModelForCausalLM.from_pretrained(out)  # no remote code
    assert (_logits(plain) - _logits(result.model)).abs().max().item() <= 1e-5
    attn = sf.compress(make_model(family), sf.FASPConfig(sparsity=0.25), _calib(), progress=False)
    with pytest.raises(PlainExportError, match="value heads keep fewer channels"):
        attn.save(tmp_path / "no", plain=True)


@pytest.mark.parametrize("attention", ["channels", "heads", "none"])
def test_target_params_is_met_with_exact_counts(attention: str) -> None:
    model = make_model("qwen2")
    adapter = get_adapter(model)
    result = sf.compress(model, sf.WandaSPConfig(target_params=0.2, attention=attention), _calib(), progress=False)
    r = result.report
    assert abs(r["removed_fraction"] - 0.2) < 0.03 and r["target_params"]["achieved"] == r["removed_fraction"]
    dense = make_model("qwen2")
    counts = [LayerCounts(**k) for k in r["kept"]]
    assert pruned_param_count(dense, adapter, counts) == r["params_after"]


def test_global_schedule_spreads_the_budget_by_block_influence() -> None:
    model = make_model("llama")  # 2 blocks
    r = sf.compress(model, sf.FASPConfig(sparsity=0.3, schedule="global"), _calib(), progress=False).report
    fs = r["layer_sparsity"]
    assert r["schedule"] == "global" and abs(sum(fs) / len(fs) - 0.3) < 1e-9 and fs[0] != fs[1]
    assert [k["mlp"] for k in r["kept"]] == [round((1 - f) * 96) for f in fs]


def test_float32_gram_products_match_float64() -> None:
    out = []
    for dtype in ("float64", "float32"):
        model = make_model("opt")
        sf.compress(model, sf.FASPConfig(sparsity=0.3, gram_dtype=dtype), _calib(), progress=False)
        out.append(_logits(model))
    assert (out[0] - out[1]).abs().max().item() <= 1e-3 * out[0].abs().max().item()
    with pytest.raises(ValueError, match="gram_dtype must be float64 or float32"):
        sf.FASPConfig(sparsity=0.3, gram_dtype="float16")


def test_random_baseline_is_seeded_and_magnitude_needs_no_data() -> None:
    kept = []
    for seed in (0, 0, 1):
        m = make_model("llama")
        sf.compress(m, sf.RandomConfig(sparsity=0.5, prune_seed=seed), None, progress=False)
        kept.append(get_module(get_adapter(m).get_layers(m)[0], "mlp.down_proj").weight.clone())
    assert torch.equal(kept[0], kept[1]) and not torch.equal(kept[0], kept[2])
    m = make_model("opt")
    sf.compress(m, sf.MagnitudeConfig(sparsity=0.5), None, progress=False)
    with pytest.raises(ValueError, match="needs calibration data for the restoration"):
        sf.compress(make_model("opt"), sf.MagnitudeConfig(sparsity=0.5, restore=True), None, progress=False)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        sf.FASPConfig()
    with pytest.raises(ValueError, match="attention must be one of"):
        sf.FASPConfig(sparsity=0.2, attention="qk")
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        sf.WandaSPConfig(sparsity=1.0)
    model = make_model("llama")
    sf.compress(model, sf.SliceGPTConfig(sparsity=0.1), _calib(), progress=False)
    with pytest.raises(ValueError, match="already rotated/sliced"):
        sf.compress(model, sf.FASPConfig(sparsity=0.1), _calib(), progress=False)


# ----- real models -----------------------------------------------------------------------


def test_cli_fasp_on_stories260k(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import shared_path

    from slimformer.cli import main

    model_dir = shared_path("models", "stories260k")
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    base = ["compress", str(model_dir), "--calib", str(train), "--calib-samples", "8", "--calib-seqlen", "128",
            "--no-progress"]
    assert main(base + ["--method", "fasp", "--target-params", "0.2", "--no-restore", "--out", str(tmp_path / "a")]) == 0
    assert "achieved" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "slimformer_report.json").read_text())
    assert report["restore"] is False and abs(report["removed_fraction"] - 0.2) < 0.01
    assert main(base + ["--method", "fasp", "--sparsity", "0.2", "--restore"]) == 2
    assert "do not apply to method fasp" in capsys.readouterr().err
    assert main(base + ["--method", "magnitude", "--sparsity", "0.3", "--attention", "none", "--plain",
                        "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "config.json").read_text())["intermediate_size"] == 120  # int(0.7 * 172)


def test_fasp_beats_the_baselines_on_stories260k() -> None:
    """Equal parameter budget (20% removed): FASP < magnitude, wanda-sp, random in perplexity."""
    from conftest import shared_path

    from slimformer.eval import perplexity

    model_dir = shared_path("models", "stories260k")
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    valid = shared_path("data", "tinystories", "tinystories_valid_prefix.txt")
    ppl = {}
    _, tok = sf.load_model(model_dir)
    calib = sf.data.load(str(train), tok, samples=16, seqlen=256, seed=0)
    text = valid.read_text()[:60_000]  # about 15k tokens; tokenised once
    eval_ids = torch.tensor(tok(text)["input_ids"])
    for name, cfg in [("fasp", sf.FASPConfig(target_params=0.2)), ("wanda-sp", sf.WandaSPConfig(target_params=0.2)),
                      ("magnitude", sf.MagnitudeConfig(target_params=0.2)),
                      ("random", sf.RandomConfig(target_params=0.2))]:
        model, _ = sf.load_model(model_dir)
        result = sf.compress(model, cfg, calib, progress=False)
        assert abs(result.report["removed_fraction"] - 0.2) < 0.01
        ppl[name] = perplexity(model, tok, eval_ids, seqlen=512, max_tokens=12_000, progress=False).ppl
    assert ppl["fasp"] < 0.8 * min(ppl["wanda-sp"], ppl["magnitude"], ppl["random"]), ppl
    assert ppl["fasp"] < 15, ppl  # dense: about 4.0 on these tokens
