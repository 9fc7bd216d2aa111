"""Generate the frozen format-2 fixtures ``tests/fixtures/format_v2/<feature>/``.

One tiny random saved model (fp32, seeded) per plan feature format 2 carries, each
with an ``expected.json`` of logits on fixed token ids:

* ``slicegpt``       SliceGPT on an untied llama (rotated, shortcut matrices);
* ``slicegpt_tied``  SliceGPT on a tied llama (the rotation unties the head);
* ``fasp_channels``  FASP with value channels per head (``v_head_dim < head_dim``);
* ``magnitude_heads`` magnitude pruning of whole kv-head groups (``n_heads``, ``n_kv_heads``)
                     on a tied llama (``tied_head``: the head is the embedding, stored once);
* ``modegpt_qk``     MoDeGPT with q/k compression (``qk_index``, ``qk_head_dim``);
* ``disp``           DISP gather/scatter residual channel sets (``fused=false``,
                     ``attn_in_index`` ...), exported from seeded random hard masks.

Every later slimformer must load each one with identical logits, both with
``slimformer.load_model`` and with ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` (tests/test_format_fixture.py). These fixtures are FROZEN:
run this script once, when format 2 was introduced, and never again on an existing
fixture (regenerating one would hide exactly the incompatibilities it exists to
catch). A new format version gets a new ``format_v<N>/`` directory and its own script.

    python scripts/make_format_fixtures_v2.py tests/fixtures/format_v2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.arch import get_adapter
from slimformer.core.plan import FORMAT_VERSION, plan_from_model
from slimformer.io.format import save_compressed
from slimformer.methods.disp.export import export_disp
from slimformer.methods.disp.masks import BlockMasks, block_shapes, full_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import make_model  # noqa: E402

#: smaller than tiny_models' default (all fixtures together stay well under 2 MB)
VOCAB = 64
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, head_dim=8)


def _calib() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))


def _compressed(family: str, tied: bool, config: Any) -> Callable[[Path], tuple[torch.nn.Module, Path]]:
    def make(out: Path) -> tuple[torch.nn.Module, Path]:
        model = make_model(family, tied=tied, seed=0, **SMALL)
        result = sf.compress(model, config, _calib(), progress=False, seed=0)
        result.report["seconds"] = 0.0  # keep the committed files free of machine-specific values
        result.report["peak_rss_mb"] = 0.0
        return result.model, Path(result.save(out))
    return make


def _disp(out: Path) -> tuple[torch.nn.Module, Path]:
    """DISP without training: export seeded random hard masks (what DISP's training produces)."""
    model = make_model("llama", seed=0, **SMALL)
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(1)
    masks = [BlockMasks(**{k: (torch.rand(m.numel(), generator=g) < 0.6).float() for k, m in bm.items()})
             for bm in full_masks(block_shapes(model, adapter))]
    export_disp(model, adapter, masks)
    section = {"method": "disp", "plan": plan_from_model(model, adapter).to_dict()}
    return model, save_compressed(model, out, section)


FIXTURES: dict[str, Callable[[Path], tuple[torch.nn.Module, Path]]] = {
    "slicegpt": _compressed("llama", False, sf.SliceGPTConfig(sparsity=0.25)),
    "slicegpt_tied": _compressed("llama", True, sf.SliceGPTConfig(sparsity=0.25)),
    "fasp_channels": _compressed("llama", False, sf.FASPConfig(sparsity=0.4, attention="channels")),
    "magnitude_heads": _compressed("llama", True, sf.MagnitudeConfig(sparsity=0.5, attention="heads")),
    "modegpt_qk": _compressed("llama", False, sf.MoDeGPTConfig(sparsity=0.4, modules="mlp,qk",
                                                                 schedule="uniform")),
    "disp": _disp,
}

#: what each fixture must show in its plan (so a fixture cannot silently miss its feature)
FEATURES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "slicegpt": lambda p: p["fused"] and not p["tied_head"] and p["blocks"][0]["attn_shortcut"],
    "slicegpt_tied": lambda p: p["fused"] and not p["tied_head"] and p["blocks"][0]["attn_shortcut"],
    "fasp_channels": lambda p: any(b["v_head_dim"] < b["head_dim"] for b in p["blocks"]),
    "magnitude_heads": lambda p: p["tied_head"] and any(b["n_kv_heads"] < 2 for b in p["blocks"]),
    "modegpt_qk": lambda p: any(b["qk_index"] is not None for b in p["blocks"]),
    "disp": lambda p: not p["fused"] and any(b["attn_in_index"] is not None for b in p["blocks"]),
}


def main(root: str, only: list[str] | None = None) -> None:
    assert FORMAT_VERSION == 2, "this script writes format 2 fixtures only"
    torch.set_num_threads(1)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(99))
    for name, make in FIXTURES.items():
        if only and name not in only:
            continue
        out = Path(root) / name
        if out.exists():
            raise SystemExit(f"{out} exists: frozen fixtures are never regenerated")
        model, path = make(out)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        section = json.loads((path / "config.json").read_text())["slimformer"]
        assert section["format_version"] == 2, section["format_version"]
        assert FEATURES[name](section["plan"]), f"{name}: the plan does not show its feature"
        loaded, _ = sf.load_model(path)
        with torch.no_grad():
            assert (loaded(input_ids=ids).logits - logits).abs().max().item() <= 1e-5
        (path / "expected.json").write_text(json.dumps({"input_ids": ids.tolist(), "logits": logits.tolist()}) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/format_v2", sys.argv[2:] or None)
