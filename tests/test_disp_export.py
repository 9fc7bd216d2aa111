"""DISP export: gather/scatter slicing is exact, counts agree, saved models load two ways, bad input is refused."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter
from slimformer.core.plan import ShapePlan, plan_from_model
from slimformer.io.format import PlainExportError, save_compressed
from slimformer.runtime.modeling_slimformer import GatherInLinear, ScatterOutLinear, SlimformerFormatError
from slimformer.methods.disp.export import export_disp
from slimformer.methods.disp.masks import (
    BlockMasks,
    MaskHooks,
    block_shapes,
    full_masks,
    kept_params,
    params_after,
    prunable_params,
)

from tiny_models import FAMILIES, VOCAB, make_model

SRC = Path(sf.__file__).resolve().parents[1]


def _probe(vocab: int = VOCAB, t: int = 15) -> torch.Tensor:
    return torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(7))


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _random_masks(model: torch.nn.Module, keep: float = 0.6, seed: int = 1) -> list[BlockMasks]:
    """Hard masks keeping each channel with probability ``keep`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    shapes = block_shapes(model, get_adapter(model))
    return [BlockMasks(**{k: (torch.rand(m.numel(), generator=g) < keep).float() for k, m in bm.items()})
            for bm in full_masks(shapes)]


def _masked_logits(model: torch.nn.Module, masks: list[BlockMasks], ids: torch.Tensor) -> torch.Tensor:
    with MaskHooks(model, get_adapter(model), masks):
        return _logits(model, ids)


def _save(model: torch.nn.Module, out: Path) -> Path:
    section = {"method": "disp", "plan": plan_from_model(model, get_adapter(model)).to_dict()}
    return save_compressed(model, out, section)


def _remote_code_logits(dirs: list[Path], ids: list[torch.Tensor], work: Path) -> list[torch.Tensor]:
    """Logits of each saved dir loaded with plain transformers in one process where slimformer is not importable."""
    torch.save(ids, work / "ids.pt")
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.path = [p for p in sys.path if not p.startswith({str(SRC)!r})]
        assert importlib.util.find_spec("slimformer") is None, "slimformer must not be importable here"
        import torch
        torch.set_num_threads(1)
        from transformers import AutoModelForCausalLM
        ids = torch.load({str(work / 'ids.pt')!r}, weights_only=True)
        out = []
        for d, x in zip({[str(d) for d in dirs]!r}, ids):
            m = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True)
            with torch.no_grad():
                out.append(m(input_ids=x).logits)
        torch.save(out, {str(work / 'logits.pt')!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.load(work / "logits.pt", weights_only=True)


# ----- (a) all channels kept: the gather/scatter runtime equals the dense model ----------------------------
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_gather_scatter_equals_dense(family: str, tied: bool) -> None:
    model = make_model(family, tied)
    dense = _logits(model, _probe())
    adapter = get_adapter(model)
    export_disp(model, adapter, full_masks(block_shapes(model, adapter)), wrap_full_sets=True)
    block = adapter.get_layers(model)[0]
    assert all(isinstance(adapter.get(block, p), GatherInLinear) for p in adapter.attn_readers + adapter.mlp_readers)
    assert all(isinstance(adapter.get(block, p), ScatterOutLinear) for p in adapter.writers)
    assert (_logits(model, _probe()) - dense).abs().max().item() <= 1e-5


# ----- (b) + (c) random hard masks: exported == masked dense; counts agree -----------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_export_equals_masked_model_and_count(family: str) -> None:
    model = make_model(family, tied=family in ("llama", "opt"), seed=3)
    adapter = get_adapter(model)
    masks = _random_masks(model)
    shapes = block_shapes(model, adapter)
    dense = _logits(model, _probe())
    masked = _masked_logits(model, masks, _probe())
    assert (masked - dense).abs().max().item() > 1e-2  # the masks really change the model
    predicted = params_after(model, shapes, masks)
    export_disp(model, adapter, masks)
    assert (_logits(model, _probe()) - masked).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in model.parameters()) == predicted
    # independent count from the sliced weights: attention + MLP linears only
    paths = adapter.attn_readers + adapter.mlp_readers + adapter.writers
    lin = sum(p.numel() for b in adapter.get_layers(model) for path in paths for p in adapter.get(b, path).parameters())
    assert lin == int(kept_params(shapes, masks).item()) < prunable_params(shapes)
    # the plan records the index sets, widths and the full residual width
    plan = plan_from_model(model, adapter)
    for b, bm in zip(plan.blocks, masks):
        assert (b.d_in, b.d_out) == (64, 64) and b.mlp_width == int(bm.mlp_mid.sum())
        assert b.attn_in_index == torch.nonzero(bm.attn_in).flatten().tolist()
        assert b.mlp_out_index == torch.nonzero(bm.mlp_out).flatten().tolist()
    assert plan.widths_table()[0]["attn_out"] == int(masks[0].attn_out.sum())


def test_empty_sets_are_exact(tmp_path: Path) -> None:
    """A sublayer writing no channel (or reading none / no MLP channel) is exact, saves and loads."""
    model = make_model("qwen2")  # q/k/v biases: a reader with no input still outputs its bias
    adapter = get_adapter(model)
    masks = _random_masks(model, seed=5)
    masks[0].attn_in.zero_()
    masks[0].mlp_out.zero_()
    masks[1].attn_out.zero_()
    masks[1].mlp_mid.zero_()
    masked = _masked_logits(model, masks, _probe())
    export_disp(model, adapter, masks)
    assert (_logits(model, _probe()) - masked).abs().max().item() <= 1e-4
    assert adapter.get(adapter.get_layers(model)[1], adapter.o).weight.shape[0] == 0
    loaded, _ = sf.load_model(_save(model, tmp_path / "m"))
    assert (_logits(loaded, _probe()) - masked).abs().max().item() <= 1e-4


# ----- (d) save -> load_model / remote code ------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_every_family(tmp_path: Path, family: str) -> None:
    model = make_model(family, tied=family == "phi")
    export_disp(model, get_adapter(model), _random_masks(model))
    ref = _logits(model, _probe())
    out = _save(model, tmp_path / family)
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded, _probe()) - ref).abs().max().item() <= 1e-5
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(PlainExportError, match="residual channels"):
        save_compressed(model, tmp_path / "plain", {"method": "disp", "plan": {}}, plain=True)


def test_stories260k_and_tiny_load_with_remote_code(tmp_path: Path) -> None:
    """Real stories260k (and tiny OPT with biases): export -> save -> slimformer and plain-transformers loads."""
    from conftest import shared_path

    stories, _ = sf.load_model(shared_path("models", "stories260k"))
    ids_s = _probe(stories.config.vocab_size, 64)
    masks = _random_masks(stories, keep=0.7, seed=11)
    masked = _masked_logits(stories, masks, ids_s)
    export_disp(stories, get_adapter(stories), masks)
    ref_s = _logits(stories, ids_s)
    assert (ref_s - masked).abs().max().item() <= 1e-4
    opt = make_model("opt")
    export_disp(opt, get_adapter(opt), _random_masks(opt, seed=2))
    ref_o = _logits(opt, _probe())
    dirs = [_save(stories, tmp_path / "stories"), _save(opt, tmp_path / "opt")]
    loaded, _ = sf.load_model(dirs[0])
    assert (_logits(loaded, ids_s) - ref_s).abs().max().item() <= 1e-5
    remote = _remote_code_logits(dirs, [ids_s, _probe()], tmp_path)
    assert (remote[0] - ref_s).abs().max().item() <= 1e-5
    assert (remote[1] - ref_o).abs().max().item() <= 1e-5


# ----- (e) bad input -------------------------------------------------------------------------------------
def test_bad_masks_are_refused_and_leave_the_model_unchanged() -> None:
    model = make_model("llama")
    adapter = get_adapter(model)
    before = copy.deepcopy(model.state_dict())
    soft = _random_masks(model)
    soft[1].mlp_in[3] = 0.7
    with pytest.raises(ValueError, match=r"block 1: mask mlp_in is not hard \(entry 3"):
        export_disp(model, adapter, soft)
    short = _random_masks(model)
    short[0].attn_out = short[0].attn_out[:-1]
    with pytest.raises(ValueError, match=r"block 0: mask attn_out has shape \(63,\), expected \[64\]"):
        export_disp(model, adapter, short)
    with pytest.raises(ValueError, match="masks for 1 blocks"):
        export_disp(model, adapter, _random_masks(model)[:1])
    nan = _random_masks(model)
    nan[0].mlp_mid[0] = float("nan")
    with pytest.raises(ValueError, match="not hard"):
        export_disp(model, adapter, nan)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    good = _random_masks(model)
    export_disp(model, adapter, good)
    with pytest.raises(ValueError, match="already compressed or exported"):
        export_disp(model, adapter, good)


def _edit_plan(out: Path, edit) -> None:
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    edit(cfg["slimformer"]["plan"]["blocks"])
    cfg_path.write_text(json.dumps(cfg))


def test_corrupt_plan_index_sets_are_refused(tmp_path: Path) -> None:
    model = make_model("opt")
    export_disp(model, get_adapter(model), _random_masks(model))
    out = _save(model, tmp_path / "m")
    plan = ShapePlan.from_dict(json.loads((out / "config.json").read_text())["slimformer"]["plan"])
    assert plan.blocks[0].attn_in_index is not None  # the plan round-trips through JSON

    cases = [
        (lambda b: b[0]["attn_in_index"].pop(), r"q_proj.weight has shape \[64, \d+\], the plan says \[64, \d+\]"),
        (lambda b: b[1]["mlp_out_index"].pop(0), r"fc2.weight has shape"),
        (lambda b: b[1]["attn_out_index"].pop(), r"out_proj.weight has shape"),
        (lambda b: b[0]["mlp_in_index"].__setitem__(0, 64), r"block 0: corrupt plan: mlp_in_index must list"),
        (lambda b: b[0]["attn_out_index"].reverse(), r"increasing, distinct"),
        (lambda b: b[0].__setitem__("d_in", 32), r"need the original blocks with a full-width residual"),
        (lambda b: b[0].__setitem__("mlp_in_index", "0,1"), r"must be a list of channel positions"),
    ]
    for i, (edit, msg) in enumerate(cases):
        bad = tmp_path / f"bad{i}"
        bad.mkdir()
        for f in out.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        _edit_plan(bad, edit)
        with pytest.raises(SlimformerFormatError, match=msg):
            sf.load_model(bad)


def test_lora_targets_gather_scatter_linears_in_weight_space_only() -> None:
    """peft's LoRA would add a full-width update to a gathered linear: the gathered/scattered
    linears are targets for the weight-space LoRA, and a peft-only adapter refuses them clearly."""
    from slimformer.finetune import resolve_targets
    from slimformer.finetune.lora import RESIDUAL_WRAPPERS

    model = make_model("llama")
    export_disp(model, get_adapter(model), _random_masks(model))
    wrapped = {n for n, m in model.named_modules() if isinstance(m, RESIDUAL_WRAPPERS)}
    assert wrapped and wrapped <= {n for names in resolve_targets(model, None).values() for n in names}
    with pytest.raises(ValueError, match="DISP"):
        resolve_targets(model, None, weight_space=False)
