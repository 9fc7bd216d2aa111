"""Recovery fine-tuning with LoRA: exact merges, the saved result, clear errors, and a real recovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.cli import main
from slimformer.data import DataError
from slimformer.finetune import (
    FinetuneConfig, _micro_step, attach_lora, lr_factor, merge_lora, resolve_targets, train_lora,
)

from test_saved_format import _remote_code_logits
from tiny_models import VOCAB, make_model

ALL_LLAMA = ("q", "k", "v", "o", "gate", "up", "down", "attn_shortcut", "mlp_shortcut")


def _stream(n: int = 4000, seed: int = 0) -> torch.Tensor:
    """A ``[n]`` token stream with some structure (a noisy repeating pattern) so training has signal."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) * 7 % VOCAB
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.2, noise, base)


def _sliced(family: str = "llama", sparsity: float = 0.3) -> sf.CompressionResult:
    calib = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    return sf.compress(make_model(family), sf.SliceGPTConfig(sparsity=sparsity), calib, progress=False)


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(123))


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _small(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"steps": 4, "lr": 1e-2, "batch": 4, "seqlen": 16, "lora_dropout": 0.0, **kw})


@pytest.mark.parametrize("family,targets", [
    ("llama", ALL_LLAMA),
    ("opt", ("q", "k", "v", "o", "up", "down", "attn_shortcut", "mlp_shortcut")),
    ("phi", ("q", "k", "v", "o", "up", "down", "attn_shortcut")),
])
def test_merged_logits_equal_peft_logits(family: str, targets: tuple[str, ...]) -> None:
    model = _sliced(family).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model, resolved = attach_lora(model, _small(targets=targets))
    assert set(resolved) == set(targets)
    assert torch.allclose(_logits(peft_model, _probe()), _logits(peft_model.get_base_model(), _probe()))  # B = 0
    log = train_lora(peft_model, _stream(), _small(targets=targets), progress=False)
    assert log.steps_done == 4 and log.tokens_seen == 4 * 4 * 16
    lora_logits = _logits(peft_model, _probe())
    merged = merge_lora(peft_model)
    assert (_logits(merged, _probe()) - lora_logits).abs().max().item() <= 1e-5
    after = dict(merged.named_parameters())
    assert set(after) == set(before)  # same tensors, same shapes: a plain compressed model again
    changed = {n for n in before if (after[n] - before[n]).abs().max() > 1e-4}
    for role in targets:  # every targeted kind of linear really moved (so the equality above means something)
        assert any(n.endswith(f"{resolved[role][0].rsplit('.', 1)[-1]}.weight") for n in changed), role
    assert not any("embed" in n or "norm" in n for n in changed)


def test_finetune_saves_a_normal_model_and_the_adapter(tmp_path: Path) -> None:
    from peft import PeftModel

    orig = tmp_path / "sliced"
    compressed = _sliced()
    compressed.save(orig)
    res = sf.finetune(orig, _stream(), _small(targets=ALL_LLAMA, steps=3), keep_adapter=tmp_path / "adapter",
                      progress=False)
    assert res.record["merge_max_abs_logit_diff"] <= 1e-5
    assert res.record["steps_done"] == 3 and res.record["targets"]["mlp_shortcut"] == 2
    ref = _logits(res.model, _probe())
    out = Path(res.save(tmp_path / "ft"))
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded, _probe()) - ref).abs().max().item() <= 1e-5
    assert (_remote_code_logits(out, _probe(), tmp_path) - ref).abs().max().item() <= 1e-5
    assert (_logits(sf.load_model(orig)[0], _probe()) - ref).abs().max().item() > 1e-4  # fine-tuning changed it
    base, _ = sf.load_model(orig)  # adapter on top of the unmerged compressed model = merged model
    with_adapter = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    assert (_logits(with_adapter, _probe()) - ref).abs().max().item() <= 1e-5
    section = json.loads((out / "config.json").read_text())["slimformer"]
    original = json.loads((orig / "config.json").read_text())["slimformer"]
    # compression record intact (the checksums are those of the new weights)
    assert section.pop("weights_sha256") != original.pop("weights_sha256")
    assert {k: v for k, v in section.items() if k != "finetune"} == original
    ft = section["finetune"]
    assert ft["config"]["lora_r"] == 8 and ft["config"]["steps"] == 3 and ft["versions"]["peft"]
    assert ft["train_data"]["holdout_tail_tokens"] == 400 and ft["eval_data"]["tokens"] == 400
    assert ft["ppl_before"]["ppl"] > 1 and ft["ppl_after"]["ppl"] > 1
    report = json.loads((out / "slimformer_report.json").read_text())
    assert report["params_after"] == compressed.report["params_after"] and report["finetune"] == ft


