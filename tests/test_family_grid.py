"""Every registered family x every method (the grid of ``family_grid.py``).

The family list is ``supported_model_types()`` itself, so a new adapter file cannot skip it. For each
cell: exact at sparsity 0 (max |delta logits| <= 1e-4, fp32, perturbed norms and biases), the 0.2
parameter target reached within +-0.01, and the saved model reloaded with plain transformers
(``trust_remote_code``) giving the same logits (<= 1e-5) - or a one-line refusal, and only where a
rule of the family's description says the method cannot run exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import family_grid as grid
import slimformer as sf
from slimformer.arch import UnsupportedModelError, get_adapter
from slimformer.core.fuse import fuse
from slimformer.core.plan import config_head_dim
from slimformer.core.rotate import random_orthogonal, rotate_model
from slimformer.methods import structures_of

FAMILIES = grid.families()


def _expected_refusal(family: str, method: str) -> bool:
    """Whether the family's description rules the method out (:meth:`ArchAdapter.refusal`)."""
    adapter = get_adapter(grid.build(family).config)
    touches = structures_of(grid.METHODS[method](sparsity=0.1) if method not in grid.NO_ZERO_POINT
                            else grid.METHODS[method](target_params=0.1))
    return touches is not None and adapter.refusal(touches, method) is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_fuse_and_random_rotation_is_exact(family: str) -> None:
    """Slim form + a random orthogonal basis at every residual point, no deletion: the same logits
    (tied and untied); families with sublayer-output norms are refused in one line instead."""
    for tied in (False, True):
        model = grid.build(family, tied)
        adapter = get_adapter(model)
        x = grid.ids()
        dense = grid.logits(model, x)
        if adapter.post_norms:
            with pytest.raises(UnsupportedModelError, match="pre-norms only") as info:
                fuse(model, adapter)
            assert "\n" not in str(info.value)
            continue
        fuse(model, adapter)
        d, n = model.config.hidden_size, model.config.num_hidden_layers
        bases = [(random_orthogonal(d, 2 * i + 1, torch.float32), random_orthogonal(d, 2 * i + 2, torch.float32))
                 for i in range(n)]
        rotate_model(model, adapter, random_orthogonal(d, 0, torch.float32), bases)
        assert (grid.logits(model, x) - dense).abs().max().item() <= grid.EXACT_TOL, (family, tied)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_is_exact_at_sparsity_zero(family: str) -> None:
    for method in grid.METHODS:
        if method in grid.NO_ZERO_POINT:
            continue
        for tied in (False, True) if method in ("slicegpt", "fasp-heads") else (False,):
            cell = grid.zero_cell(family, method, tied)
            if _expected_refusal(family, method):
                assert isinstance(cell, str), f"{family}/{method}: should be refused, ran (delta {cell})"
                continue
            assert not isinstance(cell, str), f"{family}/{method} refused: {cell}"
            assert cell <= grid.EXACT_TOL, f"{family}/{method} tied={tied}: max |delta logits| {cell:.2e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_reaches_the_target_and_reloads(family: str, tmp_path: Path) -> None:
    for method in grid.METHODS:
        cell = grid.target_cell(family, method, tmp_path / method)
        if _expected_refusal(family, method):
            assert isinstance(cell, str), f"{family}/{method}: should be refused"
            continue
        assert not isinstance(cell, str), f"{family}/{method} refused: {cell}"
        assert abs(cell["removed"] - grid.TARGET) <= grid.TARGET_TOL, (family, method, cell)
        assert cell["reload_err"] <= grid.RELOAD_TOL, (family, method, cell)


def test_grid_covers_every_registered_family() -> None:
    """The grid's family list is the registry's, and every family's tiny config builds."""
    assert FAMILIES == sf.supported_model_types()
    for family in FAMILIES:
        assert get_adapter(grid.build(family)).name


