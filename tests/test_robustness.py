"""Bad input and faults as a new user meets them: every case exits 2 with exactly one
``slimformer: error:`` line on stderr, no traceback, nothing new anywhere under the test's
root (hidden entries included) and every pre-existing file byte-identical.

The reliability guarantees in the README's error-handling paragraph are the ones tested here
(interrupted runs: tests/test_faults.py; corrupt saved models: tests/test_saved_validation.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slimformer.cli import main

TRAIN_ARGS = ["--calib-samples", "4", "--calib-seqlen", "64", "--no-progress"]  # fast calibration


# ----- helpers ---------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): relative path -> sha256 or 'dir'/'link'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(root: Path, argv: list[str], capsys: pytest.CaptureFixture, *needles: str) -> str:
    """Run ``argv``; assert the one-line error contract and an untouched ``root``. Returns the message."""
    before = snapshot(root)
    code, _, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("slimformer: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    assert snapshot(root) == before, "files were created, removed or changed"
    return lines[0]


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, stories_dir_m: Path, train_m: Path) -> dict[str, Path]:
    """A previous slimformer output and a pack file of it, made once (outside any test root)."""
    base = tmp_path_factory.mktemp("made")
    sliced = base / "sliced"
    assert main(["compress", str(stories_dir_m), "--method", "slicegpt", "--sparsity", "0.25", "--calib",
                 str(train_m), *TRAIN_ARGS, "--out", str(sliced)]) == 0
    pack = base / "sliced.sfbb"
    assert main(["pack", str(sliced), str(pack), "--no-progress", "--no-verify"]) == 0
    return {"sliced": sliced, "pack": pack}


@pytest.fixture(scope="module")
def stories_dir_m() -> Path:
    from conftest import shared_path

    return shared_path("models", "stories260k")


@pytest.fixture(scope="module")
def train_m() -> Path:
    from conftest import shared_path

    return shared_path("data", "tinystories", "tinystories_train_prefix.txt")


@pytest.fixture
def root(tmp_path: Path, stories_dir_m: Path, train_m: Path, made: dict[str, Path]) -> Path:
    """The test's root: a model, calibration text, a previous output, a pack file and unrelated files."""
    r = tmp_path / "root"
    r.mkdir()
    shutil.copytree(stories_dir_m, r / "model")
    (r / "data").mkdir()
    (r / "data" / "calib.txt").write_bytes(train_m.read_bytes()[:200_000])
    (r / "precious").mkdir()
    (r / "precious" / "f").write_text("hi\n")
    shutil.copytree(made["sliced"], r / "sliced")
    shutil.copy(made["pack"], r / "sliced.sfbb")
    return r


def _compress(root: Path, *extra: str, model: Path | None = None, calib: Path | None = None,
              seqlen: str = "64") -> list[str]:
    return ["compress", str(model or root / "model"), "--method", "slicegpt", "--sparsity", "0.2",
            "--calib", str(calib or root / "data" / "calib.txt"), "--calib-samples", "4", "--calib-seqlen", seqlen,
            "--no-progress", *extra]


# ----- 1. --overwrite never deletes what the user did not name as an output -----------------------
def test_overwrite_refuses_ancestor_of_input_model(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(root), "--overwrite"), capsys, "contains the input")


def test_overwrite_refuses_the_input_itself(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(root / "model"), "--overwrite"), capsys, "is the input")


def test_overwrite_refuses_dir_holding_calibration_file(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(root / "data"), "--overwrite"), capsys, "contains the input")


def test_overwrite_refuses_unrelated_directory(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(root / "precious"), "--overwrite"), capsys,
                   "not a slimformer output")


def test_overwrite_offload_refuses_ancestor(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--offload", "disk", "--out", str(root), "--overwrite"), capsys,
                   "contains the input")