def test_targets_by_role_and_hf_name_and_clear_errors() -> None:
    sliced = _sliced().model
    by_role = resolve_targets(sliced, ("q", "down"))
    assert by_role == resolve_targets(sliced, ("q_proj", "down_proj"))
    assert by_role["q"] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert set(resolve_targets(sliced, None)) == {"q", "k", "v", "o", "gate", "up", "down"}
    with pytest.raises(ValueError, match=r"unknown LoRA target\(s\) qproj, foo .*valid targets: q, k, v, o, gate"):
        resolve_targets(sliced, ("qproj", "foo"))
    with pytest.raises(ValueError, match="mlp_shortcut matches no module"):
        resolve_targets(make_model("llama"), ("mlp_shortcut",))  # a dense model has identity shortcuts
    with pytest.raises(ValueError, match="gate does not exist in a opt model"):
        resolve_targets(make_model("opt"), ("gate",))
    assert set(resolve_targets(make_model("opt"), None)) == {"q", "k", "v", "o", "up", "down"}


def test_bad_settings_and_short_data() -> None:
    for bad in ({"steps": 0}, {"lr": -1.0}, {"lora_r": 0}, {"grad_accum": 0}, {"max_minutes": 0}, {"dtype": "int8"},
                {"targets": ""}):
        with pytest.raises(ValueError):
            FinetuneConfig(**bad)
    sliced = _sliced()
    with pytest.raises(DataError, match=r"fewer than one batch of batch x seqlen = 4 x 16 = 64"):
        sf.finetune(sliced, _stream(60), _small(), eval_data=_stream(100), progress=False)
    with pytest.raises(DataError, match="held-out tail"):
        sf.finetune(sliced, _stream(100), _small(), progress=False)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings=128"):
        sf.finetune(sliced, _stream(), _small(seqlen=256), progress=False)


def test_max_minutes_grad_accum_and_bf16(tmp_path: Path) -> None:
    res = sf.finetune(_sliced(), _stream(), _small(steps=50, grad_accum=2, max_minutes=1e-6), progress=False)
    rec = res.record
    assert rec["steps_done"] == 1 and "max_minutes" in rec["stopped_early"]
    assert rec["tokens_seen"] == 2 * 4 * 16
    res = sf.finetune(_sliced(), _stream(), _small(steps=2, dtype="bfloat16", eval_every=1), progress=False)
    assert {p.dtype for p in res.model.parameters()} == {torch.bfloat16}
    assert len(res.record["eval_history"]) == 1 and res.record["dtype"] == "bfloat16"
    loaded, _ = sf.load_model(res.save(tmp_path / "bf16"))
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_grad_accum_equals_one_big_batch() -> None:
    peft_model, _ = attach_lora(_sliced().model, _small())
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    ids = _stream()[:64].view(4, 16)
    _micro_step(peft_model, ids, 1.0)
    whole = [p.grad.clone() for p in trainable]
    peft_model.zero_grad()
    _micro_step(peft_model, ids[:2], 0.5)
    _micro_step(peft_model, ids[2:], 0.5)
    assert max((p.grad - g).abs().max().item() for p, g in zip(trainable, whole)) <= 1e-6
    assert max(g.abs().max().item() for g in whole) > 1e-3


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 0.1) == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 10, 0.0) == pytest.approx(1.0)


