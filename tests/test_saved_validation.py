"""Saved configs and weights are not trusted: schema validation before building, checksums,
``slimformer verify``, and loading without slimformer installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import slimformer as sf
from slimformer.arch import ALL_ADAPTERS
from slimformer.runtime.plan_schema import (
    ARCHITECTURE_PATTERN,
    SlimformerFormatError,
    file_sha256,
    validate_section,
)

from tiny_models import VOCAB, make_model

SRC = Path(sf.__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"
BIN = Path(sys.executable).parent / "slimformer"
CLI = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "slimformer.cli"]


def _calib(n: int = 8, t: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stories260k (it has a tokenizer, so ``eval --ppl`` runs) sliced by SliceGPT, saved once."""
    from conftest import shared_path

    model, tok = sf.load_model(shared_path("models", "stories260k"))
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    calib = sf.data.load(str(train), tok, samples=8, seqlen=64, seed=0)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, tokenizer=tok, progress=False)
    return Path(result.save(tmp_path_factory.mktemp("saved") / "stories", tokenizer=tok))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        cfg = json.loads((d / "config.json").read_text())
        edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return apply


def _plan(key: str, value: object) -> Callable[[Path], None]:
    return _edit_config(lambda c: c["slimformer"]["plan"].__setitem__(key, value))


def _raw_config(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "config.json").write_text(text)


def _flip_middle(d: Path) -> None:
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 3 // 4])


