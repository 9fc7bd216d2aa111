"""CLI start-up time: how long the ``slimformer`` command takes to answer without doing real work.

Saves a small compressed model first (stories260k sliced 25% with SliceGPT through the
Python API, in a temporary directory), then times four commands as fresh processes, each
``--repeats`` times (median, min, max wall seconds):

- ``slimformer --help``
- ``slimformer compress --help``
- an argument error: ``slimformer compress MODEL --method slicegpt --sparsity abc`` (exit 2)
- ``slimformer info DIR`` on the saved model

Results are merged into ``docs/cli_startup.json`` under ``--label`` (e.g. ``before`` /
``after`` a change), and ``docs/cli_startup.md`` is rewritten from every label there.

    python benchmarks/cli_startup.py --label after [--repeats 5]
    python benchmarks/cli_startup.py --render      # rewrite the Markdown from the JSON only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
MODEL = SHARED / "models" / "stories260k"
CALIB = SHARED / "data" / "tinystories" / "tinystories_train_prefix.txt"
JSON_OUT = REPO / "docs" / "cli_startup.json"
MD_OUT = REPO / "docs" / "cli_startup.md"

SAVE = r"""
import sys
import slimformer as sf
model, tok = sf.load_model(sys.argv[1])
calib = sf.data.load(sys.argv[2], tok, samples=4, seqlen=64, seed=0)
sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, tokenizer=tok, progress=False).save(sys.argv[3])
"""


def slimformer_cmd() -> list[str]:
    """The installed ``slimformer`` console script next to this interpreter (else ``python -m``)."""
    script = Path(sys.executable).with_name("slimformer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "slimformer.cli"]


def time_command(argv: list[str], repeats: int, expect_rc: int) -> dict[str, float | int | list[float]]:
    """Wall seconds of ``argv`` run ``repeats`` times as a fresh process (one untimed warm-up run first)."""
    subprocess.run(argv, capture_output=True, check=False)  # page cache warm-up, not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != expect_rc:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}, expected {expect_rc}:\n{proc.stderr}")
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "repeats": repeats, "times_s": [round(t, 3) for t in times]}


def render_md(data: dict) -> str:
    """Markdown table: one row per command, one column per label."""
    labels = list(data["runs"])
    commands = list(next(iter(data["runs"].values()))["commands"]) if labels else []
    lines = [
        "# CLI start-up time",
        "",
        "Wall time of the `slimformer` command answering without real work, each a fresh process:",
        "median of the repeats (min-max). Produced by `python benchmarks/cli_startup.py --label LABEL`",
        "(raw numbers in `cli_startup.json`). `before`: `import slimformer` and building the parser",
        "imported torch and transformers (the method configs' modules, the registry's apply functions,",
        "`main()`'s eager imports). `after`: the package, the registry and the parser are torch-free;",
        "torch and transformers are imported only when a command does real work.",
        "",
        "| command | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for cmd in commands:
        cells = []
        for label in labels:
            r = data["runs"][label]["commands"].get(cmd)
            cells.append("-" if r is None else f"{r['median_s']:.2f} s ({r['min_s']:.2f}-{r['max_s']:.2f})")
        lines.append(f"| `{cmd}` | " + " | ".join(cells) + " |")
    lines.append("")
    for label in labels:
        run = data["runs"][label]
        lines.append(f"- `{label}`: {run['machine']}, Python {run['python']}, {run['repeats']} repeats, "
                     f"commit {run.get('commit') or '?'}.")
    lines.append("")
    torch_s = data.get("import_torch_s")
    lines.append("For scale: `python -c 'import torch'` alone takes about "
                 f"{'?' if torch_s is None else f'{torch_s:.1f}'} s on the same machine.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="after", help="name of this run in the JSON/Markdown (default: after)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", default=None, metavar="DIR", help="save the model here instead of a temp dir")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from the JSON")
    args = ap.parse_args()
    if args.render:
        MD_OUT.write_text(render_md(json.loads(JSON_OUT.read_text())))
        print(f"wrote {MD_OUT}")
        return

    cli = slimformer_cmd()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "stories260k-sliced25"
        if not (out / "config.json").is_file():
            subprocess.run([sys.executable, "-c", SAVE, str(MODEL), str(CALIB), str(out)], check=True)
        commands = {
            "slimformer --help": (cli + ["--help"], 0),
            "slimformer compress --help": (cli + ["compress", "--help"], 0),
            "slimformer compress MODEL --method slicegpt --sparsity abc": (
                cli + ["compress", str(MODEL), "--method", "slicegpt", "--sparsity", "abc"], 2),
            "slimformer info DIR": (cli + ["info", str(out)], 0),
        }
        results = {}
        for name, (argv, rc) in commands.items():
            results[name] = time_command(argv, args.repeats, rc)
            print(f"{name:60s} median {results[name]['median_s']:.3f} s "
                  f"(min {results[name]['min_s']:.3f}, max {results[name]['max_s']:.3f})", flush=True)
        torch_t = time_command([sys.executable, "-c", "import torch"], 3, 0)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=False).stdout.strip()
    if commit and dirty:
        commit += " + uncommitted changes"
    data = json.loads(JSON_OUT.read_text()) if JSON_OUT.is_file() else {"runs": {}}
    data["runs"][args.label] = {
        "commands": results, "repeats": args.repeats, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "commit": commit,
    }
    data["import_torch_s"] = torch_t["median_s"]
    JSON_OUT.write_text(json.dumps(data, indent=2) + "\n")
    MD_OUT.write_text(render_md(data))
    print(f"wrote {JSON_OUT} and {MD_OUT}")


if __name__ == "__main__":
    main()
