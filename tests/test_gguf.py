"""GGUF export, checked by running the file in llama.cpp (llama-cpp-python, the ``gguf`` extra).

Every exported model is loaded by llama.cpp and its logits are compared with the transformers
model's on the same tokens (f32 weights, f32 KV cache): max |Δlogit| <= 1e-3 relative to the
largest logit, and the same greedy continuation of 32 tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

import slimformer as sf
from slimformer.cli import main
from slimformer.io.gguf_export import ExportError, export_gguf, interleave_rope_rows
from slimformer.io.targets import gguf_arch, gguf_blockers, head_counts

import llama_cpp  # llama-cpp-python, in the test extras: builds llama.cpp (``make test`` installs it)

REL_TOL = 1e-3
GREEDY = 32


def _config(family: str, **kw: object):
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[family]
    base = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, intermediate_size=128, num_attention_heads=8,
                num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=False, head_dim=8)
    base.update(kw)
    return cls(**base)


def _model(family: str, seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, **kw)).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong norm mapping cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def _calib(vocab: int, n: int = 16, t: int = 32) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(1))


class LlamaCpp:
    """One llama.cpp model (f32 KV cache, one thread), closed after use."""

    def __init__(self, path: Path, n_ctx: int = 256) -> None:
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=1,
                                   verbose=False, type_k=0, type_v=0)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)])

    def greedy(self, ids: list[int], n: int) -> list[int]:
        """``n`` greedy tokens after ``ids``, decoded one at a time with the KV cache."""
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            out.append(int(np.asarray(self.llm.scores[self.llm.n_tokens - 1]).argmax()))
            self.llm.eval([out[-1]])
        return out

    def close(self) -> None:
        self.llm.close()


def _hf_greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def assert_runs_like(model: torch.nn.Module, gguf_path: Path, ids: list[int], greedy: int = GREEDY,
                     rel_tol: float = REL_TOL) -> float:
    """llama.cpp's logits on ``ids`` match ``model``'s, and so does the greedy continuation."""
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    cpp = LlamaCpp(gguf_path)
    try:
        got = cpp.logits(ids)
        rel = float(np.abs(got - ref).max() / np.abs(ref).max())
        assert rel <= rel_tol, f"max |Δlogit| {rel:.2e} relative"
        if greedy:
            assert cpp.greedy(ids, greedy) == _hf_greedy(model, ids, greedy)
    finally:
        cpp.close()
    return rel


def test_rope_reordering_matches_half_split_rotation() -> None:
    """Rotating adjacent pairs of the reordered rows == HF's rotate_half on the original rows."""
    n_heads, hd, pos = 3, 8, 5
    x = torch.randn(n_heads * hd, dtype=torch.float64)
    theta = pos * 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # [hd/2]
    cos, sin = torch.cat([theta.cos()] * 2), torch.cat([theta.sin()] * 2)
    h = x.view(n_heads, hd)
    hf = h * cos + torch.cat([-h[:, hd // 2:], h[:, : hd // 2]], dim=1) * sin  # HF: pairs (i, i + hd/2)
    y = interleave_rope_rows(x, n_heads).view(n_heads, hd // 2, 2)
    c, s = theta.cos(), theta.sin()
    cpp = torch.stack([y[..., 0] * c - y[..., 1] * s, y[..., 0] * s + y[..., 1] * c], dim=-1)  # pairs (2i, 2i+1)
    assert torch.allclose(interleave_rope_rows(hf.reshape(-1), n_heads), cpp.reshape(-1))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_non_uniform_fasp_model_runs_in_llama_cpp(family: str, tmp_path: Path) -> None:
    """FASP with whole GQA groups and the global schedule: per-layer heads and MLP widths (deci)."""
    model = _model(family, qkv_bias=True) if family == "qwen2" else _model(family)
    result = sf.compress(model, sf.FASPConfig(target_params=0.3, schedule="global", exportable="gguf"),
                         _calib(96), progress=False)
    saved = Path(result.save(tmp_path / "pruned"))
    plan = json.loads((saved / "config.json").read_text())["slimformer"]["plan"]
    heads = head_counts(plan, {"num_attention_heads": 8, "num_key_value_heads": 4})
    mlp = [b["mlp_width"] for b in plan["blocks"]]
    assert any(h < (8, 4) for h in heads) and any(w < 128 for w in mlp) and len(set(zip(heads, mlp))) > 1
    assert gguf_arch(plan, {"num_attention_heads": 8, "num_key_value_heads": 4}) == "deci"
    out = tmp_path / "pruned.gguf"
    assert main(["export", str(saved), "--to", "gguf", "--out", str(out)]) == 0
    loaded, _ = sf.load_model(saved)
    ids = _calib(96, 1, 24)[0].tolist()
    assert_runs_like(loaded, out, ids)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_uniform_head_pruning_uses_the_family_arch_and_saves_plain(family: str, tmp_path: Path) -> None:
    model = _model(family, tie_word_embeddings=True)
    result = sf.compress(model, sf.FASPConfig(sparsity=0.5, exportable="hf"), _calib(96), progress=False)
    saved = Path(result.save(tmp_path / "pruned"))  # uniform shapes: an ordinary config by default
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 8
    assert "auto_map" not in cfg and not (saved / "modeling_slimformer.py").exists()
    plain = AutoModelForCausalLM.from_pretrained(saved).eval()  # no trust_remote_code
    ids = torch.tensor([_calib(96, 1, 24)[0].tolist()])
    with torch.no_grad():
        assert (plain(ids).logits - result.model(ids).logits).abs().max().item() <= 1e-5
    # llama.cpp's qwen2 graph needs heads * head_dim == hidden: fewer heads go to deci
    assert gguf_arch(cfg["slimformer"]["plan"], cfg) == {"qwen3": "qwen3", "qwen2": "deci"}.get(family, "llama")
    out = export_gguf(saved, tmp_path / "p.gguf")
    assert_runs_like(plain, out, ids[0].tolist())


def test_stories260k_pruned_and_dense_run_in_llama_cpp(stories_dir: Path, tinystories_train: Path,
                                                        tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stories_dir)
    calib = sf.data.load(str(tinystories_train), tok, samples=16, seqlen=128, seed=0)
    dense, _ = sf.load_model(stories_dir)
    result = sf.compress(dense, sf.FASPConfig(target_params=0.2, schedule="global", exportable="gguf"), calib,
                         progress=False)
    saved = Path(result.save(tmp_path / "pruned", tokenizer=tok))
    out = tmp_path / "pruned.gguf"
    export_gguf(saved, out)
    prompt = tok("Once upon a time, there was a little girl named Lily.").input_ids
    pruned, _ = sf.load_model(saved)
    assert_runs_like(pruned, out, prompt)
    cpp = LlamaCpp(out)
    try:  # the tokenizer metadata: llama.cpp tokenizes text as the HF tokenizer does
        text = "Once upon a time, there was a little girl named Lily. She liked to play."
        assert cpp.llm.tokenize(text.encode(), add_bos=True) == tok(text).input_ids
    finally:
        cpp.close()
    dense_out = export_gguf(stories_dir, tmp_path / "dense.gguf")  # a dense HF directory exports too
    dense_model, _ = sf.load_model(stories_dir)
    assert_runs_like(dense_model, dense_out, prompt)
    # a model in memory with its tokenizer object (what a hub id gives): the same vocabulary
    mem_out = export_gguf(dense_model, tmp_path / "mem.gguf", tokenizer=tok)
    cpp = LlamaCpp(mem_out)
    try:
        assert cpp.llm.tokenize(text.encode(), add_bos=True) == tok(text).input_ids
    finally:
        cpp.close()


def test_shared_basis_slicegpt_of_stories260k_runs_in_llama_cpp(stories_dir: Path, tinystories_train: Path,
                                                                 tmp_path: Path) -> None:
    """SliceGPT with one basis is a plain Llama of hidden size d': plain transformers and llama.cpp run it."""
    model, tok = sf.load_model(stories_dir)
    calib = sf.data.load(str(tinystories_train), tok, samples=16, seqlen=128, seed=0)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25, basis="shared", slice_head=True), calib,
                         progress=False)
    saved = Path(result.save(tmp_path / "shared", tokenizer=tok))
    plain = AutoModelForCausalLM.from_pretrained(saved).eval()  # no trust_remote_code
    assert plain.config.hidden_size < 64 and not (saved / "modeling_slimformer.py").exists()
    prompt = tok("Once upon a time, there was a little girl named Lily.").input_ids
    with torch.no_grad():
        ids = torch.tensor([prompt])
        assert (plain(ids).logits - result.model(ids).logits).abs().max().item() <= 1e-5
    out = export_gguf(saved, tmp_path / "shared.gguf")
    assert_runs_like(plain, out, prompt)


def test_llama3_rope_scaling_and_quantised_dtypes(tmp_path: Path) -> None:
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = _model("llama", rope_parameters=rope, num_hidden_layers=2)
    ids = _calib(96, 1, 40)[0].tolist()
    assert_runs_like(model, export_gguf(model, tmp_path / "f32.gguf"), ids)
    for dtype, tol in (("f16", 2e-2), ("bf16", 5e-2), ("q8_0", 5e-2)):  # rounding of the weights only
        assert_runs_like(model, export_gguf(model, tmp_path / f"{dtype}.gguf", dtype=dtype), ids, greedy=0,
                         rel_tol=tol)


def test_blockers_name_the_structure_and_the_fix(tmp_path: Path) -> None:
    model = _model("llama")
    calib = _calib(96)
    channels = sf.compress(_model("llama"), sf.FASPConfig(sparsity=0.3), calib, progress=False)
    with pytest.raises(ExportError, match="--attention heads"):
        export_gguf(channels.model, tmp_path / "x.gguf")
    sliced = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    with pytest.raises(ExportError, match="rotated and sliced"):
        export_gguf(sliced.model, tmp_path / "x.gguf")
    q3 = sf.compress(_model("qwen3"), sf.FASPConfig(target_params=0.3, schedule="global", exportable="gguf"), calib,
                     progress=False)
    plan = json.loads(json.dumps(sf.core.plan.plan_from_model(q3.model, sf.arch.get_adapter(q3.model)).to_dict()))
    if len(set(b["mlp_width"] for b in plan["blocks"])) > 1:
        assert "q/k norms" in gguf_blockers(plan, q3.model.config.to_dict())[0]
    opt_plan = {"model_type": "opt", "blocks": []}
    assert "families" in gguf_blockers(opt_plan, {})[0]
    assert not list(tmp_path.iterdir())  # nothing written by a refused export


def test_exportable_hf_refuses_per_layer_schedules() -> None:
    with pytest.raises(ValueError, match="schedule 'uniform'"):
        sf.FASPConfig(sparsity=0.2, schedule="global", exportable="hf")
    assert sf.WandaSPConfig(sparsity=0.2, exportable="gguf").attention == "heads"
    assert sf.FASPConfig(sparsity=0.2, attention="none", exportable="gguf").attention == "none"


def test_export_to_hf_and_info_report_the_targets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = sf.compress(_model("llama"), sf.FASPConfig(sparsity=0.5, attention="heads"), _calib(96), progress=False)
    remote = Path(result.save(tmp_path / "remote", plain=False))
    assert main(["info", str(remote)]) == 0
    info = capsys.readouterr().out
    assert "plain transformers: yes after slimformer export" in info and "llama.cpp (GGUF): yes" in info
    assert main(["export", str(remote), "--to", "hf", "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert (plain(ids).logits - result.model(ids).logits).abs().max().item() <= 1e-5
    assert main(["info", str(tmp_path / "plain")]) == 0
    assert "runs in         plain transformers" in capsys.readouterr().out
    glob = sf.compress(_model("llama"), sf.FASPConfig(sparsity=0.3, attention="heads", schedule="global"), _calib(96),
                       progress=False)
    g = Path(glob.save(tmp_path / "glob"))
    assert main(["export", str(g), "--to", "hf", "--out", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ per layer" in err and not (tmp_path / "nope").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
