"""DOTResize reference modes (issue #22): the mass-preserving plan and the correlation cost."""

from __future__ import annotations

import pytest
import torch

import slimformer as sf
from slimformer.cli import main
from slimformer.methods.dotresize.ot import (
    centred_second_moment,
    correlation_distance,
    dot_basis,
    mass_preserving_plan,
    merge_map,
    pairwise_cost,
    select_targets,
    self_weights,
    solve_transport,
    target_marginal,
)

from tiny_models import VOCAB, make_model

TOL = 1e-4


def _acts(tokens: int, neurons: int, seed: int = 0) -> torch.Tensor:
    """``[tokens, neurons]`` float64 activations with unequal neuron scales and a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, neurons, generator=g, dtype=torch.float64)
    return X * torch.linspace(0.5, 3.0, neurons, dtype=torch.float64) + 0.3


def _calib(n: int = 8, t: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(123))


def _problem(n: int = 12, k: int = 5, marginal: str = "uniform", cost: str = "l2", seed: int = 0):
    X = _acts(200, n, seed)
    C = X.T @ X
    J = select_targets(C, k, "norm")
    M = pairwise_cost(C, J, cost)
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return C, J, M, a, target_marginal(M, marginal)


# ----- mass-preserving transport ---------------------------------------------------------


@pytest.mark.parametrize("reg", [0.0, 0.05])
@pytest.mark.parametrize("marginal", ["uniform", "nearest"])
def test_mass_preserving_plan_keeps_each_kept_neuron_on_itself(marginal: str, reg: float) -> None:
    n, k = 12, 5
    _, J, M, a, b = _problem(n, k, marginal)
    res = mass_preserving_plan(M, a, J, b, reg, max_iter=5000, tol=1e-12)
    P = res.plan
    cols = torch.arange(k)
    # the defining property: P[J_j, j] = a[J_j] >= its share, nothing of a kept neuron goes elsewhere
    assert torch.all(P[J, cols] >= a[J] - 1e-15) and torch.allclose(P[J, cols], a[J], atol=1e-15)
    off = P[J].clone()
    off[cols, cols] = 0.0
    assert float(off.abs().max()) == 0.0
    # rows sum to a, columns to a[J] + m b (m = mass of the dropped neurons)
    m = 1.0 - float(a[J].sum())
    assert bool((P >= 0).all())
    assert torch.allclose(P.sum(1), a, atol=1e-10)
    assert torch.allclose(P.sum(0), a[J] + m * b, atol=1e-10)
    assert res.marginal_error < 1e-9
    # the dropped rows are the solution of the dropped -> kept problem, scaled by m
    keep = torch.zeros(n, dtype=torch.bool)
    keep[J] = True
    sub = solve_transport(M[~keep], a[~keep] / m, b, reg, max_iter=5000, tol=1e-12)
    assert torch.allclose(P[~keep], m * sub.plan, atol=1e-12)
    # in the merge map each kept neuron is the largest weight of its own merged neuron
    T = merge_map(P)
    w = self_weights(T, J)
    assert torch.allclose(w, a[J] / (a[J] + m * b), atol=1e-12)
    assert torch.all(w >= T.max(dim=0).values - 1e-12)


def test_mass_preserving_reaches_the_balanced_cap_k_over_n() -> None:
    # uniform marginals: the balanced plan caps T[J_j, j] at k/n; mass-preserving sits exactly on it
    n, k = 12, 5
    _, J, M, a, b = _problem(n, k, "uniform")
    for reg in (0.01, 0.1, 1.0):
        balanced = self_weights(merge_map(solve_transport(M, a, b, reg, 5000, 1e-12).plan), J)
        kept = self_weights(merge_map(mass_preserving_plan(M, a, J, b, reg, 5000, 1e-12).plan), J)
        assert torch.allclose(kept, torch.full((k,), k / n, dtype=torch.float64), atol=1e-12)
        assert torch.all(balanced <= k / n + 1e-9)
        assert torch.all(kept >= balanced - 1e-9)
    # with a large regularisation the balanced plan smears each kept neuron over all targets
    assert float(balanced.max()) < 0.6 * k / n


def test_mass_preserving_merge_map_always_has_full_rank() -> None:
    # two identical loudest neurons both become targets ("norm"): the balanced soft plan then has two
    # equal columns (refused); the mass-preserving one keeps each target on itself, so rank k
    base = _acts(300, 4, seed=1)
    X = base[:, [0, 1, 2, 3, 0, 1, 2, 3]]
    C = X.T @ X
    with pytest.raises(ValueError, match="identical activations"):
        dot_basis(C, 4, reg=0.05, targets="norm")
    basis = dot_basis(C, 4, reg=0.05, targets="norm", transport="mass-preserving")
    assert torch.allclose(basis.Q.T @ basis.Q, torch.eye(4, dtype=torch.float64), atol=1e-10)
    assert basis.transport.marginal_error < 1e-8


def test_mass_preserving_at_full_width_is_the_identity() -> None:
    _, J, M, a, b = _problem(7, 7)
    res = mass_preserving_plan(M, a, J, b, reg=0.1)
    assert res.iterations == 0 and res.cost == 0.0
    assert torch.allclose(merge_map(res.plan)[J], torch.eye(7, dtype=torch.float64))


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_mass_preserving_at_sparsity_zero_is_exact_for_any_reg(family: str) -> None:
    model = make_model(family)
    with torch.no_grad():
        dense = model(input_ids=_probe()).logits
    cfg = sf.DOTResizeConfig(sparsity=0.0, entropic_reg=0.1, transport="mass-preserving")
    result = sf.compress(model, cfg, _calib(), progress=False)
    with torch.no_grad():
        assert (model(input_ids=_probe()).logits - dense).abs().max().item() <= TOL
    assert all(t["min_self_weight"] == pytest.approx(1.0) for t in result.report["transport"].values())


@pytest.mark.parametrize("where", ["residual", "mlp"])
def test_mass_preserving_at_sparsity_0_2_has_the_predicted_parameter_count(where: str) -> None:
    # same widths as the balanced plan and the prune-only baseline: the count is the planner's
    counts = []
    for kwargs in (dict(transport="mass-preserving"), dict(), dict(prune_only=True)):
        model = make_model("llama")
        r = sf.compress(model, sf.DOTResizeConfig(sparsity=0.2, where=where, **kwargs), _calib(), progress=False)
        assert r.report["params_after"] == sf.count_params(model)
        counts.append(r.report["params_after"])
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=_probe()).logits).all()
        if kwargs.get("transport"):  # uniform marginals: every kept neuron is exactly k/n of its merged neuron
            share = ([c["mlp"] / 96 for c in r.report["kept"]] if where == "mlp"
                     else [r.plan.embed_width / 64] * len(r.report["transport"]))
            for (point, t), s in zip(r.report["transport"].items(), share):
                assert t["marginal_error"] < 1e-6, point
                assert t["min_self_weight"] == pytest.approx(s, abs=1e-6), point
    assert counts[0] == counts[1] == counts[2] < sf.count_params(make_model("llama"))


# ----- the correlation cost --------------------------------------------------------------


def test_correlation_cost_is_a_symmetric_zero_diagonal_distance_in_range() -> None:
    X = _acts(150, 10, seed=2)
    C = X.T @ X
    J = torch.arange(10)
    D = correlation_distance(C, J)  # [n, n] with every neuron a target
    assert torch.allclose(D, D.T, atol=1e-12)
    assert torch.allclose(torch.diagonal(D), torch.zeros(10, dtype=torch.float64))
    assert float(D.min()) >= 0.0 and float(D.max()) <= 2.0
    Xn = X / X.norm(dim=0, keepdim=True)
    assert torch.allclose(D, 1.0 - Xn.T @ Xn, atol=1e-12)  # uncentred correlation = cosine
    M = pairwise_cost(C, J, "correlation")
    assert float(M.max()) == pytest.approx(1.0) and float(M.min()) >= 0.0
    assert torch.allclose(M, D / D.max())


def test_correlation_cost_is_invariant_to_scaling_a_neuron() -> None:
    X = _acts(150, 10, seed=3)
    J = select_targets(X.T @ X, 4)
    M = pairwise_cost(X.T @ X, J, "correlation")
    Y = X.clone()
    Y[:, 2] *= 7.5  # a louder copy of neuron 2
    Y[:, J[0]] *= 0.1  # a quieter target
    assert torch.allclose(pairwise_cost(Y.T @ Y, J, "correlation"), M, atol=1e-12)
    # l2 is not: it is the scale that the correlation cost ignores
    assert not torch.allclose(pairwise_cost(Y.T @ Y, J, "l2"), pairwise_cost(X.T @ X, J, "l2"), atol=1e-3)
    # a sign flip is not a rescaling: anti-correlated neurons are far apart
    Y[:, 2] *= -1.0
    assert not torch.allclose(pairwise_cost(Y.T @ Y, J, "correlation"), M, atol=1e-3)


def test_correlation_on_the_centred_moment_is_pearson_and_dead_neurons_are_handled() -> None:
    X = _acts(150, 6, seed=4)
    C = centred_second_moment(X.T @ X, X.mean(0), X.shape[0])
    D = correlation_distance(C, torch.arange(6))
    assert torch.allclose(D, 1.0 - torch.corrcoef(X.T), atol=1e-10)
    X[:, 5] = 0.0  # a neuron that never fires
    D = correlation_distance(X.T @ X, torch.tensor([5, 0]))  # targets: the dead neuron, neuron 0
    assert float(D[5, 0]) == 0.0 and float(D[0, 1]) == 0.0  # each at distance 0 from itself
    assert torch.allclose(D[:5, 0], torch.ones(5, dtype=torch.float64)) and float(D[5, 1]) == 1.0
    assert torch.isfinite(D).all()


@pytest.mark.parametrize("transport", ["balanced", "mass-preserving"])
def test_correlation_cost_end_to_end(transport: str) -> None:
    model = make_model("llama")
    with torch.no_grad():
        dense = model(input_ids=_probe()).logits
    cfg = sf.DOTResizeConfig(sparsity=0.0, entropic_reg=0.0, cost="correlation", transport=transport)
    r = sf.compress(model, cfg, _calib(), progress=False)
    with torch.no_grad():
        assert (model(input_ids=_probe()).logits - dense).abs().max().item() <= TOL  # a permutation
    assert all(t["cost"] == 0.0 for t in r.report["transport"].values())
    merged = make_model("llama")
    r = sf.compress(merged, sf.DOTResizeConfig(target_params=0.1, cost="correlation", transport=transport),
                    _calib(), progress=False)
    assert r.report["params_after"] == sf.count_params(merged)
    with torch.no_grad():
        assert torch.isfinite(merged(input_ids=_probe()).logits).all()


# ----- configuration and CLI -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(transport="unbalanced"), r"unknown transport 'unbalanced'; available: balanced, mass-preserving"),
        (dict(cost="pearson"), r"available: l2, sqeuclidean, correlation"),
    ],
)
def test_config_errors_are_one_line_with_the_choices(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        sf.DOTResizeConfig(sparsity=0.2, **kwargs)
    assert "\n" not in str(err.value)


def test_cli_takes_transport_and_correlation(tmp_path, stories_dir, tinystories_train) -> None:
    out = tmp_path / "dot"
    rc = main([
        "compress", str(stories_dir), "--method", "dotresize", "--sparsity", "0.25", "--calib",
        str(tinystories_train), "--calib-samples", "8", "--calib-seqlen", "64", "--transport", "mass-preserving",
        "--cost", "correlation", "--out", str(out), "--no-progress",
    ])
    assert rc == 0
    model, _ = sf.load_model(out)
    assert model.model.embed_tokens.weight.shape[1] == 48  # 64 * 0.75
    assert main(["compress", str(stories_dir), "--method", "dotresize", "--sparsity", "0.1",
                 "--transport", "partial", "--calib", str(tinystories_train)]) == 2
