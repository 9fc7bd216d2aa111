"""Calibration data loading and perplexity on the real local data and stories260k."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slimformer.data import (
    CalibData,
    DataError,
    TextSource,
    join_rows,
    load,
    load_text,
    tokenize_text,
)
from slimformer.eval import PerplexityResult, perplexity

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
MODEL = SHARED / "models" / "stories260k"
WIKI_TEST = DATA / "wikitext2" / "wiki.test.raw"
TS_VALID = DATA / "tinystories" / "tinystories_valid_prefix.txt"
TS_TRAIN = DATA / "tinystories" / "tinystories_train_prefix.txt"

if not SHARED.is_dir():
    pytest.skip(f"shared data/models not found at {SHARED}", allow_module_level=True)

SEQLEN = 512


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def valid_ids(tokenizer) -> torch.Tensor:
    return tokenize_text(load_text(str(TS_VALID)).text, tokenizer)


# ----------------------------------------------------------------------------- load_text


def test_load_raw_reproduces_hf_wikitext_rows():
    src = load_text(str(WIKI_TEST))
    assert isinstance(src, TextSource)
    assert len(src.rows) == 4358
    assert src.rows[:3] == ["", " = Robert Boulter = \n", ""]
    assert src.origin == str(WIKI_TEST.resolve())
    assert src.name == str(WIKI_TEST)
    assert src.text == join_rows(src.rows) == "\n\n".join(src.rows)
    assert len(src.sha256) == 64


def test_load_txt_rows_are_paragraphs():
    src = load_text(str(TS_VALID))
    raw = TS_VALID.read_text(encoding="utf-8")
    assert src.rows == [line for line in raw.split("\n") if line.strip()]
    assert "" not in src.rows and not any(row.endswith("\n") for row in src.rows)


def test_load_jsonl(tmp_path):
    path = tmp_path / "calib.jsonl"
    records = [{"text": "first row", "id": 1}, {"text": "second row"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    src = load_text(str(path))
    assert src.rows == ["first row", "second row"]
    assert src.text == "first row\n\nsecond row"


def test_sha256_identifies_text(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same text\n", encoding="utf-8")
    b.write_text("same text\n", encoding="utf-8")
    assert load_text(str(a)).sha256 == load_text(str(b)).sha256
    b.write_text("other text\n", encoding="utf-8")
    assert load_text(str(a)).sha256 != load_text(str(b)).sha256


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="calibration/eval file not found"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="wikitext2"):
        load_text("no_such_dataset_name")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence": "no text field"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match='"text"'):
        load_text(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError):
        load_text(str(empty))
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- calibration


def test_calibration_windows(tokenizer):
    calib = load(str(TS_TRAIN), tokenizer, samples=16, seqlen=128, seed=3)
    assert isinstance(calib, CalibData)
    assert calib.input_ids.shape == (16, 128)
    assert calib.input_ids.dtype == torch.long
    assert len(calib) == 16
    ident = calib.identity()
    assert ident == {
        "name": str(TS_TRAIN),
        "origin": str(TS_TRAIN.resolve()),
        "sha256": load_text(str(TS_TRAIN)).sha256,
        "samples": 16,
        "seqlen": 128,
        "seed": 3,
    }

    again = load(str(TS_TRAIN), tokenizer, samples=16, seqlen=128, seed=3)
    other = load(str(TS_TRAIN), tokenizer, samples=16, seqlen=128, seed=4)
    assert torch.equal(calib.input_ids, again.input_ids)
    assert not torch.equal(calib.input_ids, other.input_ids)

    stream = tokenize_text(load_text(str(TS_TRAIN)).text, tokenizer)
    for window in calib.input_ids:
        starts = torch.nonzero(stream[: stream.numel() - 127] == window[0]).flatten()
        assert any(torch.equal(stream[s : s + 128], window) for s in starts.tolist())


def test_tokenize_adds_single_bos(tokenizer):
    ids = tokenize_text("Once upon a time.\n\nThe end.", tokenizer)
    assert ids.dim() == 1 and ids[0].item() == tokenizer.bos_token_id
    assert (ids == tokenizer.bos_token_id).sum().item() == 1


def test_calibration_too_short_and_bad_args(tmp_path, tokenizer):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.\n", encoding="utf-8")
    with pytest.raises(DataError, match="fewer than one window of seqlen=512"):
        load(str(short), tokenizer, samples=2, seqlen=512)
    with pytest.raises(ValueError):
        load(str(short), tokenizer, samples=0, seqlen=4)
    with pytest.raises(ValueError):
        load(str(short), tokenizer, samples=1, seqlen=1)


# ----------------------------------------------------------------------------- perplexity


def _check_result(result: PerplexityResult) -> None:
    assert isinstance(result, PerplexityResult)
    assert math.isfinite(result.ppl) and 3.0 < result.ppl < 10.0
    assert result.tokens == result.windows * (SEQLEN - 1)
    assert result.seqlen == SEQLEN and result.stride is None
    d = result.to_dict()
    assert {"ppl", "tokens", "seqlen", "data", "nll", "windows", "stride"} <= d.keys()
    assert d["data"] == str(TS_VALID)
    assert d["sha256"] == load_text(str(TS_VALID)).sha256


def test_perplexity_stories260k_tinystories_valid(model, tokenizer):
    """First 64 windows of the valid prefix (the full prefix is the slow test below)."""
    result = perplexity(
        model, tokenizer, str(TS_VALID), seqlen=SEQLEN, batch_size=8, max_tokens=64 * SEQLEN, progress=False
    )
    print(f"\nstories260k ppl, tinystories valid prefix, first {result.windows} windows of {SEQLEN}: "
          f"{result.ppl:.4f} over {result.tokens} tokens")
    _check_result(result)
    assert result.windows == 64


@pytest.mark.slow
def test_perplexity_stories260k_tinystories_valid_full(model, tokenizer):
    result = perplexity(model, tokenizer, str(TS_VALID), seqlen=SEQLEN, batch_size=8, progress=False)
    print(f"\nstories260k ppl, full tinystories valid prefix (seqlen {SEQLEN}): {result.ppl:.4f} "
          f"over {result.tokens} tokens in {result.windows} windows")
    _check_result(result)
    assert result.windows == 767 and result.tokens == 391_937
    assert result.ppl == pytest.approx(5.0546, rel=1e-4)  # official SliceGPT code on this data: 5.05


def test_perplexity_matches_hf_loss_on_one_window(model, valid_ids):
    window = valid_ids[:SEQLEN]
    with torch.no_grad():
        hf_loss = model(input_ids=window[None], labels=window[None]).loss.item()
    result = perplexity(model, None, valid_ids, seqlen=SEQLEN, max_tokens=SEQLEN, progress=False)
    assert result.tokens == SEQLEN - 1 and result.windows == 1
    assert result.nll == pytest.approx(hf_loss, rel=1e-5)


def test_strided_with_full_stride_equals_default(model, valid_ids):
    kwargs = dict(seqlen=SEQLEN, batch_size=4, max_tokens=12 * SEQLEN + 100, progress=False)
    plain = perplexity(model, None, valid_ids, **kwargs)
    strided = perplexity(model, None, valid_ids, stride=SEQLEN, **kwargs)
    assert strided.tokens == plain.tokens
    assert strided.ppl == pytest.approx(plain.ppl, rel=1e-6)
    half = perplexity(model, None, valid_ids, stride=SEQLEN // 2, **kwargs)
    assert half.windows == 23 and half.tokens == (SEQLEN - 1) + 22 * (SEQLEN // 2)
    assert math.isfinite(half.ppl)


def test_max_tokens_limits_tokens(model, valid_ids):
    result = perplexity(model, None, valid_ids, seqlen=SEQLEN, max_tokens=3 * SEQLEN + 7, progress=False)
    assert result.windows == 3
    assert result.tokens == 3 * (SEQLEN - 1)


def test_batch_size_does_not_change_ppl(model, valid_ids):
    kwargs = dict(seqlen=SEQLEN, max_tokens=10 * SEQLEN, progress=False)
    one = perplexity(model, None, valid_ids, batch_size=1, **kwargs)
    four = perplexity(model, None, valid_ids, batch_size=4, **kwargs)
    assert one.tokens == four.tokens == 10 * (SEQLEN - 1)
    assert four.ppl == pytest.approx(one.ppl, rel=1e-5)


def test_perplexity_argument_errors(model, tokenizer, valid_ids):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        perplexity(model, tokenizer, valid_ids, seqlen=1024, progress=False)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, tokenizer, valid_ids, seqlen=SEQLEN, max_tokens=SEQLEN - 1, progress=False)
    with pytest.raises(ValueError):
        perplexity(model, tokenizer, valid_ids, seqlen=1, progress=False)
    with pytest.raises(ValueError):
        perplexity(model, tokenizer, valid_ids, seqlen=SEQLEN, batch_size=0, progress=False)