@pytest.mark.parametrize("family", ["gemma", "granite"])
def test_tied_head_variants_read_the_final_norm_exactly(family: str, tmp_path: Path) -> None:
    """Keep-tied and shared-basis SliceGPT read the final norm's scale directly: Gemma's (1 + w) norms
    and Granite's scalars through both; shared basis saves a plain, narrower model of the family."""
    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    dense = grid.logits(grid.build(family, tied=True), x)
    for config in (sf.SliceGPTConfig(sparsity=0.0, keep_tied=True),
                   sf.SliceGPTConfig(sparsity=0.0, basis="shared", slice_head=True)):
        model = grid.build(family, tied=True)
        sf.compress(model, config, calib, progress=False)
        assert (grid.logits(model, x) - dense).abs().max().item() <= grid.EXACT_TOL, config
    result = sf.compress(grid.build(family, tied=True), sf.SliceGPTConfig(sparsity=0.25, basis="shared",
                                                                          slice_head=True), calib, progress=False)
    out = Path(result.save(tmp_path / "shared"))
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # the family's own class, hidden size 48
    assert plain.config.hidden_size == 48
    assert (grid.logits(plain, x) - grid.logits(result.model, x)).abs().max().item() <= grid.RELOAD_TOL


def test_slicegpt_warns_when_a_width_sparsity_adds_parameters(capsys: pytest.CaptureFixture) -> None:
    """A tied model sliced by a small width fraction grows (the head is untied at full width): the
    report and the CLI say so and point to --target-params; a parameter target never warns."""
    from slimformer.cli import _print_compression

    calib = grid.ids(8, 24, seed=2)
    result = sf.compress(grid.build("llama", tied=True), sf.SliceGPTConfig(sparsity=0.05), calib, progress=False)
    assert result.report["params_after"] > result.report["params_before"]
    (text,) = result.report["warnings"]
    assert "ADDS" in text and "--target-params" in text and "--keep-tied" in text
    _print_compression(result.report)
    assert f"warning: {text}" in capsys.readouterr().out
    target = sf.compress(grid.build("llama", tied=True), sf.SliceGPTConfig(target_params=0.05), calib, progress=False)
    assert "warnings" not in target.report and target.report["params_after"] < target.report["params_before"]


def test_phi3_fused_projections_come_back_in_their_original_layout(tmp_path: Path) -> None:
    """Uniform pruning saves a plain Phi-3 whose checkpoint has the fused ``qkv_proj`` / ``gate_up_proj``
    tensors (no remote code); per-layer head counts save with the runtime, which rebuilds the parts."""
    from safetensors import safe_open

    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    uniform = sf.compress(grid.build("phi3"), sf.FASPConfig(sparsity=0.25, attention="heads"), calib, progress=False)
    out = Path(uniform.save(tmp_path / "plain"))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.qkv_proj.weight" in keys and "model.layers.0.mlp.gate_up_proj.weight" in keys
    assert not any(".q_proj." in k or ".gate_proj." in k for k in keys)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # no trust_remote_code: the family's own class
    assert plain.config.num_attention_heads == uniform.report["layers"][0]["heads"] == 2  # one whole GQA group went
    assert (grid.logits(plain, x) - grid.logits(uniform.model, x)).abs().max().item() <= grid.RELOAD_TOL

    # value channels per head (a wrapped v part inside the fused qkv): saved with the runtime
    varied = sf.compress(grid.build("phi3"), sf.FASPConfig(target_params=0.3, attention="channels"), calib,
                         progress=False)
    assert {row["v_head_dim"] for row in varied.report["layers"]} != {16}
    out = Path(varied.save(tmp_path / "remote"))
    assert "auto_map" in (out / "config.json").read_text()
    for loaded in (AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval(), sf.load_model(out)[0]):
        assert (grid.logits(loaded, x) - grid.logits(varied.model, x)).abs().max().item() <= grid.RELOAD_TOL


