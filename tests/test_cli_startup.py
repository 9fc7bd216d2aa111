"""CLI start-up and argument handling: torch-free parser, one-line errors, clean help, option names,
error/interrupt handling in main()."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slimformer import cli

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1"
HEAVY = ("torch", "transformers", "numpy", "safetensors")


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_parser_and_package_import_nothing_heavy() -> None:
    """``import slimformer``, the method registry and building the parser stay torch-free."""
    proc = _python(f"""
        import sys
        import slimformer as sf
        import slimformer.cli
        from slimformer.methods import METHODS, get_method, method_names, spec_for_config
        slimformer.cli._parser()
        config = sf.SliceGPTConfig(sparsity=0.25)  # configs validate without torch
        assert spec_for_config(config).name == "slicegpt" and sf.__version__
        print([m for m in {HEAVY!r} if m in sys.modules])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["compress", "--help"],
    ["finetune", "--help"],
    ["bench", "--help"],
    ["compress", "M", "--method", "slicegpt", "--sparsity", "abc"],
    ["info", str(FIXTURE)],
], ids=["help", "compress-help", "finetune-help", "bench-help", "arg-error", "info"])
def test_commands_answering_at_once_import_nothing_heavy(argv: list[str]) -> None:
    proc = _python(f"""
        import sys
        from slimformer.cli import main
        code = main(sys.argv[1:])
        print("HEAVY", [m for m in {HEAVY!r} if m in sys.modules], "CODE", code)
    """, *argv)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY [] CODE"), (last, proc.stderr)