def test_overwrite_replaces_previous_output(root: Path, capsys: pytest.CaptureFixture) -> None:
    old = snapshot(root / "sliced")
    code, out, err = run_cli(_compress(root, "--out", str(root / "sliced"), "--overwrite"), capsys)
    assert code == 0, err
    assert snapshot(root / "sliced") != old  # replaced by the 20% model
    assert sorted(p.name for p in root.iterdir()) == ["data", "model", "precious", "sliced", "sliced.sfbb"]


def test_unpack_overwrite_rules(root: Path, capsys: pytest.CaptureFixture) -> None:
    pack = str(root / "sliced.sfbb")
    assert_refused(root, ["unpack", pack, str(root), "--overwrite", "--no-progress"], capsys, "contains the input")
    assert_refused(root, ["unpack", pack, str(root / "precious"), "--overwrite", "--no-progress"], capsys,
                   "not a slimformer output")


def test_pack_overwrite_only_replaces_pack_files(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, ["pack", str(root / "sliced"), str(root / "precious" / "f"), "--overwrite", "--no-progress"],
                   capsys, "not a file slimformer wrote")
    assert_refused(root, ["pack", str(root / "sliced"), str(root / "precious"), "--overwrite", "--no-progress"],
                   capsys, "is a directory")


def test_finetune_out_rules(root: Path, capsys: pytest.CaptureFixture) -> None:
    ft = ["finetune", str(root / "sliced"), "--data", str(root / "data" / "calib.txt"), "--steps", "1",
          "--no-progress", "--overwrite"]
    assert_refused(root, ft + ["--out", str(root)], capsys, "contains the input")
    assert_refused(root, ft + ["--out", str(root / "sliced")], capsys, "is the input")
    assert_refused(root, ft + ["--out", str(root / "precious")], capsys, "not a slimformer output")
    assert_refused(root, ft + ["--out", str(root / "new"), "--keep-adapter", str(root / "precious")], capsys,
                   "not a slimformer output")


# ----- 2. failures that used to come after the work ------------------------------------------------
@pytest.fixture
def readonly_dir(root: Path):
    """A directory under ``root`` that refuses writes (chmod for users, a read-only tmpfs for root)."""
    d = root / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    yield from _tmpfs(d, "ro,size=64k", "running as root and cannot mount a read-only tmpfs here")


def _tmpfs(d: Path, options: str, why_skip: str):
    """Mount a tmpfs with ``options`` on ``d`` for the test (skipped where mounting is not permitted)."""
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True).returncode:
        d.rmdir()
        pytest.skip(why_skip)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_readonly_out(root: Path, readonly_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(readonly_dir / "x")), capsys, "cannot write")
    assert_refused(root, ["unpack", str(root / "sliced.sfbb"), str(readonly_dir / "x"), "--no-progress"], capsys,
                   "cannot write")
    assert_refused(root, ["pack", str(root / "sliced"), str(readonly_dir / "x.sfbb")], capsys, "cannot write")
    assert_refused(root, ["export", str(root / "model"), "--to", "gguf", "--out", str(readonly_dir / "x.gguf")],
                   capsys, "cannot write")


@pytest.fixture
def small_fs(root: Path):
    """A 256 KiB tmpfs under ``root`` (full after a few files); skipped where mounting is not permitted."""
    d = root / "small"
    d.mkdir()
    yield from _tmpfs(d, "size=256k",
                      "mounting a small tmpfs is not permitted here (the injected-ENOSPC tests still run)")


def test_full_disk_is_refused_before_the_work(root: Path, small_fs: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(small_fs / "x")), capsys, "not enough free space")
    assert_refused(root, ["unpack", str(root / "sliced.sfbb"), str(small_fs / "x"), "--no-progress"], capsys,
                   "not enough free space")
    assert_refused(root, ["pack", str(root / "sliced"), str(small_fs / "x.sfbb")], capsys, "not enough free space")
    assert_refused(root, ["export", str(root / "model"), "--to", "gguf", "--out", str(small_fs / "x.gguf")], capsys,
                   "not enough free space")


