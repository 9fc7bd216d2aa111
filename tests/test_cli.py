"""CLI: happy path on the real stories260k model, and one-line errors that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimformer.cli import main

from tiny_models import make_model


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_then_eval(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                            tinystories_valid: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sliced"
    code, stdout, err = _run(
        ["compress", str(stories_dir), "--method", "slicegpt", "--sparsity", "0.25", "--calib", str(tinystories_train),
         "--calib-samples", "16", "--calib-seqlen", "128", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    assert "removed" in stdout
    report = json.loads((out / "slimformer_report.json").read_text())
    assert report["config"]["sparsity"] == 0.25 and report["layers"][0]["d_in"] == 48
    assert report["calibration"]["samples"] == 16 and len(report["calibration"]["sha256"]) == 64
    js = tmp_path / "ppl.json"
    code, stdout, err = _run(["eval", str(out), "--ppl", str(tinystories_valid), "--seqlen", "256",
                              "--max-tokens", "20000", "--json", str(js), "--no-progress"], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert set(res) >= {"ppl", "tokens", "seqlen", "data"} and res["seqlen"] == 256
    assert 1.0 < res["ppl"] < 200.0


@pytest.fixture
def bloom_dir(tmp_path: Path) -> Path:
    """A family slimformer does not describe (BLOOM: ALiBi, per-head fused qkv)."""
    from transformers import BloomConfig, BloomForCausalLM

    d = tmp_path / "bloom"
    BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=64)).save_pretrained(d)
    return d


@pytest.fixture
def short_text(tmp_path: Path) -> Path:
    p = tmp_path / "short.txt"
    p.write_text("Once upon a time there was a cat.\n")
    return p


BAD = {
    "sparsity": (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
    "negative": (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    "method": (["--method", "nosuch", "--sparsity", "0.1"], "unknown method 'nosuch'"),
    "calib_missing": (["--sparsity", "0.1", "--calib", "/nonexistent/calib.txt"], "file not found"),
    "device": (["--sparsity", "0.1", "--device", "quantum"], "unknown device 'quantum'"),
    "no_cuda": (["--sparsity", "0.1", "--device", "cuda:7"], "cuda:7"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_one_line_error_no_output(case: str, tmp_path: Path, stories_dir: Path,
                                             tinystories_train: Path, capsys: pytest.CaptureFixture) -> None:
    extra, message = BAD[case]
    argv = ["compress", str(stories_dir), "--out", str(tmp_path / "out"), "--no-progress"]
    if "--method" not in extra:
        argv += ["--method", "slicegpt"]
    if "--calib" not in extra:
        argv += ["--calib", str(tinystories_train)]
    code, _, err = _run(argv + extra, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("slimformer: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_unknown_architecture(tmp_path: Path, bloom_dir: Path, tinystories_train: Path, capsys) -> None:
    code, _, err = _run(["compress", str(bloom_dir), "--method", "slicegpt", "--sparsity", "0.1",
                         "--calib", str(tinystories_train), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "unsupported architecture model_type='bloom'" in err and "llama" in err
    assert not (tmp_path / "out").exists()


def test_calib_shorter_than_window(tmp_path: Path, stories_dir: Path, short_text: Path, capsys) -> None:
    code, _, err = _run(["compress", str(stories_dir), "--method", "slicegpt", "--sparsity", "0.1",
                         "--calib", str(short_text), "--calib-seqlen", "512", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "fewer than one window" in err
    assert not (tmp_path / "out").exists()


def test_output_dir_not_empty(tmp_path: Path, stories_dir: Path, tinystories_train: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    argv = ["compress", str(stories_dir), "--method", "slicegpt", "--sparsity", "0.1", "--calib",
            str(tinystories_train), "--calib-samples", "4", "--calib-seqlen", "64", "--out", str(out), "--no-progress"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    code, _, err = _run(argv + ["--overwrite"], capsys)  # --overwrite replaces slimformer outputs only
    assert code == 2 and "not a slimformer output" in err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    (out / "precious.txt").unlink()
    (out / "slimformer_report.json").write_text("{}")  # a previous slimformer output
    code, _, err = _run(argv + ["--overwrite"], capsys)
    assert code == 0, err
    assert (out / "config.json").exists() and not (out / "precious.txt").exists()


def test_missing_model_dir(tmp_path: Path, tinystories_train: Path, capsys) -> None:
    code, _, err = _run(["compress", str(tmp_path / "nomodel"), "--method", "slicegpt", "--sparsity", "0.1",
                         "--calib", str(tinystories_train), "--dry-run"], capsys)
    assert code == 2 and "not found" in err


def test_option_of_other_method_rejected(capsys) -> None:
    # every registered method's options are generated; a method's own options must be complete
    code, _, err = _run(["compress", "x", "--method", "slicegpt", "--calib", "y"], capsys)
    assert code == 2 and "--sparsity" in err