@pytest.mark.parametrize("family", ["ernie4_5", "cohere", "llama"])
def test_modegpt_qk_cut_follows_the_rope_layout(family: str) -> None:
    """Zero one RoPE pair of q/k channels in every head: MoDeGPT's q/k cut must drop exactly that pair
    and stay exact. The pair is (2j, 2j+1) for interleaved RoPE (ERNIE-4.5, Cohere) and (j, j+r/2) for
    rotate_half (Llama); grouping channels the wrong way would cut a live channel."""
    def model() -> torch.nn.Module:
        m = grid.build(family)
        adapter = get_adapter(m)
        hd = config_head_dim(m.config)
        pair = (2, 3) if adapter.rope_layout == "interleaved" else (1, 1 + hd // 2)
        with torch.no_grad():
            for block in adapter.get_layers(m):
                for path in (adapter.q, adapter.k):
                    lin = block.get_submodule(path)
                    for h in range(lin.out_features // hd):
                        for c in pair:
                            lin.weight[h * hd + c] = 0.0
                            if lin.bias is not None:
                                lin.bias[h * hd + c] = 0.0
        return m

    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    dense = grid.logits(model(), x)
    hd = config_head_dim(grid.build(family).config)
    result = sf.compress(model(), sf.MoDeGPTConfig(sparsity=2 / hd, modules="qk"), calib, progress=False)
    assert {row["qk"] for row in result.report["modules"] for row in [row["kept"]]} == {hd - 2}
    assert (grid.logits(result.model, x) - dense).abs().max().item() <= grid.EXACT_TOL


def test_adding_a_family_doc_shows_the_real_family_file() -> None:
    """docs/adding_a_family.md's worked example is the repository's arcee.py, verbatim, and the
    family it adds is registered (so the grid above ran it)."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "adding_a_family.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "ADAPTER" in b]
    assert block == (root / "src" / "slimformer" / "arch" / "families" / "arcee.py").read_text()
    assert "arcee" in FAMILIES


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_moe_experts_are_pruned_one_by_one_and_save_in_the_family_layout(family: str, tmp_path: Path) -> None:
    """FASP prunes every expert (and Qwen2-MoE's shared expert) with its own statistics: the same kept
    count per layer, different kept channels; the router is untouched; a uniform MLP-only result saves
    as a plain model with the family's 3-D ``gate_up_proj`` / ``down_proj`` tensors."""
    from safetensors import safe_open

    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    dense = grid.build(family)
    router = dense.model.layers[0].mlp.gate.weight.detach().clone()
    experts = dense.model.layers[0].mlp.experts.gate_up_proj.detach().clone()  # [E, 2I, d]
    result = sf.compress(dense, sf.FASPConfig(sparsity=0.25, attention="none"), calib, progress=False)
    kept = result.report["kept"][0]["mlp_units"]
    n_experts = experts.shape[0]
    assert len(kept) == n_experts + (family == "qwen2_moe") and len(set(kept[:n_experts])) == 1
    layer = result.model.model.layers[0].mlp
    assert torch.equal(layer.gate.weight, router)  # the router reads the residual stream: unchanged
    inter = experts.shape[1] // 2
    chosen = []
    for e in range(n_experts):  # which original gate rows each expert kept
        w = layer.experts[e].gate_proj.weight
        rows = [int((experts[e, :inter] - r).abs().sum(1).argmin()) for r in w]
        chosen.append(tuple(rows))
    assert len(set(chosen)) > 1, "every expert kept the same channels: not pruned one by one"
    out = Path(result.save(tmp_path / "plain"))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert tuple(f.get_slice("model.layers.0.mlp.experts.gate_up_proj").get_shape()) == (
            n_experts, 2 * kept[0], grid.HIDDEN)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # the family's own class, no remote code
    assert (grid.logits(plain, x) - grid.logits(result.model, x)).abs().max().item() <= grid.RELOAD_TOL


def _mlp_only_plain_save_keeps(model: torch.nn.Module, key: str, calib: torch.Tensor, x: torch.Tensor,
                               out: Path) -> Path:
    """FASP on the MLPs only (25%), saved plain to ``out``: the checkpoint's tensor ``key`` (a fused
    attention projection) is bitwise the original, and plain transformers reloads the same logits."""
    from safetensors import safe_open

    original = model.get_parameter(key).detach().clone()
    result = sf.compress(model, sf.FASPConfig(sparsity=0.25, attention="none"), calib, progress=False)
    out = Path(result.save(out))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor(key), original)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # the family's own class, no remote code
    assert (grid.logits(plain, x) - grid.logits(result.model, x)).abs().max().item() <= grid.RELOAD_TOL
    return out


def test_gpt_neox_per_head_qkv_comes_back_in_its_layout(tmp_path: Path) -> None:
    """GPT-NeoX's query_key_value rows are grouped per head (q, k, v of head 0, then head 1, ...):
    held as parts while compressing, written back in that order by a plain save, which loads
    without remote code; a layer-wise slicing saves with the runtime and reloads too."""
    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    _mlp_only_plain_save_keeps(grid.build("gpt_neox"), "gpt_neox.layers.0.attention.query_key_value.weight",
                               calib, x, tmp_path / "plain")
    sliced = sf.compress(grid.build("gpt_neox"), sf.SliceGPTConfig(target_params=0.2, schedule="layer-redundancy"),
                         calib, progress=False)
    out = Path(sliced.save(tmp_path / "remote"))
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert (grid.logits(remote, x) - grid.logits(sliced.model, x)).abs().max().item() <= grid.RELOAD_TOL


def test_gpt2_conv1d_comes_back_in_its_layout_and_slicing_needs_equal_ends(tmp_path: Path) -> None:
    """GPT-2's Conv1D weights ([in, out]) and fused c_attn are written back as GPT-2 stores them by a
    plain save (loads without remote code); residual slicing that leaves the head input wider than
    the embedding is refused in one line (GPT2Model views its output with the embedding's width)."""
    from safetensors import safe_open

    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    out = _mlp_only_plain_save_keeps(grid.build("gpt2"), "transformer.h.0.attn.c_attn.weight",  # [in, 3 * d]
                                     calib, x, tmp_path / "plain")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert tuple(f.get_slice("transformer.h.0.mlp.c_fc.weight").get_shape()) == (grid.HIDDEN, 72)
    with pytest.raises(UnsupportedModelError, match="--schedule uniform --slice-head") as info:
        sf.compress(grid.build("gpt2"), sf.SliceGPTConfig(sparsity=0.2), calib, progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("variant", [
    {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True,
     "num_ln_in_parallel_attn": None},  # Falcon-7B
    {"new_decoder_architecture": True, "num_ln_in_parallel_attn": 1},  # one norm, grouped qkv
    {"new_decoder_architecture": False, "multi_query": False, "parallel_attn": False,
     "num_ln_in_parallel_attn": None, "num_kv_heads": 4},  # sequential, per-head qkv (MHA)
])
def test_falcon_variants_are_exact_and_keep_their_qkv_layout(variant: dict, tmp_path: Path) -> None:
    """Each Falcon decoder variant gets its own description: SliceGPT exact at sparsity 0, FASP to the
    target, and an MLP-only plain save whose fused query_key_value is the original tensor."""
    def model() -> torch.nn.Module:
        m = grid.build("falcon")
        cfg = m.config
        for key, value in variant.items():
            setattr(cfg, key, value)
        torch.manual_seed(0)
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                if "ln" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        return fresh

    x, calib = grid.ids(), grid.ids(8, 24, seed=2)
    dense = grid.logits(model(), x)
    sliced = sf.compress(model(), sf.SliceGPTConfig(sparsity=0.0), calib, progress=False)
    assert (grid.logits(sliced.model, x) - dense).abs().max().item() <= grid.EXACT_TOL
    pruned = sf.compress(model(), sf.FASPConfig(target_params=0.2, attention="heads"), calib, progress=False)
    assert abs(pruned.report["removed_fraction"] - 0.2) <= grid.TARGET_TOL
    reloaded = AutoModelForCausalLM.from_pretrained(pruned.save(tmp_path / "heads"), trust_remote_code=True).eval()
    assert (grid.logits(reloaded, x) - grid.logits(pruned.model, x)).abs().max().item() <= grid.RELOAD_TOL
    _mlp_only_plain_save_keeps(model(), "transformer.h.0.self_attention.query_key_value.weight", calib, x,
                               tmp_path / "plain")


def test_falcon_alibi_is_refused_in_one_line() -> None:
    m = grid.build("falcon")
    m.config.alibi = True
    with pytest.raises(UnsupportedModelError, match="alibi") as info:
        get_adapter(m)
    assert "\n" not in str(info.value)