def _many_layers(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 200_000
    (d / "config.json").write_text(json.dumps(cfg))


def _many_layers_and_blocks(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 200_000
    blocks = cfg["slimformer"]["plan"]["blocks"]
    cfg["slimformer"]["plan"]["blocks"] = (blocks * (200_000 // len(blocks) + 1))[:200_000]
    (d / "config.json").write_text(json.dumps(cfg))


# name -> (corruption, a fragment of the one-line error)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing_full_width": (_edit_config(lambda c: c["slimformer"]["plan"].pop("full_width")), "plan.full_width is missing"),
    "full_width_0": (_plan("full_width", 0), "plan.full_width must be an integer"),
    "full_width_huge": (_plan("full_width", 10**12), "plan.full_width must be an integer"),
    "config_list": (_raw_config("[1, 2, 3]"), "must hold a JSON object, found a JSON list"),
    "config_number": (_raw_config("42"), "must hold a JSON object, found a JSON int"),
    "config_invalid_json": (_raw_config('{"slimformer": {'), "is not valid JSON"),
    "section_list": (_edit_config(lambda c: c.__setitem__("slimformer", [1])), "'slimformer' must be a JSON object"),
    "architecture_os": (_plan("architecture", "os"), "plan.architecture \"os\" is not a transformers"),
    "architecture_automodel": (_plan("architecture", "AutoModel"), "plan.architecture \"AutoModel\" is not"),
    "architecture_other_family": (_plan("architecture", "OPTForCausalLM"),
                                  "but slimformer.plan.architecture is \"OPTForCausalLM\""),
    "layers_200000": (_many_layers, "num_hidden_layers is 200000"),
    "layers_and_blocks_200000": (_many_layers_and_blocks, "lists 200000 blocks, more than"),
    "flipped_bytes": (_flip_middle, "is corrupt: its sha256 differs"),
    "truncated": (_truncate, "truncated"),
}


#: corruptions also run through the installed ``slimformer`` command in a fresh process
SUBPROCESS_CASES = ("flipped_bytes",)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_saved_model_is_refused(name: str, saved: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    """The API raises SlimformerFormatError; ``eval`` and ``verify`` print one error line, exit 2."""
    from slimformer.cli import main

    corrupt, fragment = CORRUPTIONS[name]
    bad = _copy(saved, tmp_path / name)
    corrupt(bad)
    t0 = time.perf_counter()
    with pytest.raises(SlimformerFormatError, match=re.escape(fragment)):
        sf.load_model(bad)
    if name == "layers_200000":  # (the 200000-block plan is a 30 MB config.json: parsing it takes a while)
        assert time.perf_counter() - t0 < 5, "a config claiming 200000 layers must be refused before building"
    from conftest import shared_path

    text = shared_path("data", "tinystories", "tinystories_valid_prefix.txt")
    for argv in (["eval", str(bad), "--ppl", str(text), "--seqlen", "64", "--max-tokens", "256", "--no-progress"],
                 ["verify", str(bad)]):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in err, (argv[0], err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("slimformer: error:") and fragment in lines[0], (argv[0], err)
        if name in SUBPROCESS_CASES and argv[0] == "verify":  # the installed command, in a fresh process
            proc = subprocess.run(CLI + argv, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, (argv[0], proc.stdout, proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
            errors = [line for line in proc.stderr.splitlines() if line.strip()]
            assert len(errors) == 1 and fragment in errors[0], (argv[0], proc.stderr[-2000:])


def test_fresh_save_records_checksums_and_verifies(saved: Path, capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["slimformer"]["weights_sha256"] == {"model.safetensors": file_sha256(saved / "model.safetensors")}
    assert (saved / "plan_schema.py").read_bytes() == (SRC / "slimformer" / "runtime" / "plan_schema.py").read_bytes()
    capsys.readouterr()
    assert main(["verify", str(saved), "--load"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ok: ") and "sha256 verified for 1 weight file" in out[0], out
    assert "forward pass" in out[0]
    assert main(["info", str(saved)]) == 0
    assert "slicegpt" in capsys.readouterr().out


def test_verify_old_fixture_without_checksums(capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    capsys.readouterr()
    assert main(["verify", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "no checksums recorded" in out
    assert out.count("\n") == 1


def test_verify_refuses_non_slimformer_dirs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    make_model("llama").save_pretrained(tmp_path / "dense")
    for target in (tmp_path / "dense", tmp_path / "nothing"):
        capsys.readouterr()
        assert main(["verify", str(target)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("slimformer: error:")


def test_sharded_and_offloaded_saves_record_every_shard(tmp_path: Path) -> None:
    from slimformer.io.format import save_compressed
    from slimformer.runtime.modeling_slimformer import check_saved

    result = sf.compress(make_model("llama"), sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    sharded = save_compressed(result.model, tmp_path / "sharded", result.section, max_shard_bytes=20_000)
    src = tmp_path / "src"
    make_model("llama").save_pretrained(src)
    sf.compress_offloaded(src, sf.SliceGPTConfig(sparsity=0.25), _calib(), tmp_path / "off", offload="cpu",
                          batch_size=4, progress=False)
    for out in (Path(sharded), tmp_path / "off"):
        shards = sorted(p.name for p in out.glob("model-*.safetensors"))
        assert len(shards) > 1
        recorded = json.loads((out / "config.json").read_text())["slimformer"]["weights_sha256"]
        assert recorded == {n: file_sha256(out / n) for n in shards}
        assert check_saved(str(out)).hashed == shards
        assert (out / "plan_schema.py").is_file()
        _flip_middle_of(out / shards[-1])
        with pytest.raises(SlimformerFormatError, match=f"{shards[-1]} is corrupt"):
            sf.load_model(out)


def _flip_middle_of(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def test_resave_replaces_stale_checksums(saved: Path, tmp_path: Path) -> None:
    """A section carried over from a loaded model (finetune, re-save) gets the new files' hashes."""
    from slimformer.io.format import read_section, save_compressed

    model, _ = sf.load_model(saved)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # different weights, same section
    out = save_compressed(model, tmp_path / "resaved", dict(read_section(saved)))
    assert read_section(out)["weights_sha256"]["model.safetensors"] == file_sha256(out / "model.safetensors")
    sf.load_model(out)


def test_loads_without_slimformer_and_checks_there_too(saved: Path, tmp_path: Path) -> None:
    """The shipped runtime imports its sibling plan_schema.py: plain transformers loads the
    model where slimformer is not importable, and refuses a corrupt copy the same way."""
    bad = _copy(saved, tmp_path / "bad")
    _flip_middle(bad)
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.path = [p for p in sys.path if not p.startswith({str(SRC)!r})]
        assert importlib.util.find_spec("slimformer") is None, "slimformer must not be importable here"
        import torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(saved)!r}, trust_remote_code=True)
        with torch.no_grad():
            assert torch.isfinite(m(input_ids=torch.arange(8)[None]).logits).all()
        assert "slimformer" not in sys.modules
        try:
            AutoModelForCausalLM.from_pretrained({str(bad)!r}, trust_remote_code=True)
        except ValueError as exc:
            assert type(exc).__name__ == "SlimformerFormatError" and "is corrupt" in str(exc), exc
            print("refused:", exc)
        else:
            raise SystemExit("corrupt weights loaded")
        """
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "refused:" in proc.stdout


def test_plan_schema_imports_nothing_heavy() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import plan_schema; "
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'safetensors', 'slimformer') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(SRC / "slimformer" / "runtime")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_family_class_is_reachable_and_nothing_else() -> None:
    """The loader builds a family's *ForCausalLM class because transformers maps its model_type to it;
    a plan naming another class (or a non-class) is refused."""
    from slimformer.runtime.modeling_slimformer import ACTIVATIONS, causal_lm_class
    from slimformer.runtime.plan_schema import ACTIVATION_NAMES

    for adapter in ALL_ADAPTERS:
        for model_type in adapter.model_types:
            cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
            assert ARCHITECTURE_PATTERN.fullmatch(cls) and causal_lm_class(cls, model_type).__name__ == cls
    for arch, model_type in (("LlamaForCausalLM", "opt"), ("AutoModelForCausalLM", "llama"),
                             ("LlamaForCausalLM", "no_such_type")):
        with pytest.raises(SlimformerFormatError, match="slimformer.plan names"):
            causal_lm_class(arch, model_type)
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)


def test_validate_section_unit() -> None:
    """Torch-free checks on a section in memory, with and without header shapes."""
    section = json.loads((FIXTURE / "config.json").read_text())["slimformer"]
    base = json.loads((FIXTURE / "config.json").read_text())
    validate_section(section, base_config=base)
    good_block = section["plan"]["blocks"][0]
    cases = [
        (lambda s: s["plan"]["blocks"][0].__setitem__("d_in", 33), r"blocks\[0\]\.d_in must be an integer in \[1, 32\]"),
        (lambda s: s["plan"]["blocks"][0].__setitem__("attn_shortcut", 1), r"attn_shortcut must be true or false"),
        (lambda s: s["plan"]["blocks"][0].__setitem__("mlp_width", 4096), r"mlp_width is 4096, more than"),
        (lambda s: s["plan"].__setitem__("norm_eps", float("nan")), r"norm_eps must be a positive finite"),
        (lambda s: s["plan"]["paths"].__setitem__("q", "__class__.x"), r"paths\.q must be a dotted module path"),
        (lambda s: s["plan"].__setitem__("blocks", []), r"plan\.blocks must be a non-empty list"),
        (lambda s: s["plan"].__setitem__("model_type", "opt"), r"model_type is \"llama\" but slimformer.plan.model_type"),
        (lambda s: s.__setitem__("weights_sha256", {"../x": "0" * 64}), r"not a plain file name"),
        (lambda s: s.__setitem__("format_version", 4), r"format_version 4 is not supported"),
    ]
    for edit, msg in cases:
        bad = json.loads(json.dumps(section))
        edit(bad)
        with pytest.raises(SlimformerFormatError, match=msg):
            validate_section(bad, base_config=base)
    assert good_block == section["plan"]["blocks"][0]
    shapes = {"model.layers.0.self_attn.q_proj.weight": (32, 24), "model.layers.5.mlp.up_proj.weight": (48, 24)}
    with pytest.raises(SlimformerFormatError, match="the weights hold layer 5 beyond"):
        validate_section(section, shapes)
