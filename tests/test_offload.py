"""Sequential onloading (``--offload cpu|disk``): the result equals the in-memory run, the
output is complete and atomic, errors are clear, and peak memory stays near one block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slimformer as sf
from slimformer.calib.offload import open_offloaded, store_of
from slimformer.io.safetensors_io import read_tensors, write_tensors
from tiny_models import FAMILIES, VOCAB, make_model

REPO = Path(__file__).resolve().parents[1]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _assert_same_dirs(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape, k
        assert torch.equal(wa[k], wb[k]), k  # same operations in the same order: bitwise equal


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _ids(n: int = 6, t: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


CONFIGS = {
    "slicegpt": lambda: sf.SliceGPTConfig(sparsity=0.25),
    "slicegpt-lr": lambda: sf.SliceGPTConfig(target_params=0.15, schedule="layer-redundancy"),
    "fasp": lambda: sf.FASPConfig(sparsity=0.3),
    "modegpt": lambda: sf.MoDeGPTConfig(sparsity=0.3),
    "dotresize": lambda: sf.DOTResizeConfig(sparsity=0.25),
    "magnitude": lambda: sf.MagnitudeConfig(sparsity=0.3),
}
CASES = [(f, "slicegpt", "disk", tied) for f in FAMILIES for tied in (False, True)]
CASES += [("llama", m, mode, False) for m in CONFIGS if m != "slicegpt" for mode in ("cpu", "disk")]
CASES += [("opt", "fasp", "disk", True), ("phi", "modegpt", "disk", False), ("qwen2", "dotresize", "cpu", True)]


@pytest.mark.parametrize("family,method,mode,tied", CASES)
def test_offloaded_equals_in_memory(family: str, method: str, mode: str, tied: bool, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_model(family, tied).save_pretrained(src)
    ids = _ids()
    dense, _ = sf.load_model(src)
    calib = None if method == "magnitude" else ids
    mem = sf.compress(dense, CONFIGS[method](), calib, batch_size=4, progress=False)
    mem.save(tmp_path / "mem")
    off = sf.compress_offloaded(src, CONFIGS[method](), calib, tmp_path / "off", offload=mode, batch_size=4,
                                progress=False)
    _assert_same_dirs(tmp_path / "mem", tmp_path / "off")
    assert off.report["params_after"] == mem.report["params_after"]
    assert off.report["offload"] == mode
    index = json.loads((tmp_path / "off" / "model.safetensors.index.json").read_text())
    n_layers = dense.config.num_hidden_layers
    assert len(set(index["weight_map"].values())) == n_layers + 1  # one shard per block + the globals
    loaded, _ = sf.load_model(tmp_path / "off")
    with torch.no_grad():
        assert torch.equal(loaded(ids[:2]).logits, mem.model(ids[:2]).logits)
    assert _leftovers(tmp_path) == []  # no temporary or scratch directory left behind
    with pytest.raises(ValueError, match="load that directory"):
        off.save(tmp_path / "again")


def test_offload_cli_on_stories260k(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                                    tinystories_valid: Path) -> None:
    common = ["compress", str(stories_dir), "--method", "slicegpt", "--sparsity", "0.3", "--calib",
              str(tinystories_train), "--calib-samples", "16", "--calib-seqlen", "128", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, extra in (("mem", []), ("disk", ["--offload", "disk"])):
        res = subprocess.run([sys.executable, "-m", "slimformer.cli", *common, "--out", str(tmp_path / name), *extra],
                             capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    _assert_same_dirs(tmp_path / "mem", tmp_path / "disk")
    assert (tmp_path / "disk" / "tokenizer.json").exists()
    from slimformer.eval import perplexity

    model, tok = sf.load_model(tmp_path / "disk")
    ref, _ = sf.load_model(tmp_path / "mem")
    ppl = perplexity(model, tok, str(tinystories_valid), seqlen=128, max_tokens=4096)
    assert ppl.ppl == perplexity(ref, tok, str(tinystories_valid), seqlen=128, max_tokens=4096).ppl


def test_methods_that_need_every_block_are_refused(tmp_path: Path) -> None:
    make_model("llama").save_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match="cannot run offloaded.*slicegpt"):
        sf.compress_offloaded(tmp_path / "src", sf.PruneNetConfig(sparsity=0.2, episodes=1), None,
                              tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_bad_sources_and_outputs(tmp_path: Path) -> None:
    model = make_model("llama")
    (tmp_path / "bin").mkdir()
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # an old pickled checkpoint
    with pytest.raises(ValueError, match="safetensors"):
        open_offloaded(tmp_path / "bin", tmp_path / "o1")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_offloaded(tmp_path / "nowhere", tmp_path / "o2")
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        open_offloaded(tmp_path / "src", tmp_path / "busy")
    with pytest.raises(ValueError, match="cpu, disk"):
        open_offloaded(tmp_path / "src", tmp_path / "o3", activations="gpu")
    sf.compress(sf.load_model(tmp_path / "src")[0], sf.SliceGPTConfig(sparsity=0.2), _ids(),
                progress=False).save(tmp_path / "sliced")
    with pytest.raises(ValueError, match="already a slimformer-compressed"):
        open_offloaded(tmp_path / "sliced", tmp_path / "o4")


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    """A checkpoint whose block 1 is truncated fails while compressing, and no output appears."""
    src = tmp_path / "src"
    make_model("llama").save_pretrained(src, max_shard_size="100KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    victim = src / index["weight_map"]["model.layers.1.mlp.down_proj.weight"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="truncated"):
        sf.compress_offloaded(src, sf.SliceGPTConfig(sparsity=0.2), _ids(), out, progress=False)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_a_block_is_written_once(tmp_path: Path) -> None:
    make_model("llama").save_pretrained(tmp_path / "src")
    model = open_offloaded(tmp_path / "src", tmp_path / "out")
    store = store_of(model)
    try:
        store.load(0, torch.device("cpu"))
        store.release(0, write=True)
        assert all(p.device.type == "meta" for p in model.model.layers[0].parameters())
        with pytest.raises(RuntimeError, match="already compressed"):
            store.load(0, torch.device("cpu"))
    finally:
        sf.api.discard_offloaded(model)
    assert _leftovers(tmp_path) == []


def test_safetensors_reader_and_writer_round_trip(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(4).bfloat16(),
               "empty": torch.zeros(0, 3)}
    nbytes = write_tensors(tmp_path / "x.safetensors", tensors)
    assert nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    for reader in (load_file(tmp_path / "x.safetensors"), read_tensors(tmp_path / "x.safetensors", {k: k for k in tensors})):
        assert reader.keys() == tensors.keys()
        for k, t in tensors.items():
            assert torch.equal(reader[k], t) and reader[k].dtype == t.dtype


CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
import slimformer as sf
ids = torch.randint(0, 512, (8, 128), generator=torch.Generator().manual_seed(0))
r = sf.compress_offloaded(sys.argv[1], sf.SliceGPTConfig(sparsity=0.25), ids, sys.argv[2], offload="disk",
                          batch_size=8, progress=False)
print(json.dumps({"peak": r.report["peak_rss_mb"], "start": r.report["rss_at_start_mb"]}))
"""


@pytest.mark.heavy
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_disk_offload_peak_rss_on_a_2048x8_llama(tmp_path: Path) -> None:
    """Acceptance: random Llama hidden 2048, 8 layers (0.95 GB fp32): peak RSS growth while compressing
    with --offload disk < 40% of the model + one layer boundary of activations; result == in-memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=512, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "src")
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    del model
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "src"), str(tmp_path / "disk")],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    mem = json.loads(res.stdout.strip().splitlines()[-1])
    activations_mb = 8 * 128 * 2048 * 4 / 2**20
    growth = mem["peak"] - mem["start"]
    assert growth < 0.4 * model_mb + activations_mb, (growth, model_mb)
    ids = torch.randint(0, 512, (8, 128), generator=torch.Generator().manual_seed(0))
    dense, _ = sf.load_model(tmp_path / "src")
    sf.compress(dense, sf.SliceGPTConfig(sparsity=0.25), ids, batch_size=8, progress=False).save(tmp_path / "mem")
    del dense
    _assert_same_dirs(tmp_path / "mem", tmp_path / "disk")
