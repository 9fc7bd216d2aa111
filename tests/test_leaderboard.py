"""benchmarks/leaderboard.py: its smallest run produces the files, and the README summary is the JSON's."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import SHARED, shared_path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "leaderboard.py"


def _leaderboard() -> ModuleType:
    """benchmarks/leaderboard.py as a module (benchmarks/ is no package; its scripts import benchmarks/common.py)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("leaderboard_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smallest_run_writes_finite_numbers(tmp_path: Path) -> None:
    """stories260k, one ratio, two cheap methods, no fine-tune, a tiny zero-shot limit: JSON + MD, finite."""
    pytest.importorskip("lm_eval")
    shared_path("models", "stories260k")
    cmd = [sys.executable, str(SCRIPT), "--models", "stories260k", "--ratios", "0.3", "--methods", "slicegpt",
           "magnitude", "--finetune-steps", "0", "--zeroshot-limit", "2", "--no-torch-pruning", "--out",
           str(tmp_path)]
    env = {**os.environ, "SHARED": str(SHARED), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "leaderboard.json").read_text())
    rows = res["models"]["stories260k"]["rows"]
    assert [r["method"] for r in rows] == ["slicegpt", "magnitude"]
    for r in rows:
        assert "error" not in r, r
        for key in ("removed", "ppl", "zeroshot_avg", "compress_s", "prefill", "decode"):
            assert math.isfinite(r[key]), (key, r)
        assert abs(r["removed"] - 0.3) < 0.02
    assert math.isfinite(res["models"]["stories260k"]["dense"]["ppl"])
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| slicegpt |" in md and "| magnitude |" in md
    assert f"{rows[0]['ppl']:.3f}" in md


def test_readme_summary_matches_json() -> None:
    """The README's summary table is exactly the one rendered from docs/leaderboard.json (no drift)."""
    res = json.loads((REPO / "docs" / "leaderboard.json").read_text())
    table = _leaderboard().summary_table(res)
    readme = (REPO / "README.md").read_text()
    assert table in readme, "README summary differs from docs/leaderboard.json: " \
                            "paste the table `python benchmarks/leaderboard.py --render` prints"
    assert table in (REPO / "docs" / "leaderboard.md").read_text()
    for line in table.splitlines()[2:]:  # every cell's number is a finite perplexity of the JSON
        model = line.split("|")[1].strip()
        ppls = {f"{r['ppl']:.3f}" for r in res["models"][model]["rows"] if "error" not in r}
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[4] in ppls and (cells[6] == "–" or cells[6] in ppls), line
