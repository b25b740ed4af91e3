"""Batched EM for Gaussian mixtures and DACER's mixture entropy against known answers."""

from __future__ import annotations

import math

import pytest
import torch

from marl_diff.diffusion.gmm import fit_gmm, gmm_entropy, mixture_entropy

TRUE_WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
TRUE_MEANS = torch.tensor([[-4.0, 0.0], [4.0, 1.0], [0.0, 6.0]])
TRUE_COVS = torch.stack(
    [
        torch.tensor([[1.0, 0.3], [0.3, 0.5]]),
        torch.tensor([[0.4, -0.1], [-0.1, 0.8]]),
        torch.tensor([[0.3, 0.0], [0.0, 0.3]]),
    ]
)


def draw_mixture(sets: int, k: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.multinomial(TRUE_WEIGHTS.expand(sets, -1), k, True, generator=generator)
    chol = torch.linalg.cholesky(TRUE_COVS)
    z = torch.randn(sets, k, 2, generator=generator)
    return TRUE_MEANS[labels] + (chol[labels] @ z[..., None])[..., 0]


def sorted_by_first_mean(weights, means, covs):
    order = means[..., 0].argsort(-1)
    take = torch.gather
    return (
        take(weights, -1, order),
        take(means, -2, order[..., None].expand_as(means)),
        take(covs, -3, order[..., None, None].expand_as(covs)),
    )


def test_em_recovers_a_known_three_component_mixture_in_many_sets_at_once():
    gen = torch.Generator().manual_seed(0)
    samples = draw_mixture(sets=16, k=2000, generator=gen)
    gmm = fit_gmm(samples, n_components=3, iterations=100, generator=gen)
    w, mu, cov = sorted_by_first_mean(*gmm)
    tw, tmu, tcov = sorted_by_first_mean(TRUE_WEIGHTS, TRUE_MEANS, TRUE_COVS)
    assert torch.allclose(w, tw.expand_as(w), atol=0.04)
    assert torch.allclose(mu, tmu.expand_as(mu), atol=0.15)
    assert torch.allclose(cov, tcov.expand_as(cov), atol=0.15)
    expected = gmm_entropy(TRUE_WEIGHTS, TRUE_COVS)
    assert torch.allclose(gmm_entropy(gmm.weights, gmm.covariances), expected, atol=0.05)


def test_entropy_at_200_samples_is_close_to_the_formula_at_the_true_parameters():
    gen = torch.Generator().manual_seed(1)
    samples = draw_mixture(sets=64, k=200, generator=gen)
    gmm = fit_gmm(samples, generator=gen)
    entropy = gmm_entropy(gmm.weights, gmm.covariances)
    expected = gmm_entropy(TRUE_WEIGHTS, TRUE_COVS).item()
    assert entropy.mean().item() == pytest.approx(expected, abs=0.1)
    # single sets of 200: most fits close, an occasional local optimum of EM further off
    assert (entropy - expected).abs().median() < 0.1
    assert ((entropy - expected).abs() < 0.3).float().mean() > 0.9


def test_gmm_entropy_formula_by_hand():
    covs = torch.stack([torch.eye(2) * 2.0, torch.eye(2) * 0.5])
    w = torch.tensor([0.25, 0.75])
    by_hand = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + sum(
        wi * 0.5 * (2 * (1 + math.log(2 * math.pi)) + math.log(det))
        for wi, det in ((0.25, 4.0), (0.75, 0.25))
    )
    assert gmm_entropy(w, covs).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("d", [1, 3])
def test_a_single_gaussian_gives_its_exact_entropy(d):
    gen = torch.Generator().manual_seed(d)
    a = torch.randn(d, d, generator=gen)
    cov = a @ a.T * 0.1 + 0.05 * torch.eye(d)
    samples = torch.randn(32, 2000, d, generator=gen) @ torch.linalg.cholesky(cov).T + 0.3
    exact = 0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * torch.logdet(cov).item()
    one = fit_gmm(samples, n_components=1, iterations=1)
    assert gmm_entropy(one.weights, one.covariances).mean().item() == pytest.approx(exact, abs=0.02)
    # DACER's 3 components on one Gaussian: the formula is an upper bound (label entropy plus
    # the components' entropies), above the exact value by at most log 3
    three = gmm_entropy(*fit_gmm(samples, generator=gen)[::2])
    assert (three > exact - 0.05).all() and (three < exact + math.log(3.0)).all()


def test_padded_agents_are_fitted_on_their_real_dims_only():
    gen = torch.Generator().manual_seed(3)
    k, b = 400, 4
    # agent 0: 2-D N(0, 0.1^2 I); agent 1: 1-D N(0, 0.2^2), its second entry padded with zero
    a0 = 0.1 * torch.randn(k, b, 2, generator=gen)
    a1 = torch.cat([0.2 * torch.randn(k, b, 1, generator=gen), torch.zeros(k, b, 1)], -1)
    samples = torch.stack([a0, a1], dim=2)  # [K, B, N=2, A=2]
    mask = torch.tensor([[True, True], [True, False]])
    entropy = mixture_entropy(samples, mask, n_components=1, generator=gen)
    assert entropy.shape == (b, 2)
    gauss = 0.5 * (1 + math.log(2 * math.pi))
    assert entropy[:, 0].mean().item() == pytest.approx(2 * (gauss + math.log(0.1)), abs=0.15)
    assert entropy[:, 1].mean().item() == pytest.approx(gauss + math.log(0.2), abs=0.15)


def test_collapsed_samples_stay_finite():
    samples = torch.ones(5, 200, 2)  # e.g. every action clipped to the same corner
    gmm = fit_gmm(samples, reg=1e-4)
    entropy = gmm_entropy(gmm.weights, gmm.covariances)
    assert torch.isfinite(entropy).all()
    assert entropy.max().item() < 0.0