def test_cli_recovers_stories260k(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                                  tinystories_valid: Path, capsys: pytest.CaptureFixture) -> None:
    """SliceGPT 30% on the real stories260k, then 20 LoRA steps on TinyStories train text; short data fails."""
    model, tok = sf.load_model(stories_dir)
    calib = sf.data.load(str(tinystories_train), tok, samples=16, seqlen=128, seed=42)
    sf.compress(model, sf.SliceGPTConfig(sparsity=0.3), calib, progress=False, tokenizer=tok).save(tmp_path / "s30")
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.\n" * 20)
    capsys.readouterr()
    code = main(["finetune", str(tmp_path / "s30"), "--data", str(short), "--out", str(tmp_path / "x"), "--seqlen", "128"])
    err = capsys.readouterr().err
    assert code == 2 and "fewer than one batch of batch x seqlen = 8 x 128" in err and err.count("\n") == 1
    js = tmp_path / "ft.json"
    argv = ["finetune", str(tmp_path / "s30"), "--data", str(tinystories_train), "--eval-data", str(tinystories_valid),
            "--out", str(tmp_path / "ft"), "--steps", "20", "--lr", "3e-3", "--batch", "4", "--seqlen", "128",
            "--eval-tokens", "6000", "--targets", ",".join(ALL_LLAMA), "--json", str(js), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "held-out perplexity" in capsys.readouterr().out
    rec = json.loads(js.read_text())
    assert rec["ppl_after"]["ppl"] < 0.8 * rec["ppl_before"]["ppl"]
    assert len(rec["eval_data"]["sha256"]) == 64 and rec["ppl_after"]["tokens"] == (6000 // 128) * 127
    assert main(["info", str(tmp_path / "ft")]) == 0
    info = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("finetune"))
    assert info.startswith("finetune        LoRA r=8 on attn_shortcut,down,gate") and ", 20 steps; held-out ppl" in info
    loaded, tok2 = sf.load_model(tmp_path / "ft")
    assert tok2 is not None
    ppl = sf.eval.perplexity(loaded, tok2, str(tinystories_valid), seqlen=128, max_tokens=6000, progress=False)
    assert ppl.ppl == pytest.approx(rec["ppl_after"]["ppl"], rel=1e-5)


@pytest.mark.parametrize("extra,message", [
    (["--targets", "q,bogus"], "unknown LoRA target(s) bogus"),
    (["--steps", "0"], "finetune steps must be an integer >= 1"),
    (["--seqlen", "4096"], "exceeds the model's max_position_embeddings"),
])
def test_cli_errors_are_one_line(tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    _sliced().save(tmp_path / "s")
    data = tmp_path / "d.txt"
    data.write_text("one two three\n")
    code = main(["finetune", str(tmp_path / "s"), "--data", str(data), "--out", str(tmp_path / "o"), "--seqlen", "16",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("slimformer: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def _reshaped(config) -> sf.CompressionResult:
    calib = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    return sf.compress(make_model("llama"), config, calib, progress=False)


RESHAPING = [sf.FASPConfig(sparsity=0.3), sf.MoDeGPTConfig(sparsity=0.3),
             sf.DISPConfig(target_params=0.3, steps=4, batch=2, seqlen=16)]


@pytest.mark.parametrize("config", RESHAPING, ids=["fasp", "modegpt", "disp"])
def test_linears_that_reshape_around_their_weight_train_in_weight_space(config) -> None:
    """Value channels / q-k dims pruned per head (pad, slice or scatter head dims) and DISP's
    gathered/scattered residual subsets: their forward reshapes around the weight, so peft's
    output-side LoRA does not fit (the leaderboard found the shape error). They get the same
    update in weight space; it trains, and merging is exact."""
    from slimformer.finetune.lora import WEIGHT_SPACE, WeightSpaceLoRA

    model = _reshaped(config).model
    special = {n for n, m in model.named_modules() if isinstance(m, WEIGHT_SPACE)}
    assert special  # the setting really produces such linears
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapped, resolved = attach_lora(model, _small())
    assert special <= {n for names in resolved.values() for n in names}
    assert sum(isinstance(m, WeightSpaceLoRA) for m in wrapped.modules()) == len(special)
    assert torch.equal(_logits(wrapped, _probe()), _logits(_reshaped(config).model, _probe()))  # B = 0: unchanged
    train_lora(wrapped, _stream(), _small(), progress=False)
    lora_logits = _logits(wrapped, _probe())
    merged = merge_lora(wrapped)
    assert (_logits(merged, _probe()) - lora_logits).abs().max().item() <= 1e-5
    after = dict(merged.named_parameters())
    assert set(after) == set(before) and all(after[n].shape == before[n].shape for n in before)
    moved = {n for n in before if (after[n] - before[n]).abs().max() > 1e-4}
    assert {f"{n}.weight" for n in special} <= moved  # every reshaping linear trained
    assert not any("lora_" in n for n, _ in merged.named_modules())


@pytest.mark.parametrize("config", [sf.FASPConfig(sparsity=0.3), sf.MoDeGPTConfig(sparsity=0.3)])
def test_a_kept_peft_adapter_leaves_head_reshaping_linears_frozen(config, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A peft adapter directory must load with peft alone, which cannot hold the weight-space
    updates: with ``keep_adapter`` those linears stay frozen with a warning, the rest train, and
    base + adapter equals the merged model; naming one of them is an error."""
    from peft import PeftModel

    pruned = _reshaped(config)
    pruned.save(tmp_path / "p")
    before = _logits(pruned.model, _probe())
    with caplog.at_level("WARNING", logger="slimformer.finetune.lora"):
        res = sf.finetune(tmp_path / "p", _stream(), _small(), keep_adapter=tmp_path / "a", progress=False)
    assert "head-reshaping linears" in caplog.text
    after = _logits(res.model, _probe())
    assert torch.isfinite(after).all() and not torch.allclose(after, before)  # the other targets trained
    with_adapter = PeftModel.from_pretrained(sf.load_model(tmp_path / "p")[0], str(tmp_path / "a")).eval()
    assert (_logits(with_adapter, _probe()) - after).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="pad or scatter pruned head dims") as info:
        sf.finetune(tmp_path / "p", _stream(), _small(targets=("v",)), keep_adapter=tmp_path / "b", progress=False)
    assert "\n" not in str(info.value) and "--keep-adapter" in str(info.value)


def test_disp_model_fine_tunes_and_saves(tmp_path: Path) -> None:
    """A DISP model (every linear reads or writes a residual subset) fine-tunes end to end, and the
    merged result saves and reloads with identical logits; a kept peft adapter is refused in one line."""
    pruned = _reshaped(RESHAPING[2])
    pruned.save(tmp_path / "d")
    res = sf.finetune(tmp_path / "d", _stream(), _small(steps=3), progress=False)
    assert res.record["merge_max_abs_logit_diff"] <= 1e-5 and res.record["trainable_params"] > 0
    assert 0 < res.record["weight_space_targets"] <= sum(res.record["targets"].values())
    out = Path(res.save(tmp_path / "ft"))
    ref = _logits(res.model, _probe())
    assert (_logits(sf.load_model(out)[0], _probe()) - ref).abs().max().item() <= 1e-5
    assert (_remote_code_logits(out, _probe(), tmp_path) - ref).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="DISP model") as info:
        sf.finetune(tmp_path / "d", _stream(), _small(), keep_adapter=tmp_path / "a", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "a").exists()
