"""Zero-shot tasks through lm-eval on the local task copies (real models and data, no mocks)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import slimformer  # noqa: E402
from slimformer.cli import main  # noqa: E402
from slimformer.eval.zeroshot import (  # noqa: E402
    PAPER_METRIC,
    SUPPORTED_TASKS,
    TaskDataError,
    load_local_task,
    zero_shot,
)

from conftest import shared_path  # noqa: E402

OFFICIAL_SIZES = {"piqa": 1838, "hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172, "winogrande": 1267}


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Converted task files and the datasets cache go to a temporary directory.

    One torch thread: the 260K-parameter model gains nothing from two, and on a busy
    2-core machine two spinning threads make lm-eval's many tiny forwards 3-10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMFORMER_CACHE", str(tmp_path_factory.mktemp("slimformer-cache")))
        mp.delenv("SLIMFORMER_TASKS_DATA", raising=False)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return shared_path("data")


@pytest.fixture(scope="module")
def stories() -> tuple:
    return slimformer.load_model(shared_path("models", "stories260k"))


# --------------------------------------------------------------------------- (1) loaders


@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_local_loaders_have_official_sizes(task: str, data_dir: Path) -> None:
    records = load_local_task(task, data_dir)
    assert len(records) == OFFICIAL_SIZES[task]
    for rec in records:
        if task == "piqa":
            assert rec["label"] in (0, 1) and rec["goal"] and rec["sol1"] and rec["sol2"]
        elif task == "hellaswag":
            assert len(rec["endings"]) == 4 and rec["label"] in ("0", "1", "2", "3")
            assert (rec["ctx_a"] + " " + rec["ctx_b"]).strip() == rec["ctx"]
        elif task == "winogrande":
            assert rec["answer"] in ("1", "2") and rec["sentence"].count("_") >= 1
            assert rec["option1"] and rec["option2"]
        else:
            labels = rec["choices"]["label"]
            assert 3 <= len(labels) <= 5 and len(rec["choices"]["text"]) == len(labels)
            assert rec["answerKey"] in labels


def test_local_records_look_right(data_dir: Path) -> None:
    from lm_eval.tasks.hellaswag.utils import process_docs
    from lm_eval.tasks.winogrande import preprocess_winogrande as pw

    piqa = load_local_task("piqa", data_dir)
    assert piqa[0]["goal"] == "How do I ready a guinea pig cage for it's new occupants?" and piqa[0]["label"] == 0
    assert sum(r["label"] for r in piqa) == 928  # label counts of valid-labels.lst: 0: 910, 1: 928

    arc = load_local_task("arc_challenge", data_dir)
    numeric = [r for r in arc if r["answerKey"].isdigit()]
    assert numeric and all(r["choices"]["label"][0] == "1" for r in numeric)

    # lm-eval's own process_docs on the rebuilt ctx_a/ctx_b gives the official query
    # (published first rows of hellaswag_val.jsonl: ctx_b "he", "the lady").
    import datasets

    hs = load_local_task("hellaswag", data_dir)
    docs = process_docs(datasets.Dataset.from_list(hs[:2]))
    assert docs[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He"
    assert docs[1]["query"] == "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady"
    assert docs[0]["choices"][3] == "starts pulling up roofing on a roof." and docs[0]["gold"] == 3
    assert sum(1 for r in hs if r["ctx_b"]) == 3243  # the ActivityNet examples

    wg = load_local_task("winogrande", data_dir)
    assert wg[0] == {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                     "option1": "Sarah", "option2": "Maria", "answer": "2"}
    foundry = [json.loads(line) for line in (data_dir / "winogrande/winogrande_dev_llmfoundry.jsonl").open()]
    for rec, row in zip(wg, foundry, strict=True):
        assert pw.doc_to_choice(rec) == row["context_options"]
        assert pw.doc_to_target(rec) == row["continuation"]
        assert pw.doc_to_text(rec) == row["gold"]


# --------------------------------------------------------------------------- (2) API


def test_zero_shot_dense_all_tasks_offline(stories: tuple, data_dir: Path) -> None:
    model, tok = stories
    res = zero_shot(model, tok, list(SUPPORTED_TASKS), limit=50, batch_size=16, tasks_data=data_dir)
    json.dumps(res)  # JSON-serialisable
    assert list(res["tasks"]) == list(SUPPORTED_TASKS)
    for task, r in res["tasks"].items():
        assert r["metric"] == PAPER_METRIC[task]
        assert 0.0 <= r["value"] <= 1.0 and r["stderr"] is not None and r["stderr"] > 0
        assert r["n"] == 50 and r["n_total"] == OFFICIAL_SIZES[task]
        assert r["lm_eval_task"] == f"slimformer_{task}"
        assert 0.19 < r["chance"] <= 0.5
    assert PAPER_METRIC["winogrande"] == "acc" and "acc_norm" not in res["tasks"]["winogrande"]
    values = [r["value"] for r in res["tasks"].values()]
    assert math.isclose(res["average"], sum(values) / 5)
    s = res["settings"]
    assert s["tasks"] == list(SUPPORTED_TASKS) and s["limit"] == 50 and s["batch_size"] == 16
    assert s["tasks_data"] == str(data_dir.resolve()) and s["offline"] and s["seed"] == 0
    assert s["lm_eval_version"].startswith("0.4")


# --------------------------------------------------------------------------- (3) CLI


def test_cli_zero_shot_on_compressed_model(tmp_path: Path, stories: tuple, data_dir: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    model, tok = slimformer.load_model(shared_path("models", "stories260k"))  # compress works in place
    calib = slimformer.data.load(str(data_dir / "tinystories/tinystories_train_prefix.txt"), tok,
                                 samples=16, seqlen=128, seed=0)
    result = slimformer.compress(model, slimformer.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    out = result.save(tmp_path / "m", tokenizer=tok)
    js = tmp_path / "zs.json"
    code = main(["eval", str(out), "--tasks", "piqa,winogrande", "--tasks-data", str(data_dir),
                 "--limit", "20", "--json", str(js), "--no-progress"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "piqa" in stdout and "winogrande" in stdout and "average" in stdout
    res = json.loads(js.read_text())
    assert "ppl" not in res and set(res) == {"zero_shot", "settings", "compression"}
    assert res["compression"]["method"] == "slicegpt" and res["compression"]["method_config"]["sparsity"] == 0.25
    zs = res["zero_shot"]
    assert set(zs["tasks"]) == {"piqa", "winogrande"}
    assert zs["tasks"]["piqa"]["metric"] == "acc_norm" and zs["tasks"]["winogrande"]["metric"] == "acc"
    assert all(r["n"] == 20 and 0.0 <= r["value"] <= 1.0 for r in zs["tasks"].values())
    assert math.isclose(zs["average"], (zs["tasks"]["piqa"]["value"] + zs["tasks"]["winogrande"]["value"]) / 2)
    assert zs["settings"]["limit"] == 20 and zs["settings"]["tasks_data"] == str(data_dir.resolve())
    assert res["settings"]["tasks"] == ["piqa", "winogrande"] and res["settings"]["limit"] == 20


def test_cli_ppl_and_tasks_together(tmp_path: Path, stories_dir: Path, tinystories_valid: Path, data_dir: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    js = tmp_path / "both.json"
    code = main(["eval", str(stories_dir), "--ppl", str(tinystories_valid), "--seqlen", "256", "--max-tokens",
                 "5000", "--tasks", "arc_easy", "--tasks-data", str(data_dir), "--limit", "5", "--json", str(js),
                 "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(js.read_text())
    assert {"ppl", "tokens", "seqlen", "data", "zero_shot", "settings"} <= set(res)
    assert res["seqlen"] == 256 and res["zero_shot"]["tasks"]["arc_easy"]["n"] == 5


# --------------------------------------------------------------------------- (4) errors


def _partial_data(tmp_path: Path, data_dir: Path) -> Path:
    d = tmp_path / "partial"
    (d / "piqa").mkdir(parents=True)
    shutil.copy(data_dir / "piqa/valid.jsonl", d / "piqa/valid.jsonl")  # labels file missing
    return d


@pytest.mark.parametrize("case", ["unknown_task", "missing_dir", "missing_file", "limit_zero", "nothing"])
def test_cli_bad_inputs(case: str, tmp_path: Path, stories_dir: Path, data_dir: Path,
                        capsys: pytest.CaptureFixture) -> None:
    argv = {
        "unknown_task": ["--tasks", "piqa,boolq", "--tasks-data", str(data_dir)],
        "missing_dir": ["--tasks", "piqa", "--tasks-data", str(tmp_path / "nope")],
        "missing_file": ["--tasks", "piqa", "--tasks-data", str(_partial_data(tmp_path, data_dir))],
        "limit_zero": ["--tasks", "piqa", "--tasks-data", str(data_dir), "--limit", "0"],
        "nothing": [],
    }[case]
    expected = {
        "unknown_task": "unknown task 'boolq'; supported tasks: piqa, hellaswag, arc_easy, arc_challenge, winogrande",
        "missing_dir": "does not exist",
        "missing_file": "valid-labels.lst",
        "limit_zero": "limit must be >= 1",
        "nothing": "eval needs --ppl TEXT and/or --tasks",
    }[case]
    js = tmp_path / "out.json"
    code = main(["eval", str(stories_dir), *argv, "--json", str(js)])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("slimformer: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not js.exists() and out == ""


def test_api_bad_inputs(stories: tuple, data_dir: Path, tmp_path: Path) -> None:
    model, tok = stories
    with pytest.raises(ValueError, match="unknown task 'mmlu'; supported tasks: piqa"):
        zero_shot(model, tok, ["mmlu"], tasks_data=data_dir)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        zero_shot(model, tok, ["piqa"], limit=0, tasks_data=data_dir)
    with pytest.raises(TaskDataError, match="does not exist"):
        zero_shot(model, tok, ["piqa"], tasks_data=tmp_path / "nope")
    with pytest.raises(TaskDataError, match=r"task hellaswag needs .*hellaswag_val_full\.txt"):
        zero_shot(model, tok, ["hellaswag"], tasks_data=_partial_data(tmp_path, data_dir))
