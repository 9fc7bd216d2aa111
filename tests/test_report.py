"""`slimformer report`: tables and plots from real result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimformer.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"


def test_report_from_compress_eval_and_bench(tmp_path: Path, stories_dir: Path, tinystories_valid: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    dense_json, bench_json = tmp_path / "dense.json", tmp_path / "bench.json"
    assert main(["eval", str(stories_dir), "--ppl", str(tinystories_valid), "--seqlen", "128",
                 "--max-tokens", "4096", "--json", str(dense_json), "--no-progress"]) == 0
    assert main(["bench", str(FIXTURE), "--baseline", str(FIXTURE), "--seqlen", "8", "--new-tokens", "8",
                 "--repeats", "1", "--threads", "1", "--json", str(bench_json)]) == 0
    out = tmp_path / "report"
    assert main(["report", str(dense_json), str(bench_json), str(FIXTURE / "slimformer_report.json"),
                 "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Quality" in md and "## Compression runs" in md and "## Speed" in md
    for png in ("ppl_vs_removed.png", "widths_0.png", "speedup_vs_removed.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert json.loads(bench_json.read_text())["compression"]["method"] == "slicegpt"


def test_report_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")]) == 2
    assert "result file not found" in capsys.readouterr().err
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    assert main(["report", str(bogus), "--out", str(tmp_path / "r")]) == 2
    assert "not a slimformer compress/eval/bench result" in capsys.readouterr().err
