"""Generate the frozen format fixture ``tests/fixtures/format_v<N>/``.

Run once per format version and commit the output; every later slimformer must
still load it with identical logits (tests/test_format_fixture.py). Never
regenerate an existing version's fixture. (It made ``format_v1`` when FORMAT_VERSION was 1;
the format-2 fixtures, one per plan feature, come from ``scripts/make_format_fixtures_v2.py``.)

    python scripts/make_format_fixture.py tests/fixtures/format_v1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import slimformer as sf


def main(out: str) -> None:
    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    calib = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(0))
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False, seed=0)
    result.report["seconds"] = 0.0  # keep the committed files free of machine-specific values
    result.report["peak_rss_mb"] = 0.0
    path = Path(result.save(out))
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        logits = result.model(input_ids=ids).logits
    (path / "expected.json").write_text(json.dumps({"input_ids": ids.tolist(), "logits": logits.tolist()}) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/format_v1")