def test_full_disk_during_write(root: Path, small_fs: Path, capsys: pytest.CaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ENOSPC while writing (the free-space estimate switched off): cleaned up, one line."""
    import slimformer.io.outputs as outputs

    monkeypatch.setattr(outputs, "check_free_space", lambda *a, **k: None)
    monkeypatch.setattr(outputs, "SPACE_MARGIN_BYTES", 0)
    import slimformer.io.bitsback.codec  # noqa: F401  (its lazy imports read the patched module)
    import slimformer.io.gguf_export as gguf_export

    monkeypatch.setattr(gguf_export, "check_free_space", lambda *a, **k: None)
    assert_refused(root, ["export", str(root / "model"), "--to", "gguf", "--out", str(small_fs / "x.gguf")], capsys,
                   "No space left")

    assert_refused(root, _compress(root, "--out", str(small_fs / "x")), capsys, "No space left")
    assert_refused(root, ["unpack", str(root / "sliced.sfbb"), str(small_fs / "x"), "--no-progress"], capsys,
                   "No space left")
    (small_fs / "filler").write_bytes(b"\0" * 200_000)  # the pack file is smaller than the model
    try:
        assert_refused(root, ["pack", str(root / "sliced"), str(small_fs / "x.sfbb"), "--no-verify", "--no-progress"],
                       capsys,
                       "No space left")
    finally:
        (small_fs / "filler").unlink()


def test_injected_enospc_while_saving(root: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected into the weight writer (runs everywhere, no mount needed)."""
    import slimformer.io.safetensors_io as st_io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)

    monkeypatch.setattr(st_io, "write_tensors", full)
    assert_refused(root, _compress(root, "--out", str(root / "new" / "deeper")), capsys, "No space left")
    assert_refused(root, ["unpack", str(root / "sliced.sfbb"), str(root / "unpacked"), "--no-progress"], capsys,
                   "No space left")


def test_export_refusals(root: Path, capsys: pytest.CaptureFixture) -> None:
    """Bad export requests: one line each, nothing written (the GGUF file is staged, then renamed)."""
    gg = ["--to", "gguf", "--out"]
    assert_refused(root, ["export", str(root / "sliced"), *gg, str(root / "x.gguf")], capsys, "rotated and sliced")
    assert_refused(root, ["export", str(root / "model"), "--to", "ggml", "--out", str(root / "x")], capsys,
                   "unknown export target 'ggml'")
    assert_refused(root, ["export", str(root / "model"), *gg, str(root / "missing" / "x.gguf")], capsys,
                   "does not exist")
    assert_refused(root, ["export", str(root / "model"), *gg, str(root / "precious" / "f")], capsys, "already exists")
    assert_refused(root, ["export", str(root / "model"), *gg, str(root / "precious" / "f"), "--overwrite"], capsys,
                   "not a file slimformer wrote")
    assert_refused(root, ["export", str(root / "model"), *gg, str(root / "model")], capsys, "is the input")
    assert_refused(root, ["export", str(root / "model"), *gg, str(root / "x.gguf"), "--dtype", "q4_0"], capsys,
                   "--dtype for GGUF")
    assert_refused(root, ["export", str(root / "nope"), *gg, str(root / "x.gguf")], capsys, "not found")
    assert_refused(root, ["export", str(root / "sliced"), "--to", "hf", "--out", str(root / "y")], capsys,
                   "rotated and sliced")


