"""slimformer.io.outputs: replace rules, owner-named temporaries, stale clean-up, atomic commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slimformer.io import outputs
from slimformer.io.outputs import OutputExistsError


def _slim_dir(path: Path, tag: str = "a") -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "slimformer": {"tag": tag}}))
    (path / "w").write_text(tag)
    return path


def test_replace_rules(tmp_path: Path) -> None:
    prev = _slim_dir(tmp_path / "prev")
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("x")
    assert outputs.check_output_dir(prev, overwrite=True) == prev
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        outputs.check_output_dir(prev, overwrite=False)
    with pytest.raises(OutputExistsError, match="not a slimformer output"):
        outputs.check_output_dir(other, overwrite=True)
    with pytest.raises(OutputExistsError, match="contains the input"):
        outputs.check_output_dir(tmp_path, overwrite=True, inputs=[prev / "w"])
    with pytest.raises(OutputExistsError, match="is the input"):
        outputs.check_output_dir(prev, overwrite=True, inputs=[str(prev)])
    link = tmp_path / "link"
    link.symlink_to(prev)  # the same directory under another name is still the input
    with pytest.raises(OutputExistsError, match="is the input"):
        outputs.check_output_dir(link, overwrite=True, inputs=[prev])
    # a hub id (not a local path) is no local input
    assert outputs.check_output_dir(tmp_path / "new", inputs=["org/model"]) == tmp_path / "new"
    assert not (tmp_path / "new").exists()


def test_pack_file_replace_rules(tmp_path: Path) -> None:
    pk = tmp_path / "a.sfbb"
    pk.write_bytes(b"MAGIC123rest")
    txt = tmp_path / "notes.txt"
    txt.write_text("mine")
    assert outputs.check_output_file(pk, overwrite=True, magic=b"MAGIC123") == pk
    with pytest.raises(OutputExistsError, match="not a file slimformer wrote"):
        outputs.check_output_file(txt, overwrite=True, magic=b"MAGIC123")
    with pytest.raises(OutputExistsError, match="already exists"):
        outputs.check_output_file(pk, overwrite=False, magic=b"MAGIC123")


def test_commit_keeps_out_present_at_every_instant(tmp_path: Path) -> None:
    out = _slim_dir(tmp_path / "out", "old")
    seen_missing = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not os.path.isdir(out):
                seen_missing.append(True)

    t = threading.Thread(target=watch)
    t.start()
    try:
        for i in range(30):
            tmp = outputs.make_temp_dir(out)
            (tmp / "config.json").write_text(json.dumps({"slimformer": {"i": i}}))
            outputs.commit_dir(tmp, out)
    finally:
        stop.set()
        t.join()
    assert not seen_missing
    assert json.loads((out / "config.json").read_text())["slimformer"] == {"i": 29}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries or old copies left
    assert outputs.exchange(tmp_path / "out", tmp_path / "out") in (True, False)  # callable on this system


def test_clean_stale_removes_only_dead_owners(tmp_path: Path) -> None:
    out = tmp_path / "model-out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    live_pid = os.getppid()
    host = outputs._host()
    stale = tmp_path / f".model-out.tmp-{host}-{dead_pid}-abc"
    stale.mkdir()
    (stale / "model-00001-of-00003.safetensors").write_bytes(b"0" * 10)
    stale_file = tmp_path / f".model-out.tmp-{host}-{dead_pid}-xyz"
    stale_file.write_bytes(b"1")
    live = tmp_path / f".model-out.tmp-{host}-{live_pid}-abc"
    live.mkdir()
    foreign = tmp_path / f".model-out.tmp-otherhost-{dead_pid}-abc"
    foreign.mkdir()
    unrelated = tmp_path / ".other.tmp-x"
    unrelated.mkdir()
    removed = outputs.clean_stale(out)
    assert sorted(removed) == sorted([stale, stale_file])
    assert live.exists() and foreign.exists() and unrelated.exists()


def test_temporaries_name_their_owner(tmp_path: Path) -> None:
    tmp = outputs.make_temp_dir(tmp_path / "x")
    assert tmp.name.startswith(f".x.tmp-{outputs._host()}-{os.getpid()}-")
    assert outputs.clean_stale(tmp_path / "x") == []  # our own live temporary stays
    tmp.rmdir()


def test_check_writable_and_space(tmp_path: Path) -> None:
    outputs.check_writable(tmp_path / "a" / "b" / "c")  # judged by the nearest existing parent
    assert sorted(tmp_path.iterdir()) == []  # the probe is gone
    with pytest.raises(OSError, match="not enough free space"):
        outputs.check_free_space(tmp_path / "x", 2**62)
    outputs.check_free_space(tmp_path / "x", 1)
    created = outputs.make_parents(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b").is_dir()
    outputs.remove_dirs(created)
    assert sorted(tmp_path.iterdir()) == []


def test_outputs_module_is_torch_free() -> None:
    code = ("import sys; import slimformer.io.outputs, slimformer.io.inputs; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout  # the CLI can check outputs before importing torch


def test_write_bytes_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parents made, no temporary left; a failed write removes the parents it made and names the output."""
    out = tmp_path / "a" / "b" / "f.bin"
    outputs.write_bytes_atomic(out, b"\x00\x01")
    assert out.read_bytes() == b"\x00\x01" and os.listdir(out.parent) == ["f.bin"]
    outputs.write_bytes_atomic(out, b"xyz")  # replaces
    assert out.read_bytes() == b"xyz" and os.listdir(out.parent) == ["f.bin"]

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", fail)
    bad = tmp_path / "c" / "d" / "g.bin"
    with pytest.raises(OSError, match="g.bin"):
        outputs.write_bytes_atomic(bad, b"1")
    assert not (tmp_path / "c").exists()
    with pytest.raises(OSError):
        outputs.write_bytes_atomic(out, b"new")
    assert out.read_bytes() == b"xyz" and os.listdir(out.parent) == ["f.bin"]
