"""Generate the frozen format-3 fixtures ``tests/fixtures/format_v3/<feature>/``.

One tiny random saved model (fp32, seeded) per plan feature format 3 adds, with an
``expected.json`` of logits on fixed token ids:

* ``slicegpt_keep_tied``  keep-tied SliceGPT on a tied llama: the head stays the (rotated,
  sliced) embedding, stored once (``tied_head``), and the final norm carries the head-input
  map ``M`` (plan ``head_proj``, tensor ``model.norm.proj.weight``).

Every later slimformer must load each one with identical logits, both with
``slimformer.load_model`` and with ``AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)`` (tests/test_format_fixture.py). These fixtures are FROZEN:
run this script once, when format 3 was introduced, and never again on an existing
fixture. A new format version gets a new ``format_v<N>/`` directory and its own script.

    python scripts/make_format_fixtures_v3.py tests/fixtures/format_v3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.core.plan import FORMAT_VERSION

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
        result.report["rss_at_start_mb"] = 0.0
        return result.model, Path(result.save(out))
    return make


FIXTURES: dict[str, Callable[[Path], tuple[torch.nn.Module, Path]]] = {
    "slicegpt_keep_tied": _compressed("llama", True, sf.SliceGPTConfig(sparsity=0.25, keep_tied=True)),
}

#: what each fixture must show in its plan (so a fixture cannot silently miss its feature)
FEATURES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "slicegpt_keep_tied": lambda p: p["fused"] and p["tied_head"] and p["head_proj"]
    and p["head_width"] == 32 and p["embed_width"] == 24,
}


def main(root: str, only: list[str] | None = None) -> None:
    assert FORMAT_VERSION == 3, "this script writes format 3 fixtures only"
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
        assert section["format_version"] == 3, section["format_version"]
        assert FEATURES[name](section["plan"]), f"{name}: the plan does not show its feature"
        loaded, _ = sf.load_model(path)
        with torch.no_grad():
            assert (loaded(input_ids=ids).logits - logits).abs().max().item() <= 1e-5
        (path / "expected.json").write_text(json.dumps({"input_ids": ids.tolist(), "logits": logits.tolist()}) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/format_v3", sys.argv[2:] or None)
