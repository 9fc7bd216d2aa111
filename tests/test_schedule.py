"""Schedules (uniform / layer-redundancy / global), exact parameter counts, --target-params.

Unit tests of the allocation maths first, then real compressions of the tiny
random models of every family (no mocks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter, get_module
from slimformer.calib.scores import block_scores
from slimformer.cli import main
from slimformer.core.params import ResidualWidths, compressed_param_count
from slimformer.schedule import (
    GlobalSoftmax,
    LayerRedundancy,
    Uniform,
    layer_redundancy,
    layer_widths_for,
    make_schedule,
    plan_schedule,
    softmax_allocation,
    width_from_fraction,
)

from tiny_models import FAMILIES, VOCAB, make_model

BI = [0.30, 0.05, 0.10, 0.02, 0.12, 0.25]  # per-layer Block Influence (high = important)


def _calib(n: int = 8, t: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(5))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_probe()).logits


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----- allocation maths -----------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [Uniform(), LayerRedundancy(), LayerRedundancy(slicing_base=0.0), LayerRedundancy(slicing_base=0.2),
     GlobalSoftmax(), GlobalSoftmax(temperature=0.02), GlobalSoftmax(temperature=1.0, max_layer_sparsity=0.5)],
    ids=lambda s: f"{s.name}-{s.params()}",
)
@pytest.mark.parametrize("sp", [0.0, 0.1, 0.25, 0.4])
def test_mean_slicing_equals_target(schedule, sp: float) -> None:
    if isinstance(schedule, LayerRedundancy) and schedule.slicing_base is not None and schedule.slicing_base > sp:
        with pytest.raises(ValueError, match="must not exceed"):
            schedule.fractions(sp, len(BI), BI)
        return
    fs = schedule.fractions(sp, len(BI), BI)
    assert sum(fs) / len(fs) == pytest.approx(sp, abs=1e-12)
    assert all(0.0 <= f < 1.0 for f in fs)
    # after rounding to whole dimensions the mean slicing is off by < 1 dimension (floor) / 0.5 (nearest)
    d = 256
    _, ws = layer_widths_for(schedule, sp, len(BI), d, BI, round_to=1)
    assert sum(1 - w / d for w in ws) / len(ws) == pytest.approx(sp, abs=(1.0 if schedule.rounding == "floor" else 0.5) / d + 1e-12)


@pytest.mark.parametrize("schedule", [LayerRedundancy(), LayerRedundancy(slicing_base=0.05), GlobalSoftmax(temperature=0.1)],
                         ids=lambda s: s.name)
def test_order_follows_scores(schedule) -> None:
    fs = schedule.fractions(0.3, len(BI), BI)
    by_importance = sorted(range(len(BI)), key=lambda i: -BI[i])  # most important first
    sliced = [fs[i] for i in by_importance]
    assert sliced == sorted(sliced), "a more important layer must not be sliced more"
    assert sliced[0] < sliced[-1]


def test_layer_redundancy_formula() -> None:
    lr = layer_redundancy(BI)
    assert min(lr) == 0.0 and max(lr) == 1.0 and lr[0] == 0.0 and lr[3] == 1.0
    sp, sb = 0.3, 0.1
    fs = LayerRedundancy(slicing_base=sb).fractions(sp, len(BI), BI)
    mean_lr = sum(lr) / len(lr)
    assert fs == pytest.approx([sb + (sp - sb) * x / mean_lr for x in lr])
    assert fs[0] == pytest.approx(sb)  # the most important layer gets SB
    assert LayerRedundancy().fractions(sp, len(BI), BI)[0] == pytest.approx(sp / 2)  # default SB = SP / 2
    assert LayerRedundancy().fractions(sp, 3, [0.2, 0.2, 0.2]) == pytest.approx([sp] * 3)  # no preference


def test_global_softmax_and_cap() -> None:
    fs = GlobalSoftmax(temperature=0.15, max_layer_sparsity=0.8).fractions(0.3, len(BI), BI)
    w = [math.exp(-b / 0.15) for b in BI]
    assert fs == pytest.approx([len(BI) * 0.3 * x / sum(w) for x in w])  # cap inactive here
    capped = softmax_allocation(BI, 0.3, 0.01, 0.45)  # very peaked: the cap binds
    assert max(capped) == pytest.approx(0.45) and sum(capped) / len(capped) == pytest.approx(0.3)
    assert all(f <= 0.45 + 1e-12 for f in capped)


def test_widths_rounding_rules() -> None:
    assert width_from_fraction(0.25, 64, 8, "floor") == 48
    assert width_from_fraction(0.26, 64, 8, "floor") == 40  # int(47.36) = 47 -> 40 (SliceGPT rule)
    assert width_from_fraction(0.26, 64, 1, "nearest") == 47  # round(47.36) (reference LR code)
    assert width_from_fraction(0.26, 64, 8, "nearest") == 48
    w = ResidualWidths.from_layer_widths([40, 30, 20], 64, parallel=False, slice_head=False)
    assert (w.embed, w.mid, w.out) == (40, (40, 30, 20), (30, 20, 64))
    w = ResidualWidths.from_layer_widths([40, 30], 64, parallel=True, slice_head=True)
    assert (w.embed, w.mid, w.out) == (40, (None, None), (30, 30))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Uniform().fractions(1.0, 3), "sparsity must be in"),
        (lambda: Uniform().fractions(-0.1, 3), "sparsity must be in"),
        (lambda: LayerRedundancy(slicing_base=0.3).fractions(0.2, len(BI), BI), "must not exceed"),
        (lambda: LayerRedundancy(slicing_base=1.2), "slicing_base must be in"),
        (lambda: LayerRedundancy(slicing_base=0.0).fractions(0.6, len(BI), BI), r"layer 3 by .* >= 100%"),
        (lambda: LayerRedundancy().fractions(0.2, 3, BI), "6 scores for 3 layers"),
        (lambda: LayerRedundancy().fractions(0.2, 2, [0.1, float("nan")]), "finite"),
        (lambda: LayerRedundancy().fractions(0.2, 2, None), "needs per-layer scores"),
        (lambda: GlobalSoftmax().fractions(0.85, len(BI), BI), "exceeds max_layer_sparsity"),
        (lambda: GlobalSoftmax(temperature=0.0), "temperature"),
        (lambda: GlobalSoftmax(max_layer_sparsity=1.0), "max_layer_sparsity"),
        (lambda: make_schedule("cosine"), "unknown schedule 'cosine'"),
        (lambda: make_schedule("uniform", slicing_base=0.1), "does not take slicing_base"),
        (lambda: layer_widths_for(Uniform(), 0.99, 2, 64, None, 8), "leaves layer 0 no dimension"),
        (lambda: ResidualWidths(0, (1,), (1,)), "must be >= 1"),
        (lambda: sf.SliceGPTConfig(), "exactly one of sparsity"),
        (lambda: sf.SliceGPTConfig(sparsity=0.2, target_params=0.2), "exactly one of sparsity"),
        (lambda: sf.SliceGPTConfig(target_params=0.0), "target_params must be in"),
        (lambda: sf.SliceGPTConfig(target_params=1.0), "target_params must be in"),
        (lambda: sf.SliceGPTConfig(sparsity=0.2, schedule="nope"), "unknown schedule"),
        (lambda: sf.SliceGPTConfig(sparsity=0.2, slicing_base=0.1), "only applies to schedule 'layer-redundancy'"),
        (lambda: sf.SliceGPTConfig(sparsity=0.2, schedule="layer-redundancy", slicing_base=0.3), "must not exceed"),
        (lambda: sf.SliceGPTConfig(sparsity=0.9, schedule="global"), "exceeds max_layer_sparsity"),
        (lambda: sf.SliceGPTConfig(sparsity=0.2, schedule="global", temperature=-1), "temperature"),
        (lambda: sf.SliceGPTConfig(sparsity=0.2, round_to=2.5), "round_to"),
    ],
)
def test_invalid_inputs_raise(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_round_to_defaults() -> None:
    assert sf.SliceGPTConfig(sparsity=0.3).resolved_round_to() == 8  # SliceGPT's multiple of 8
    assert sf.SliceGPTConfig(sparsity=0.3, schedule="layer-redundancy").resolved_round_to() == 1
    assert sf.SliceGPTConfig(target_params=0.3).resolved_round_to() == 1
    assert sf.SliceGPTConfig(target_params=0.3, round_to=8).resolved_round_to() == 8


# ----- scores -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_scores_one_pass_and_match_hidden_states(family: str) -> None:
    model = make_model(family)
    adapter = get_adapter(model)
    calls = []
    for layer in adapter.get_layers(model):
        layer.register_forward_hook(lambda *_: calls.append(1))
    calib = _calib(n=6)
    scores = block_scores(model, adapter, calib, batch_size=3, device=torch.device("cpu"), progress=False)
    assert len(calls) == 2 * 2  # 2 blocks x 2 batches: every block runs once per batch
    with torch.no_grad():
        hs = model(input_ids=calib, output_hidden_states=True).hidden_states
    # hidden_states[0] is block 0's input, hidden_states[1] its output (the last entry is normed)
    cos0 = torch.nn.functional.cosine_similarity(hs[0].double(), hs[1].double(), dim=-1).mean().item()
    assert scores.cosine[0] == pytest.approx(cos0, abs=1e-6)
    assert scores.bi == pytest.approx([1 - c for c in scores.cosine])
    assert scores.tokens == calib.numel()


# ----- exact parameter counts -------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_param_count_is_exact(family: str, tied: bool) -> None:
    """Predicted count == sum(p.numel()) of the real compressed model (non-uniform widths)."""
    slice_head = tied  # cover both head settings without doubling the runtime
    model = make_model(family, tied)
    adapter = get_adapter(model)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.3, schedule="layer-redundancy", slice_head=slice_head),
                         _calib(), progress=False)
    planned = ResidualWidths.from_dict(result.report["widths"])
    predicted = compressed_param_count(make_model(family, tied), adapter, planned)  # from the dense model
    assert predicted == result.report["params_after"] == _n_params(model)
    # arbitrary widths (every point different), compressed with the PCA machinery directly
    widths = ResidualWidths(45, (None, None) if adapter.parallel else (45, 30), (52 if adapter.parallel else 20,
                                                                                  33 if slice_head else 64))
    fresh = make_model(family, tied)
    predicted = compressed_param_count(fresh, adapter, widths)
    assert predicted == _count_by_compressing(fresh, widths)


def _count_by_compressing(model: torch.nn.Module, widths: ResidualWidths) -> int:
    """Compress ``model`` to exactly ``widths`` with the PCA machinery and count its parameters."""
    from slimformer.calib.rotate_pass import rotate_and_slice
    from slimformer.calib.runner import capture_block_inputs
    from slimformer.core.fuse import fuse
    from slimformer.methods.slicegpt.apply import PCAChooser

    adapter = get_adapter(model)
    fuse(model, adapter)
    inputs = capture_block_inputs(model, adapter, _calib(), 8, torch.device("cpu"), False)
    slice_head = widths.out[-1] != model.config.hidden_size
    rotate_and_slice(model, adapter, inputs, PCAChooser(64, widths.of, 0.01, slice_head), torch.device("cpu"), False)
    return _n_params(model)


# ----- target_params ----------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_target_params_quarter_every_family(family: str, tied: bool) -> None:
    model = make_model(family, tied)
    result = sf.compress(model, sf.SliceGPTConfig(target_params=0.25), _calib(), progress=False)
    r = result.report
    assert r["target_params"]["requested"] == 0.25
    assert r["target_params"]["achieved"] == pytest.approx(r["removed_fraction"], abs=1e-12)
    assert abs(r["removed_fraction"] - 0.25) <= 0.01
    assert r["params_after"] == _n_params(model)


@pytest.mark.parametrize("schedule", ["layer-redundancy", "global"])
@pytest.mark.parametrize("family", ["qwen3", "opt", "phi"])
def test_target_params_non_uniform(family: str, schedule: str) -> None:
    model = make_model(family, tied=True)
    r = sf.compress(model, sf.SliceGPTConfig(target_params=0.3, schedule=schedule), _calib(), progress=False).report
    assert abs(r["removed_fraction"] - 0.3) <= 0.01
    assert len(set(r["widths"]["out"][:-1]) | {r["widths"]["embed"]}) > 1  # really non-uniform


def test_target_params_unreachable_is_clear() -> None:
    model = make_model("llama")
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match="at most .* can be removed"):
        plan_schedule(model, adapter, Uniform(), target_params=0.95)
    with pytest.raises(ValueError, match="already removes .* smaller slicing_base"):
        plan_schedule(model, adapter, LayerRedundancy(slicing_base=0.5), [0.2, 0.1], target_params=0.05)


# ----- layer-redundancy end to end --------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_layer_redundancy_end_to_end(tmp_path: Path, family: str) -> None:
    model = make_model(family)
    adapter = get_adapter(model)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.35, schedule="layer-redundancy"), _calib(),
                         progress=False)
    r = result.report
    assert r["schedule"] == "layer-redundancy" and len(r["scores"]["bi"]) == 2 and len(r["scores"]["cosine"]) == 2
    widths = ResidualWidths.from_dict(r["widths"])
    assert widths.embed != widths.out[0]  # non-uniform
    assert sum(r["layer_sparsity"]) / 2 == pytest.approx(0.35)
    # shapes of every reader/writer/shortcut match the planned widths
    for i, block in enumerate(adapter.get_layers(model)):
        w_in, w_mid, w_out = widths.block_in(i), widths.mid[i], widths.out[i]
        after_attn = w_out if adapter.parallel else w_mid
        assert get_module(block, adapter.q).weight.shape[1] == w_in
        assert get_module(block, adapter.o).weight.shape[0] == after_attn
        assert get_module(block, adapter.down).weight.shape[0] == w_out
        assert block.attn_shortcut.weight.shape == (after_attn, w_in)
        if not adapter.parallel:
            assert get_module(block, adapter.up).weight.shape[1] == w_mid
            assert block.mlp_shortcut.weight.shape == (w_out, w_mid)
    assert result.plan.embed_width == widths.embed and result.plan.head_width == 64
    # save / load round trip gives the same logits
    out = result.save(tmp_path / family)
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded) - _logits(model)).abs().max().item() <= 1e-5
    saved = json.loads((Path(out) / "slimformer_report.json").read_text())
    assert saved["widths"] == r["widths"] and saved["scores"]["bi"] == r["scores"]["bi"]
    # generation with the KV cache works and agrees with step-by-step argmax
    prompt = _probe()[:1, :5]
    gen = loaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            nxt = loaded(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(gen, ids)


# ----- CLI --------------------------------------------------------------------------


def test_cli_schedule_and_target_params(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lr"
    code = main(["compress", str(stories_dir), "--method", "slicegpt", "--schedule", "layer-redundancy",
                 "--target-params", "0.25", "--calib", str(tinystories_train), "--calib-samples", "4",
                 "--calib-seqlen", "64", "--out", str(out), "--no-progress"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "target params: requested 25.00% removed" in stdout
    report = json.loads((out / "slimformer_report.json").read_text())
    assert abs(report["target_params"]["achieved"] - 0.25) <= 0.01
    assert report["config"]["schedule"] == "layer-redundancy" and len(report["scores"]["bi"]) == 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "0.2", "--schedule", "layer-redundancy", "--slicing-base", "0.3"], "must not exceed sparsity"),
        (["--target-params", "1.5"], "target_params must be in (0, 1)"),
        (["--sparsity", "0.2", "--target-params", "0.2"], "exactly one of sparsity"),
        (["--sparsity", "0.2", "--schedule", "bogus"], "argument --schedule: invalid choice: 'bogus'"),
        (["--sparsity", "0.85", "--schedule", "layer-redundancy", "--slicing-base", "0.0"], ">= 100%"),
    ],
)
def test_cli_schedule_errors(extra: list[str], message: str, tmp_path: Path, stories_dir: Path,
                             tinystories_train: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["compress", str(stories_dir), "--method", "slicegpt", "--calib", str(tinystories_train),
                 "--calib-samples", "4", "--calib-seqlen", "64", "--out", str(tmp_path / "o"), "--no-progress"] + extra)
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("slimformer: error: ") and message in err, err
    assert not (tmp_path / "o").exists()