def test_export_overwrite_replaces_only_gguf_files(root: Path, capsys: pytest.CaptureFixture) -> None:
    out = root / "m.gguf"
    argv = ["export", str(root / "model"), "--to", "gguf", "--out", str(out)]
    assert run_cli(argv, capsys)[0] == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert_refused(root, argv, capsys, "already exists")
    code, _, err = run_cli(argv + ["--overwrite", "--dtype", "f16"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in root.iterdir()) == ["data", "m.gguf", "model", "precious", "sliced", "sliced.sfbb"]


@pytest.mark.parametrize("cmd", ["eval", "bench", "finetune"])
def test_json_pointing_at_a_directory(root: Path, cmd: str, capsys: pytest.CaptureFixture) -> None:
    argv = {
        "eval": ["eval", str(root / "sliced"), "--ppl", str(root / "data" / "calib.txt"), "--seqlen", "64"],
        "bench": ["bench", str(root / "sliced"), "--repeats", "1"],
        "finetune": ["finetune", str(root / "sliced"), "--data", str(root / "data" / "calib.txt"),
                     "--out", str(root / "ft")],
    }[cmd]
    assert_refused(root, argv + ["--json", str(root / "precious")], capsys, "is a directory")


@pytest.fixture
def truncated(root: Path) -> Path:
    d = root / "truncated"
    shutil.copytree(root / "model", d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


@pytest.mark.parametrize("cmd", ["compress", "eval", "bench"])
def test_truncated_dense_checkpoint(root: Path, truncated: Path, cmd: str, capsys: pytest.CaptureFixture) -> None:
    argv = {
        "compress": _compress(root, "--out", str(root / "x"), model=truncated),
        "eval": ["eval", str(truncated), "--ppl", str(root / "data" / "calib.txt"), "--seqlen", "64"],
        "bench": ["bench", str(root / "sliced"), "--baseline", str(truncated), "--repeats", "1"],
    }[cmd]
    assert_refused(root, argv, capsys, "is truncated", "model.safetensors")


def test_calib_seqlen_beyond_positions(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root, "--out", str(root / "x"), seqlen="1024"), capsys,
                   "exceed the model's 512 positions")


def test_default_calib_seqlen_fits_the_model() -> None:
    """``--calib-seqlen`` defaults to min(2048, positions): 512 for stories260k, 256 for opt-fixture."""
    from types import SimpleNamespace

    from slimformer.cli import _calib_seqlen

    assert _calib_seqlen(None, SimpleNamespace(max_position_embeddings=512)) == 512
    assert _calib_seqlen(None, SimpleNamespace(max_position_embeddings=131072)) == 2048
    assert _calib_seqlen(None, SimpleNamespace(n_positions=256)) == 256  # GPT-2 style configs
    assert _calib_seqlen(128, SimpleNamespace(max_position_embeddings=512)) == 128
    with pytest.raises(ValueError, match="exceed the model's 512 positions"):
        _calib_seqlen(513, SimpleNamespace(max_position_embeddings=512))


def test_opt_calib_seqlen(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """OPT's learned positions: 300 > 256 is refused; the default (min(2048, 256)) works."""
    from conftest import shared_path

    opt = shared_path("models", "opt-fixture")
    calib = shared_path("data", "wikitext2", "wiki.valid.raw")
    base = ["compress", str(opt), "--method", "fasp", "--sparsity", "0.1", "--attention", "none",
            "--calib", str(calib), "--calib-samples", "2", "--no-progress", "--dry-run"]
    assert_refused(tmp_path, base + ["--calib-seqlen", "300"], capsys, "exceed the model's 256 positions")
    code, out, err = run_cli(base, capsys)
    assert code == 0, err
    assert "dry run: nothing saved" in out


# ----- 5. other ------------------------------------------------------------------------------------
def test_compress_without_out(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert_refused(root, _compress(root), capsys, "--out", "--dry-run")
    assert_refused(root, _compress(root, "--dry-run", "--out", str(root / "x")), capsys, "--dry-run")


def test_non_utf8_calibration_names_the_file(root: Path, capsys: pytest.CaptureFixture) -> None:
    bad = root / "data" / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    assert_refused(root, _compress(root, "--out", str(root / "x"), calib=bad), capsys, "latin1.txt", "not UTF-8")