def test_console_script_help_is_fast() -> None:
    """A generous bound (the target is < 1 s; ``import torch`` alone takes seconds)."""
    script = Path(sys.executable).with_name("slimformer")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "slimformer.cli"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv + ["compress", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--sparsity" in proc.stdout
    assert time.perf_counter() - t0 < 3.0
    proc = subprocess.run(argv + ARG_ERRORS["bad-float"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("slimformer: error: argument --sparsity: invalid float value: 'abc' "
                           "(see 'slimformer compress --help')\n")


ARG_ERRORS = {
    "bad-float": ["compress", "M", "--method", "slicegpt", "--sparsity", "abc"],
    "bad-choice": ["compress", "M", "--method", "slicegpt", "--sparsity", "0.1", "--schedule", "nosuch"],
    "missing-required": ["compress", "M"],
    "unknown-option": ["compress", "M", "--method", "slicegpt", "--nosuch", "1"],
    "no-command": [],
    "unknown-command": ["nosuch"],
    "finetune-missing": ["finetune", "DIR"],
    "bench-bad-int": ["bench", "M", "--batch-size", "x"],
    "eval-bad-dtype": ["eval", "M", "--dtype", "float8"],
}


@pytest.mark.parametrize("case", sorted(ARG_ERRORS))
def test_argument_errors_are_one_line(case: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(ARG_ERRORS[case]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("slimformer: error: "), err


def _help(*argv: str, capsys: pytest.CaptureFixture) -> str:
    assert cli.main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_compress_help_is_clean_and_lists_choices(capsys: pytest.CaptureFixture) -> None:
    text = _help("compress", capsys=capsys)
    for markup in (":mod:", ":class:", ":func:", ":meth:", ":data:", "``", "Transport (see", "Widths (shared"):
        assert markup not in text, markup
    flat = " ".join(text.split())
    for option, choices in {"--schedule": "{uniform,layer-redundancy,global}", "--attention": "{channels,heads,none}",
                            "--cost": "{l2,sqeuclidean,correlation}", "--targets": "{norm,spread,random}",
                            "--target-marginal": "{uniform,nearest}", "--where": "{residual,mlp}",
                            "--gram-dtype": "{float64,float32}"}.items():
        assert f"{option} {choices}" in flat, option
    # one name per concept; the old spellings are hidden
    for shown in ("--learning-rate", "--train-batch-size", "--train-seqlen", "--policy-samples"):
        assert shown in flat
    for hidden in ("--lr ", "--batch ", "--seqlen ", "--samples "):
        assert hidden not in flat, hidden
    # a shared option says what it means for each method, with per-method defaults
    assert "[prunenet]" in flat and "[disp]" in flat and "default 0.01 for prunenet; 0.001 for disp" in flat


def test_attribute_docs_end_at_the_section() -> None:
    from slimformer.methods import DOTResizeConfig

    docs = cli._attribute_docs(DOTResizeConfig)
    assert "Transport" not in docs["slice_head"] and docs["slice_head"].startswith("also merge")
    assert docs["temperature"] == docs["schedule"]  # "schedule, slicing_base, temperature, ...: text"
    assert "slimformer.methods.dotresize.ot" not in " ".join(docs.values())
    assert cli._plain(":mod:`slimformer.schedule` and :class:`~slimformer.schedule.Schedule`, ``x``, *y*, a**2") == \
        "slimformer.schedule and Schedule, x, y, a**2"


OLD_SPELLINGS = [  # (argv prefix, old option, new option, dest, value)
    (["compress", "M", "--method", "prunenet"], "--lr", "--learning-rate", "learning_rate", "0.5"),
    (["compress", "M", "--method", "prunenet"], "--samples", "--policy-samples", "policy_samples", "3"),
    (["compress", "M", "--method", "disp"], "--batch", "--train-batch-size", "train_batch_size", "3"),
    (["compress", "M", "--method", "disp"], "--seqlen", "--train-seqlen", "train_seqlen", "64"),
    (["finetune", "D", "--data", "x", "--out", "o"], "--lr", "--learning-rate", "lr", "0.5"),
    (["finetune", "D", "--data", "x", "--out", "o"], "--batch", "--batch-size", "batch", "3"),
    (["bench", "M"], "--batch", "--batch-size", "batch", "3"),
]


@pytest.mark.parametrize("prefix, old, new, dest, value", OLD_SPELLINGS,
                         ids=[f"{p[0]}{o}" for p, o, *_ in OLD_SPELLINGS])
def test_old_option_spellings_still_parse(prefix: list[str], old: str, new: str, dest: str, value: str) -> None:
    parser = cli._parser()
    a, b = parser.parse_args(prefix + [old, value]), parser.parse_args(prefix + [new, value])
    assert getattr(a, dest) == getattr(b, dest) == type(getattr(b, dest))(value)
    default = parser.parse_args(prefix)
    assert getattr(default, dest) != getattr(b, dest)  # the hidden alias does not clobber the default


def test_finetune_options_come_from_the_config() -> None:
    """Every FinetuneConfig field is a ``finetune`` option whose help shows its default; parsing gives the config."""
    from slimformer.cli_options import option_name
    from slimformer.finetune_config import FinetuneConfig

    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["finetune"]
    actions = {a.dest: a for a in sub._actions if a.help != argparse.SUPPRESS}
    for f in dataclasses.fields(FinetuneConfig):
        action = actions[f.name]
        assert "--" + option_name(f).replace("_", "-") in action.option_strings
        if f.default is not None:
            assert f"(default {f.default})" in action.help
    args = parser.parse_args(["finetune", "D", "--data", "x", "--out", "o", "--targets", "q,v", "--dtype", "float16",
                              "--lr", "0.001", "--warmup", "0.1"])
    config = cli.build_config(FinetuneConfig, args)
    assert config == FinetuneConfig(targets=("q", "v"), dtype="float16", lr=0.001, warmup=0.1)
    assert cli.build_config(FinetuneConfig, parser.parse_args(["finetune", "D", "--data", "x", "--out", "o"])) == \
        FinetuneConfig()


def test_renamed_method_options_reach_the_config() -> None:
    parser = cli._parser()
    args = parser.parse_args(["compress", "M", "--method", "prunenet", "--sparsity", "0.2", "--lr", "0.5",
                              "--policy-samples", "3"])
    config = cli.build_method_config("prunenet", args)
    assert (config.lr, config.samples) == (0.5, 3)
    args = parser.parse_args(["compress", "M", "--method", "disp", "--target-params", "0.2", "--learning-rate", "0.5",
                              "--batch", "2", "--train-seqlen", "32"])
    config = cli.build_method_config("disp", args)
    assert (config.learning_rate, config.batch, config.seqlen) == (0.5, 2, 32)
    args = parser.parse_args(["compress", "M", "--method", "slicegpt", "--sparsity", "0.2", "--learning-rate", "1"])
    with pytest.raises(ValueError, match="--learning-rate do not apply to method slicegpt"):
        cli.build_method_config("slicegpt", args)


def test_registry_and_lazy_exports() -> None:
    import slimformer as sf
    import slimformer.finetune  # the submodule: sf.finetune stays the function
    from slimformer.methods import METHODS
    from slimformer.schedule import SCHEDULES
    from slimformer.validate import SCHEDULE_NAMES

    assert callable(sf.finetune) and sf.FinetuneConfig is sys.modules["slimformer.finetune"].FinetuneConfig
    assert set(sf.__all__) <= set(dir(sf))
    for name in sf.__all__:
        assert getattr(sf, name) is not None
    for spec in METHODS.values():
        assert callable(spec.apply), spec.name
    assert tuple(SCHEDULES) == SCHEDULE_NAMES


@pytest.mark.parametrize("exc, line", [
    (PermissionError(13, "Permission denied", "/data/out"), "slimformer: error: Permission denied: /data/out"),
    (OSError(28, "No space left on device"), "slimformer: error: No space left on device"),
    (IsADirectoryError(21, "Is a directory", "/tmp/x.json"), "slimformer: error: Is a directory: /tmp/x.json"),
    (FileNotFoundError("model directory not found: /m"), "slimformer: error: model directory not found: /m"),
    (ValueError("first line\nsecond line"), "slimformer: error: first line"),
])
def test_main_reports_errors_in_one_line(exc: BaseException, line: str, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(cli, "_cmd_info", fail)
    assert cli.main(["info", "DIR"]) == 2
    assert capsys.readouterr().err == line + "\n"
    with pytest.raises(type(exc)):
        cli.main(["-v", "info", "DIR"])


def test_main_interrupted_and_rank_note(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def interrupt(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_info", interrupt)
    assert cli.main(["info", "DIR"]) == 130
    assert capsys.readouterr().err == "slimformer: interrupted\n"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["info", "DIR"]) == 130
    assert capsys.readouterr().err == "slimformer: interrupted (rank 1 of 2)\n"
    monkeypatch.setattr(cli, "_cmd_info", lambda args: (_ for _ in ()).throw(ValueError("bad")))
    assert cli.main(["info", "DIR"]) == 2
    assert capsys.readouterr().err == "slimformer: error (rank 1 of 2): bad\n"


def test_main_restores_the_sigterm_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_cmd_info", lambda args: 0)
    assert cli.main(["info", "DIR"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_runs_cleanup_and_exits_130(tmp_path: Path) -> None:
    """SIGTERM (timeout, docker, SLURM) raises KeyboardInterrupt: ``except BaseException`` clean-up runs."""
    marker = tmp_path / "cleaned"
    code = f"""
        import sys, time
        from slimformer import cli

        def slow(args):
            try:
                print("ready", flush=True)
                time.sleep(60)
            except BaseException:
                open({str(marker)!r}, "w").write("yes")
                raise
            return 0

        cli._cmd_info = slow
        sys.exit(cli.main(["info", "DIR"]))
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "slimformer: interrupted\n"
    assert marker.read_text() == "yes"


def test_install_sigterm_handler_outside_main_thread_is_a_no_op() -> None:
    import threading

    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(cli.install_sigterm_handler()))
    t.start()
    t.join()
    assert result == [None]


def test_bench_flop_speedup_key_and_old_reports(tmp_path: Path) -> None:
    """One quantity, one name: ``speedup.matmul_flops`` = dense / compressed; old files still render."""
    from slimformer.eval.report import flop_speedup

    assert flop_speedup({"matmul_flops": 1.25}) == 1.25
    assert flop_speedup({"matmul_flop_ratio": 0.8}) == pytest.approx(1.25)
    assert flop_speedup({}) is None
    assert json.dumps({"speedup": {"matmul_flops": 1.0}})  # plain JSON


def test_dataclass_fields_keep_their_defaults() -> None:
    """Metadata on fields (choices, option names) changes no config default."""
    from slimformer.methods import DISPConfig, DOTResizeConfig, FASPConfig, PruneNetConfig

    assert PruneNetConfig(sparsity=0.1).lr == 1e-2 and PruneNetConfig(sparsity=0.1).samples == 4
    assert DISPConfig(target_params=0.1).batch == 4 and DISPConfig(target_params=0.1).seqlen is None
    assert FASPConfig(sparsity=0.1).schedule == "uniform" and DOTResizeConfig(sparsity=0.1).where == "residual"
    assert {f.name for f in dataclasses.fields(DISPConfig)} >= {"batch", "seqlen", "learning_rate"}


def test_a_file_given_for_a_model_directory_says_so(tmp_path, capsys) -> None:
    """A file where a model directory is expected (e.g. the weights file instead of its folder)
    is named as such, not "not found"; a missing path is "not found". One line each, exit 2."""
    from slimformer.cli import main

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    for argv in (["verify", str(weights)], ["info", str(weights)], ["pack", str(weights), str(tmp_path / "p.sfpack")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{weights} is a file, not a directory" in err, (argv, err)
    assert main(["verify", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
