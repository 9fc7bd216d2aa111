"""PruneNet: KS distance and reward, policy training, reuse at other ratios, no data read, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter, get_module
from slimformer.methods.prunenet import PruneNetConfig, ks_distance, load_policy, spectrum_reward, train_policy
from slimformer.methods.prunenet.apply import first_ffn_matrix
from slimformer.methods.prunenet.policy import gumbel_top_k, plackett_luce_log_prob

from tiny_models import FAMILIES, VOCAB, make_model


def _with_spectrum(sigmas: list[float], n_rows: int, seed: int = 0) -> torch.Tensor:
    """A ``[n_rows, len(sigmas)]`` matrix with exactly these singular values."""
    g = torch.Generator().manual_seed(seed)
    d = len(sigmas)
    U, _ = torch.linalg.qr(torch.randn(n_rows, d, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (U * torch.tensor(sigmas, dtype=torch.float64)) @ V.T


def test_ks_distance_on_known_samples() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ks_distance(a, a.flip(0)) == 0.0
    assert ks_distance(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 1.0
    assert ks_distance(a, torch.tensor([1.0, 2.0])) == pytest.approx(0.5)
    assert ks_distance(a, torch.tensor([2.5])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        ks_distance(a, torch.tensor([]))


def test_reward_on_matrices_with_known_spectra() -> None:
    sig = [5.0, 4.0, 3.0, 2.0, 1.0]
    W = _with_spectrum(sig, 12)
    ref = torch.linalg.svdvals(W.float())
    assert torch.allclose(ref.double(), torch.tensor(sig, dtype=torch.float64), atol=1e-5)
    # identical spectra -> distance 0 -> the best reward
    assert spectrum_reward(ref, W, torch.arange(12)) == 0.0
    # a matrix built with the spectrum of the kept rows' target: padding rows of zeros changes nothing
    Z = torch.cat([W, torch.zeros(4, 5, dtype=W.dtype)])
    assert spectrum_reward(ref, Z, torch.arange(12)) == 0.0
    assert spectrum_reward(ref, Z, torch.arange(16)) == 0.0
    # keeping 3 equal rows: sigma = {sqrt(3)*|sig| = 12.8, 0, 0}; at x just above 0 the CDFs differ by 2/3
    R = torch.cat([W, torch.outer(torch.ones(3, dtype=W.dtype), torch.tensor(sig, dtype=W.dtype))])
    assert spectrum_reward(torch.linalg.svdvals(W.float()), R, torch.arange(12, 15)) == pytest.approx(-2 / 3)


def test_plackett_luce_log_prob_is_exact_and_gumbel_draws_follow_it() -> None:
    s = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    p = s.exp() / s.exp().sum()
    # P(2 then 0) = p2 * p0 / (1 - p2)
    expected = torch.log(p[2] * p[0] / (1 - p[2]))
    assert float(plackett_luce_log_prob(s, torch.tensor([2, 0]))) == pytest.approx(float(expected), rel=1e-12)
    # all orderings of size 2 sum to one
    total = sum(float(plackett_luce_log_prob(s, torch.tensor([i, j])).exp()) for i in range(4) for j in range(4) if i != j)
    assert total == pytest.approx(1.0, rel=1e-12)
    # empirical first-draw frequencies match softmax
    g = torch.Generator().manual_seed(0)
    firsts = torch.stack([gumbel_top_k(s, 2, g)[0] for _ in range(4000)])
    freq = torch.bincount(firsts, minlength=4).double() / 4000
    assert torch.allclose(freq, p, atol=0.03)


def test_training_improves_the_reward_over_random_keep_sets() -> None:
    """Half the rows carry the spectrum, half are tiny: the trained policy must find the big ones."""
    g = torch.Generator().manual_seed(1)
    mats = []
    for layer in range(3):
        big = torch.randn(32, 16, generator=g) * 3.0
        small = torch.randn(32, 16, generator=g) * 0.05
        W = torch.cat([big, small])[torch.randperm(64, generator=g)]
        mats.append(W)
    res = train_policy(mats, [32] * 3, episodes=60, lr=1e-2, hidden=16, samples=4, seed=0, progress=False)
    assert len(res.rewards) == 60 and res.seconds > 0
    refs = [torch.linalg.svdvals(W) for W in mats]
    with torch.no_grad():
        trained = sum(spectrum_reward(r, W, res.policy(W).topk(32).indices) for r, W in zip(refs, mats)) / 3
    rand = sum(spectrum_reward(r, W, torch.randperm(64, generator=g)[:32]) for r, W in zip(refs, mats)
               for _ in range(10)) / 30
    assert trained > rand + 0.1, (trained, rand)
    assert sum(res.rewards[-10:]) / 10 > sum(res.rewards[:10]) / 10


@pytest.mark.parametrize("family", FAMILIES)
def test_prunes_ffn_of_every_family_to_target(family: str, tmp_path: Path) -> None:
    model = make_model(family)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    res = sf.compress(model, PruneNetConfig(target_params=0.15, episodes=2, samples=2), progress=False)
    assert abs(res.report["target_params"]["achieved"] - 0.15) <= 0.01
    assert res.report["params_after"] == sum(p.numel() for p in model.parameters())
    ad = get_adapter(model)
    widths = {get_module(b, ad.down).in_features for b in ad.get_layers(model)}
    assert len(widths) == 1 and widths.pop() < 96
    out = res.save(tmp_path / "m", plain=True)  # uniform MLP width: a plain HF config
    assert (Path(out) / "policy.safetensors").is_file() and (Path(out) / "policy.json").is_file()
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(ids).logits, atol=1e-5)


def test_policy_reuse_at_other_ratios_without_training(tmp_path: Path) -> None:
    model = make_model("llama")
    res = sf.compress(model, PruneNetConfig(sparsity=0.3, episodes=3, samples=2), progress=False)
    assert res.report["policy"]["trained"] and res.report["policy"]["train_sparsity"] == pytest.approx(0.3)
    out = Path(res.save(tmp_path / "m30"))
    policy_file = out / "policy.safetensors"
    policy, meta = load_policy(policy_file, expect_d=64)
    assert meta["train_sparsity"] == pytest.approx(0.3)
    for sp in (0.2, 0.4):
        fresh = make_model("llama")
        r = sf.compress(fresh, PruneNetConfig(sparsity=sp, policy=str(policy_file)), progress=False)
        assert not r.report["policy"]["trained"]
        ad = get_adapter(fresh)
        for block, dense_block in zip(ad.get_layers(fresh), ad.get_layers(make_model("llama"))):
            W1 = first_ffn_matrix(dense_block, ad)
            k = int((1 - sp) * 96)
            with torch.no_grad():
                expected = policy(W1).topk(k).indices.sort().values
            kept = get_module(block, ad.gate).weight
            assert torch.equal(kept, W1.index_select(0, expected))  # the policy's top-k, in order
    with pytest.raises(ValueError, match="width 64"):
        load_policy(policy_file, expect_d=128)


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PruneNetConfig(sparsity=0.2, policy=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "policy.safetensors"
    bad.write_bytes(b"garbage")
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_policy(bad)
    (tmp_path / "policy.json").write_text(json.dumps({"format": "slimformer-prunenet-policy", "version": 1,
                                                      "d": 64, "hidden": 8}))
    with pytest.raises(ValueError, match="cannot read policy weights"):
        load_policy(bad)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="FFN only"):
        PruneNetConfig(sparsity=0.2, attention="channels")
    with pytest.raises(ValueError, match="calibration-free"):
        PruneNetConfig(sparsity=0.2, schedule="layer-redundancy")
    with pytest.raises(ValueError, match="samples must be >= 2"):
        PruneNetConfig(sparsity=0.2, samples=1)
    with pytest.raises(ValueError, match="sparsity must be in"):
        PruneNetConfig(sparsity=1.2)
    with pytest.raises(ValueError, match="calibration-free"):
        sf.compress(make_model("llama"), PruneNetConfig(sparsity=0.2), torch.zeros(1, 8, dtype=torch.long))


def test_cli_reads_no_data(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                           stories_dir: Path) -> None:
    """The whole CLI path runs with every data loader disabled; --calib is refused."""
    import slimformer.data as data
    from slimformer.cli import main

    def forbidden(*a, **k):
        raise AssertionError("PruneNet must not read calibration data")

    for name in ("load", "load_text", "tokenize_text", "random_windows"):
        monkeypatch.setattr(data, name, forbidden)
    out = tmp_path / "pn"
    code = main(["compress", str(stories_dir), "--method", "prunenet", "--target-params", "0.2",
                 "--episodes", "3", "--out", str(out), "--no-progress"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "achieved" in stdout and (out / "policy.safetensors").is_file()
    rep = json.loads((out / "slimformer_report.json").read_text())
    assert abs(rep["target_params"]["achieved"] - 0.2) <= 0.01 and rep["calibration"] is None
    code = main(["compress", str(stories_dir), "--method", "prunenet", "--sparsity", "0.2", "--calib", "x.txt",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "calibration-free" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # reuse through the CLI: --policy prunes with no training
    code = main(["compress", str(stories_dir), "--method", "prunenet", "--sparsity", "0.4",
                 "--policy", str(out / "policy.safetensors"), "--out", str(tmp_path / "pn40"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "pn40" / "slimformer_report.json").read_text())
    assert rep["policy"]["trained"] is False


def test_stories260k_policy_preserves_spectra_better_than_random(stories_dir: Path, tinystories_valid: Path,
                                                                 tmp_path: Path) -> None:
    """Real model: the trained policy's keep-sets keep the FFN spectra closer than random ones (what
    PruneNet optimises), and the pruned model stays a working language model. Whether that also
    gives lower perplexity than random is measured, not assumed: docs/prunenet.md."""
    from slimformer.eval import perplexity

    model, tok = sf.load_model(str(stories_dir))
    res = sf.compress(model, PruneNetConfig(sparsity=0.3), progress=False)  # defaults: 60 episodes, lr 1e-2
    rewards = res.report["policy"]["rewards"]
    assert len(rewards) == 60 and sum(rewards[-10:]) > sum(rewards[:10])
    dense, _ = sf.load_model(str(stories_dir))
    ad = get_adapter(dense)
    for name, data in res.artifacts.items():
        (tmp_path / name).write_bytes(data)
    policy, _ = load_policy(tmp_path / "policy.safetensors", expect_d=64)
    g = torch.Generator().manual_seed(0)
    mats = [first_ffn_matrix(b, ad) for b in ad.get_layers(dense)]
    k = int(0.7 * mats[0].shape[0])
    with torch.no_grad():
        ours = sum(spectrum_reward(torch.linalg.svdvals(W), W, policy(W).topk(k).indices) for W in mats)
    rand = sum(spectrum_reward(torch.linalg.svdvals(W), W, torch.randperm(W.shape[0], generator=g)[:k])
               for W in mats for _ in range(8)) / 8
    assert ours > rand, (ours, rand)
    ppl = perplexity(model, tok, str(tinystories_valid), seqlen=512, max_tokens=20000, progress=False).ppl
    assert ppl < 100, ppl
