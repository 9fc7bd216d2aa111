"""Interrupted runs: SIGKILL / SIGTERM an ``--offload disk`` run mid-way and a normal run while it
saves. Afterwards ``--out`` is absent or the previous output is intact, SIGTERM cleans up at
once, and after the next run no temporaries remain anywhere under the test's root."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # small matrices: threads only spin on a busy machine


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random Llama (16 blocks, 45 MB) big enough to interrupt, with stories260k's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import shared_path

    stories = shared_path("models", "stories260k")
    text = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    base = tmp_path_factory.mktemp("faults")
    model_dir = base / "big"
    torch.manual_seed(0)
    # narrow (fast eigh) but with a large untied vocabulary, so saving takes long enough to be interrupted
    cfg = LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=16, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=32768, max_position_embeddings=512, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (stories / f).exists():
            shutil.copy(stories / f, model_dir / f)
    calib = base / "calib.txt"
    calib.write_bytes(text.read_bytes()[:300_000])
    return {"model": model_dir, "calib": calib}


def _cmd(w: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "slimformer.cli", "compress", str(w["model"]), "--method", "slicegpt",
            "--sparsity", "0.2", "--calib", str(w["calib"]), "--calib-samples", "8", "--calib-seqlen", "128",
            "--no-progress", "--out", str(out), *extra]


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(".")]


def _start_and_signal(cmd: list[str], root: Path, ready, sig: int,
                      timeout: float = 300.0) -> subprocess.CompletedProcess:
    """Start ``cmd``; when ``ready(root)`` holds, stop the process at once, then send ``sig``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    t0 = time.monotonic()
    try:
        while not ready(root):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be interrupted:\n{err}")
            if time.monotonic() - t0 > timeout:
                pytest.fail("the run never reached the point to interrupt")
            time.sleep(0.001)
        if sig == signal.SIGKILL:
            proc.send_signal(signal.SIGSTOP)  # freeze it exactly here, then kill
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _shards_written(n: int):
    def ready(root: Path) -> bool:
        for tmp in _temporaries(root):
            if ".tmp-" in tmp.name and tmp.is_dir():
                try:
                    if sum(1 for f in os.scandir(tmp) if f.name.startswith("model-")) >= n:
                        return True
                except OSError:
                    pass
        return False
    return ready


def _saving(root: Path) -> bool:
    return any(".tmp-" in p.name and p.is_dir() for p in _temporaries(root))


def _finish(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_ENV)
    assert res.returncode == 0, res.stderr
    return res


def test_sigkill_offload_disk_midway(tmp_path: Path, workload: dict[str, Path]) -> None:
    out = tmp_path / "out"
    cmd = _cmd(workload, out, "--offload", "disk")
    res = _start_and_signal(cmd, tmp_path, _shards_written(3), signal.SIGKILL)
    assert res.returncode == -signal.SIGKILL
    assert not out.exists()
    assert _temporaries(tmp_path), "the kill came too late to leave anything behind"
    again = _finish(cmd)  # the next run removes the dead run's temporaries and says so
    assert "removed stale temporary" in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sigterm_offload_disk_midway_cleans_up_at_once(tmp_path: Path, workload: dict[str, Path]) -> None:
    out = tmp_path / "out"
    res = _start_and_signal(_cmd(workload, out, "--offload", "disk"), tmp_path, _shards_written(3), signal.SIGTERM)
    assert res.returncode == 130, res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == ["slimformer: interrupted"], res.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no temporaries, no activation files


@pytest.fixture(scope="module")
def previous_output(tmp_path_factory: pytest.TempPathFactory, workload: dict[str, Path]) -> Path:
    """A finished output of the workload, made once; each test works on its own copy."""
    out = tmp_path_factory.mktemp("previous") / "out"
    _finish(_cmd(workload, out))
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kill_during_save_keeps_previous_output(tmp_path: Path, workload: dict[str, Path], previous_output: Path,
                                                sig: int) -> None:
    out = tmp_path / "out"
    shutil.copytree(previous_output, out)
    before = _snapshot(out)
    again = _cmd(workload, out, "--overwrite", "--seed", "1")
    res = _start_and_signal(again, tmp_path, _saving, sig)
    assert res.returncode in (-signal.SIGKILL, 130), res.stderr
    assert _snapshot(out) == before  # the previous output, untouched
    if sig == signal.SIGTERM:  # cleaned up at once
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
        return
    _finish(again)  # after SIGKILL, the next run completes and no temporaries remain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert _snapshot(out) != before
