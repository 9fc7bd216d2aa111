"""Bits-back storage (slimformer pack / unpack): round trips, gains, determinism, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import slimformer as sf
from slimformer.cli import main
from slimformer.io.bitsback import PackFormatError, decode, pack, unpack
from slimformer.runtime.plan_schema import file_sha256
from slimformer.io.bitsback.codec import (
    needed_corrections,
    pop_rotation,
    push_rotation,
    recover_bins,
)
from slimformer.io.bitsback.rotation import (
    AngleLayout,
    Quantiser,
    canonicaliser,
    rotation_from_angles,
    rotation_of,
)

from tiny_models import FAMILIES, VOCAB, make_model

REL_TOL = 1e-6  # acceptance: unpacked logits within 1e-6 relative of the packed model's


def _calib(n: int = 8, t: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(0))


def _probe(vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(123))


def _sliced_dir(family: str, tmp_path: Path) -> Path:
    model = make_model(family)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), _calib(), batch_size=4, progress=False)
    return Path(result.save(tmp_path / f"{family}-sliced"))


def _logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = sf.load_model(path)
    with torch.no_grad():
        return model(input_ids=x).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = a - b
    return (d.abs().max() / a.abs().max()).item(), (d.norm() / a.norm()).item()


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_every_family(family: str, tmp_path: Path) -> None:
    src = _sliced_dir(family, tmp_path)
    st = pack(src, tmp_path / "m.sfbb", progress=False)
    base = pack(src, tmp_path / "m0.sfbb", bitsback=False, progress=False)
    out = unpack(tmp_path / "m.sfbb", tmp_path / "unpacked", progress=False)
    x = _probe()
    max_rel, fro_rel = _rel(_logits(src, x), _logits(out, x))
    assert max_rel <= REL_TOL and fro_rel <= REL_TOL
    # every residual point is a group: embed + (mid + out) per block, (out) for parallel blocks
    n_layers = 2
    assert len(st.groups) == (1 + n_layers if family == "phi" else 1 + 2 * n_layers)
    assert st.file_bytes < base.file_bytes and st.bitsback_bits > st.correction_bits > 0
    # non-weight files are restored byte for byte, except config.json's weights_sha256: it is
    # re-recorded for the unpacked (rotated) weight file
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    cfg_src, cfg_out = (json.loads((d / "config.json").read_text()) for d in (src, out))
    sums = cfg_out["slimformer"].pop("weights_sha256")
    assert sums == {"model.safetensors": file_sha256(out / "model.safetensors")}
    assert cfg_src["slimformer"].pop("weights_sha256") != sums
    assert cfg_out == cfg_src
    # tensors outside every rotation group (reader biases, Qwen3 q/k norms) are bit-exact originals
    a, b = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    untouched = [k for k in a if k.endswith(("q_proj.bias", "k_proj.bias", "q_norm.weight", "fc1.bias"))]
    for k in untouched:
        assert _bytes(a[k]) == _bytes(b[k]), k
    emb = "model.decoder.embed_tokens.weight" if family == "opt" else "model.embed_tokens.weight"
    assert not torch.equal(a[emb], b[emb])  # rotated: a different, equivalent basis


def test_pack_is_deterministic_and_unpack_exact(tmp_path: Path) -> None:
    src = _sliced_dir("llama", tmp_path)
    pack(src, tmp_path / "a.sfbb", progress=False)
    pack(src, tmp_path / "b.sfbb", progress=False)
    assert (tmp_path / "a.sfbb").read_bytes() == (tmp_path / "b.sfbb").read_bytes()
    state, _ = decode(tmp_path / "a.sfbb", progress=False)
    out = unpack(tmp_path / "a.sfbb", tmp_path / "u", progress=False)
    written = load_file(str(out / "model.safetensors"))
    assert set(written) == set(state)
    assert all(_bytes(written[k]) == _bytes(state[k]) for k in state)
    # the unpacked directory also loads without slimformer, through remote code
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(hf(input_ids=_probe()).logits, _logits(out, _probe()))


def test_stories260k_sliced(stories_dir: Path, tinystories_train: Path, tmp_path: Path) -> None:
    model, tok = sf.load_model(stories_dir)
    calib = sf.data.load(str(tinystories_train), tok, samples=16, seqlen=128, seed=0)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    src = Path(result.save(tmp_path / "stories", tokenizer=tok))
    st = pack(src, tmp_path / "s.sfbb", progress=False)
    base = pack(src, tmp_path / "s0.sfbb", bitsback=False, progress=False)
    out = unpack(tmp_path / "s.sfbb", tmp_path / "u", progress=False)
    x = _probe(model.config.vocab_size)
    a, b = _logits(src, x), _logits(out, x)
    assert _rel(a, b)[1] <= REL_TOL and torch.equal(a.argmax(-1), b.argmax(-1))
    weight_saving = 1 - (8 * st.file_bytes - st.meta_bits) / (8 * base.file_bytes - base.meta_bits)
    assert 0.025 <= weight_saving <= 0.07  # the paper reports 3-5% of the total bits
    assert sf.load_model(out)[1] is not None  # tokenizer files came back too


def test_rotation_codec_is_exact() -> None:
    import constriction

    k, q = 9, Quantiser(12)
    coder = constriction.stream.stack.AnsCoder(np.arange(1, 200, dtype=np.uint32))
    before = coder.get_compressed().copy()
    bins, neg = pop_rotation(coder, k, q)  # bits-back: the rotation is decoded from existing bits
    assert coder.num_bits() < 32 * len(before)
    R = rotation_from_angles(q.centre(bins, AngleLayout(k).powers() < 0), neg, k)
    assert np.abs(R @ R.T - np.eye(k)).max() < 1e-13
    A = np.random.default_rng(0).standard_normal((k, k))
    L = A @ canonicaliser(A)
    assert np.abs(np.triu(L, 1)).max() < 1e-12 and (np.diag(L) > 0).all()
    assert np.abs(rotation_of(L @ R) - R).max() < 1e-12  # equivariant canonical form recovers R
    got, got_neg = recover_bins(L @ R, q, {})
    assert np.array_equal(got, bins) and got_neg == neg
    push_rotation(coder, k, q, got, got_neg)
    assert np.array_equal(coder.get_compressed(), before)  # the borrowed bits are returned exactly


def test_corrections_fix_unrecoverable_angles() -> None:
    k, q = 12, Quantiser(16)
    rng = np.random.default_rng(1)
    bins = np.array([rng.integers(0, n) for n in q.n_bins(AngleLayout(k).powers() < 0)])
    R = rotation_from_angles(q.centre(bins, AngleLayout(k).powers() < 0), False, k)
    L = np.tril(rng.standard_normal((k, k))) + 3 * np.eye(k)
    stored = (L @ R).astype(np.float32).astype(np.float64) + 1e-3 * rng.standard_normal((k, k))  # >> bin width
    assert not np.array_equal(recover_bins(stored, q, {})[0], bins)
    corr = needed_corrections(stored, q, bins, False)
    assert 0 < len(corr)
    got, neg = recover_bins(stored, q, corr)
    assert np.array_equal(got, bins) and not neg


def test_dense_model_packs_without_gain(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("qwen2", tied=True)
    model.save_pretrained(tmp_path / "dense")
    with caplog.at_level(logging.WARNING, logger="slimformer.io.bitsback"):
        st = pack(tmp_path / "dense", tmp_path / "d.sfbb", progress=False)
    assert "no rotational symmetry" in caplog.text and st.groups == [] and st.bitsback_bits == 0
    out = unpack(tmp_path / "d.sfbb", tmp_path / "u", progress=False)
    a, b = load_file(str(tmp_path / "dense" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b) and all(_bytes(a[k]) == _bytes(b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(input_ids=_probe()).logits, _logits(out, _probe()))


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("packed")
    src = _sliced_dir("opt", tmp)
    pack(src, tmp / "m.sfbb", progress=False)
    return tmp / "m.sfbb"


def _damaged(packed: Path, tmp_path: Path, how: str) -> Path:
    data = bytearray(packed.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x40
    elif how == "truncate":
        data = data[: len(data) - 1000]
    elif how == "magic":
        data[:4] = b"PK\x03\x04"
    elif how == "version":
        data[8] = 99
    bad = tmp_path / f"{how}.sfbb"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("how,message", [("flip", "corrupted"), ("truncate", "truncated"),
                                         ("magic", "not a slimformer pack file"), ("version", "upgrade slimformer")])
def test_bad_files_give_clear_errors_and_no_output(packed: Path, tmp_path: Path, how: str, message: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    bad = _damaged(packed, tmp_path, how)
    with pytest.raises(PackFormatError, match=message):
        unpack(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert main(["unpack", str(bad), str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimformer: error:") and message in err[0]
    assert not (tmp_path / "out2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_cli_pack_unpack(packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = packed.parent / "opt-sliced"
    assert main(["pack", str(src), str(tmp_path / "x.sfbb"), "--no-progress"]) == 0
    assert "bits/weight" in capsys.readouterr().out
    assert (tmp_path / "x.sfbb").read_bytes() == packed.read_bytes()
    assert main(["pack", str(src), str(tmp_path / "x.sfbb"), "--no-progress"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["unpack", str(tmp_path / "x.sfbb"), str(tmp_path / "u"), "--no-progress"]) == 0
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert cfg["slimformer"]["plan"]["model_type"] == "opt"
    assert main(["unpack", str(tmp_path / "x.sfbb"), str(tmp_path / "u"), "--no-progress"]) == 2  # not empty
    assert main(["pack", str(tmp_path / "missing"), str(tmp_path / "y.sfbb")]) == 2
    assert "not found" in capsys.readouterr().err


def test_float_coder_is_bit_exact_on_edge_tensors() -> None:
    import constriction

    from slimformer.io.bitsback import floatcode as fc

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(64, 33, generator=g), torch.ones(5), torch.tensor(3.0), torch.zeros(0),
               torch.tensor([-0.0, 0.0, float("inf"), float("-inf"), float("nan"), 1e-42]),
               torch.randn(9, generator=g).to(torch.bfloat16), torch.randn(9, generator=g).half(),
               torch.randn(4, generator=g).double(), torch.arange(6)]
    coder = constriction.stream.stack.AnsCoder()
    hists = [fc.head_histogram(t) if fc.dtype_name(t) in fc.FLOAT_LAYOUT else None for t in tensors]
    for t, h in zip(reversed(tensors), reversed(hists)):
        fc.push_tensor(coder, t, h)
    assert coder.num_bits() < 32 * 64 * 33  # the exponents of Gaussian weights cost well under 9 bits
    for t, h in zip(tensors, hists):
        u = fc.pop_tensor(coder, fc.dtype_name(t), list(t.shape), h)
        assert u.dtype == t.dtype and u.shape == t.shape and _bytes(u) == _bytes(t)
    assert coder.is_empty()


def test_self_check_refuses_an_incomplete_symmetry(packed: Path, tmp_path: Path) -> None:
    """A plan that hides a residual reader (OPT's positional embedding) would give a wrong model: refused."""
    import shutil

    src = tmp_path / "hidden"
    shutil.copytree(packed.parent / "opt-sliced", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["slimformer"]["plan"]["paths"]["pos_embed"] = None
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="self-check failed"):
        pack(src, tmp_path / "h.sfbb", progress=False)
    assert not (tmp_path / "h.sfbb").exists()
    pack(src, tmp_path / "h0.sfbb", bitsback=False, progress=False)  # the suggested fallback works
