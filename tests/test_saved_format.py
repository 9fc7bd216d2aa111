"""Saved format: round trips, loading without slimformer, integrity errors, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import slimformer as sf
from slimformer.runtime.modeling_slimformer import SlimformerFormatError

from tiny_models import FAMILIES, VOCAB, make_model

SRC = Path(sf.__file__).resolve().parents[1]


def _calib(n: int = 8, t: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(0))


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 15), generator=torch.Generator().manual_seed(7))


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def saved_llama(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    model = make_model("llama")
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    out = result.save(tmp_path / "m")
    return Path(out), _logits(result.model, _probe())


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_every_family(tmp_path: Path, family: str, tied: bool) -> None:
    model = make_model(family, tied)
    dense = _logits(model, _probe())
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.0), _calib(), progress=False)
    out = result.save(tmp_path / family)
    loaded, _ = sf.load_model(out)
    got = _logits(loaded, _probe())
    assert (got - dense).abs().max().item() <= 1e-4
    assert (got - _logits(result.model, _probe())).abs().max().item() <= 1e-5
    # the parameter count in the report is the saved model's
    assert sum(p.numel() for p in loaded.parameters()) == result.report["params_after"]
    cfg = json.loads((Path(out) / "config.json").read_text())
    from slimformer.core.plan import FORMAT_VERSION

    assert cfg["slimformer"]["format_version"] == FORMAT_VERSION == 3
    assert cfg["slimformer"]["provenance"]["params_after"] == result.report["params_after"]


def test_sliced_round_trip_and_report(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, ref = saved_llama
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded, _probe()) - ref).abs().max().item() <= 1e-5
    report = json.loads((out / "slimformer_report.json").read_text())
    for key in ("params_before", "params_after", "removed_fraction", "seconds", "peak_rss_mb", "layers"):
        assert key in report
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in out.iterdir())  # no pickles


def _remote_code_logits(out: Path, ids: torch.Tensor, work: Path) -> torch.Tensor:
    """Logits of ``out`` loaded with plain transformers in a process where slimformer is not importable."""
    torch.save(ids, work / "ids.pt")
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.path = [p for p in sys.path if not p.startswith({str(SRC)!r})]
        assert importlib.util.find_spec("slimformer") is None, "slimformer must not be importable here"
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)
        ids = torch.load({str(work / 'ids.pt')!r}, weights_only=True)
        with torch.no_grad():
            torch.save(m(input_ids=ids).logits, {str(work / 'logits.pt')!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.load(work / "logits.pt", weights_only=True)


def test_loads_with_plain_transformers_without_slimformer(saved_llama: tuple[Path, torch.Tensor], tmp_path: Path) -> None:
    out, ref = saved_llama
    assert (_remote_code_logits(out, _probe(), tmp_path) - ref).abs().max().item() <= 1e-5


def test_stories260k_round_trip_three_ways(tmp_path: Path) -> None:
    """SliceGPT 25% on the real stories260k -> save -> slimformer / remote code / lm-eval HFLM."""
    from conftest import shared_path

    model_dir = shared_path("models", "stories260k")
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    model, tok = sf.load_model(model_dir)
    calib = sf.data.load(str(train), tok, samples=32, seqlen=256, seed=0)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, tokenizer=tok, progress=False)
    ids = calib.input_ids[:2, :128]
    ref = _logits(result.model, ids)
    out = Path(result.save(tmp_path / "stories"))
    loaded, tok2 = sf.load_model(out)
    assert tok2 is not None
    assert (_logits(loaded, ids) - ref).abs().max().item() <= 1e-5
    assert (_remote_code_logits(out, ids, tmp_path) - ref).abs().max().item() <= 1e-5
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
    lm = lm_eval_hf.HFLM(pretrained=loaded, tokenizer=tok2, batch_size=2)
    with torch.no_grad():
        assert (lm._model_call(ids).float() - ref).abs().max().item() <= 1e-5


def test_load_dtype_option(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, ref = saved_llama
    loaded, _ = sf.load_model(out, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert (_logits(loaded, _probe()).float() - ref).abs().max().item() < 0.5


def test_unknown_format_version(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, _ = saved_llama
    cfg = json.loads((out / "config.json").read_text())
    cfg["slimformer"]["format_version"] = 99
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimformerFormatError, match="format_version 99 is not supported"):
        sf.load_model(out)


def test_shape_mismatch_names_tensor(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, _ = saved_llama
    state = load_file(out / "model.safetensors")
    key = "model.layers.1.self_attn.q_proj.weight"
    state[key] = state[key][:, :-8].contiguous()
    save_file(state, out / "model.safetensors")
    with pytest.raises(SlimformerFormatError, match=key.replace(".", r"\.")):
        sf.load_model(out)


def test_truncated_weights(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, _ = saved_llama
    f = out / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(SlimformerFormatError, match="truncated or corrupt"):
        sf.load_model(out)


def test_missing_tensor(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, _ = saved_llama
    state = load_file(out / "model.safetensors")
    del state["model.layers.0.mlp_shortcut.weight"]
    save_file(state, out / "model.safetensors")
    with pytest.raises(SlimformerFormatError, match="mlp_shortcut.weight is missing"):
        sf.load_model(out)


def test_sharded_save_and_missing_shard(tmp_path: Path) -> None:
    from slimformer.io.format import save_compressed

    model = make_model("llama")
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    out = save_compressed(result.model, tmp_path / "sharded", result.section, max_shard_bytes=20_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded, _probe()) - _logits(result.model, _probe())).abs().max().item() <= 1e-5
    shards[-1].unlink()
    with pytest.raises(SlimformerFormatError, match="missing weight shard"):
        sf.load_model(out)


def test_save_refuses_non_empty_dir_and_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("llama")
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        result.save(busy)
    assert (busy / "keep.txt").exists()

    import slimformer.io.format as fmt

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(fmt, "_write_config", boom)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no half directory, no temp left


def test_generate_after_load_matches_stepwise_argmax(saved_llama: tuple[Path, torch.Tensor]) -> None:
    out, _ = saved_llama
    model, _ = sf.load_model(out)
    prompt = _probe()[:1, :5]
    gen = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, ids)


def test_info_command(saved_llama: tuple[Path, torch.Tensor], capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    out, _ = saved_llama
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "slicegpt" in text and "format_version  3" in text and "% removed" in text
    assert text.count("\n    ") >= 2  # one table row per layer
    assert main(["info", str(out.parent)]) == 2
    assert "not a slimformer output directory" in capsys.readouterr().err


def test_plain_export_refused_for_rotated_model(tmp_path: Path) -> None:
    from slimformer.io.format import PlainExportError

    result = sf.compress(make_model("llama"), sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    with pytest.raises(PlainExportError, match="residual stream was rotated"):
        result.save(tmp_path / "plain", plain=True)
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_plain_export_of_uniform_mlp_width(tmp_path: Path, family: str, tied: bool) -> None:
    """Uniform MLP-width pruning saves as an ordinary HF config that loads without remote code."""
    from transformers import AutoModelForCausalLM

    from slimformer.arch import get_adapter
    from slimformer.core.plan import plan_from_model
    from slimformer.core.shrink import keep_mlp_channels
    from slimformer.io.format import save_compressed

    model = make_model(family, tied)
    adapter = get_adapter(model)
    keep = torch.arange(0, 96, 2)  # 48 of 96 channels in every layer
    for block in adapter.get_layers(model):
        keep_mlp_channels(block, adapter, keep)
    section = {"method": "manual-mlp", "plan": plan_from_model(model, adapter).to_dict()}
    out = save_compressed(model, tmp_path / family, section, plain=True)
    assert not (out / "modeling_slimformer.py").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert "auto_map" not in cfg and cfg[adapter.mlp_width_config_attr] == 48
    plain = AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert (_logits(plain, _probe()) - _logits(model, _probe())).abs().max().item() <= 1e-5
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded, _probe()) - _logits(model, _probe())).abs().max().item() <= 1e-5
