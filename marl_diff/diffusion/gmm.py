"""Gaussian mixtures fitted by EM to many independent sample sets at once, and DACER's mixture
entropy estimate.

DACER estimates a diffusion policy's entropy per state by drawing ~200 actions, fitting a
3-component full-covariance Gaussian mixture and evaluating

    H ~= -sum_c w_c log w_c + sum_c w_c * 0.5 * (d (1 + log 2 pi) + log det Sigma_c)

(the entropy of the component label plus the weighted component entropies: an upper bound on
the mixture's entropy, tight for well-separated components). A batch of states times agents
means hundreds of small, independent fits, so everything here works on [S, K, d] tensors (S
sets of K samples) with batched torch ops on the samples' device: the only Python loops are
over the C components at initialisation and over the fixed number of EM iterations.

Heterogeneous agents pad their actions with zeros; `mixture_entropy` groups agents by their
real action dimension and fits each group on its real entries only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class GaussianMixture(NamedTuple):
    weights: torch.Tensor  # [S, C]
    means: torch.Tensor  # [S, C, d]
    covariances: torch.Tensor  # [S, C, d, d]


def _init_means(x: torch.Tensor, c: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding for every set at once: x [S, K, d] -> means [S, C, d].

    The first centre is a uniformly drawn sample; each further one a sample drawn with
    probability proportional to its squared distance to the nearest centre chosen so far.
    """
    s, k, _ = x.shape
    rows = torch.arange(s, device=x.device)
    first = torch.randint(0, k, (s,), device=x.device, generator=generator)
    centres = [x[rows, first]]
    nearest = (x - centres[0][:, None]).square().sum(-1)  # [S, K]
    for _ in range(1, c):
        # sets whose samples all coincide: fall back to uniform picks
        probs = torch.where(nearest.sum(-1, keepdim=True) > 0, nearest, torch.ones_like(nearest))
        pick = torch.multinomial(probs, 1, generator=generator)[:, 0]
        centres.append(x[rows, pick])
        nearest = torch.minimum(nearest, (x - centres[-1][:, None]).square().sum(-1))
    return torch.stack(centres, dim=1)


def _log_gaussians(x: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor):
    """log N(x_k; mu_c, Sigma_c) for every set, sample and component: [S, C, K]."""
    chol = torch.linalg.cholesky(covariances)  # [S, C, d, d]
    diff = x[:, None] - means[:, :, None]  # [S, C, K, d]
    z = torch.linalg.solve_triangular(chol, diff.transpose(-1, -2), upper=False)  # [S, C, d, K]
    mahalanobis = z.square().sum(-2)  # [S, C, K]
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [S, C]
    d = x.shape[-1]
    return -0.5 * (mahalanobis + logdet[..., None] + d * math.log(2.0 * math.pi))


def fit_gmm(
    samples: torch.Tensor,
    n_components: int = 3,
    iterations: int = 50,
    reg: float = 1e-6,
    generator: torch.Generator | None = None,
) -> GaussianMixture:
    """Fit a C-component full-covariance Gaussian mixture to each of S sample sets by EM.

    samples [S, K, d] -> GaussianMixture with weights [S, C], means [S, C, d], covariances
    [S, C, d, d]. k-means++ seeding (with `generator`), every covariance starting from its set's
    covariance; then a fixed number of EM iterations (no convergence test, so no host sync).
    `reg` is added to every covariance's diagonal (as sklearn's reg_covar), which keeps
    components that collapse onto clipped (repeated) actions invertible. Computed in float64.
    """
    if samples.dim() != 3:
        raise ValueError(f"samples must be [S, K, d], got {list(samples.shape)}")
    s, k, d = samples.shape
    if not 1 <= n_components <= k:
        raise ValueError(f"need 1 <= n_components <= K={k}, got {n_components}")
    x = samples.detach().to(torch.float64)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    means = _init_means(x, n_components, generator)
    centred = x - x.mean(1, keepdim=True)
    set_cov = centred.transpose(1, 2) @ centred / k + reg * eye  # [S, d, d]
    covariances = set_cov[:, None].expand(s, n_components, d, d).contiguous()
    weights = x.new_full((s, n_components), 1.0 / n_components)
    for _ in range(iterations):
        # E-step: responsibilities r [S, C, K]
        log_joint = weights.log()[..., None] + _log_gaussians(x, means, covariances)
        resp = torch.softmax(log_joint, dim=1)
        # M-step
        counts = resp.sum(-1) + 10.0 * torch.finfo(x.dtype).eps  # [S, C]
        weights = counts / counts.sum(-1, keepdim=True)
        means = resp @ x / counts[..., None]  # [S, C, d]
        diff = x[:, None] - means[:, :, None]  # [S, C, K, d]
        covariances = (resp[..., None] * diff).transpose(-1, -2) @ diff / counts[..., None, None]
        covariances = covariances + reg * eye
    dtype = samples.dtype if samples.dtype.is_floating_point else torch.float32
    return GaussianMixture(weights.to(dtype), means.to(dtype), covariances.to(dtype))


def gmm_entropy(weights: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """DACER's mixture entropy: weights [..., C], covariances [..., C, d, d] -> [...] nats.

    -sum w log w + sum w * 0.5 * (d (1 + log 2 pi) + log det Sigma). The label entropy plus the
    weighted component entropies: equals the true entropy for a single Gaussian and for
    well-separated components, an upper bound otherwise.
    """
    d = covariances.shape[-1]
    logdet = torch.linalg.slogdet(covariances.to(torch.float64)).logabsdet.to(weights.dtype)
    component = 0.5 * (d * (1.0 + math.log(2.0 * math.pi)) + logdet)  # [..., C]
    label = -(weights * weights.clamp_min(1e-12).log()).sum(-1)
    return label + (weights * component).sum(-1)


def mixture_entropy(
    samples: torch.Tensor,
    act_mask: torch.Tensor,
    n_components: int = 3,
    iterations: int = 50,
    reg: float = 1e-6,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-state, per-agent GMM entropy of padded actions: samples [K, B, N, A] (K draws per
    state), act_mask [N, A] bool -> entropy [B, N].

    Agents are grouped by their real action dimension (one fit call per distinct dimension,
    usually one or two); each group is fitted on its real entries only, so padding never enters
    the estimate. Within a group all states and agents are fitted in one batched call.
    """
    k, b, n, a = samples.shape
    act_mask = act_mask.to(samples.device).bool()
    dims = act_mask.sum(-1)  # [N]
    out = samples.new_empty(b, n)
    for dim in torch.unique(dims).tolist():
        agents = (dims == dim).nonzero()[:, 0]
        if dim == 0:
            out[:, agents] = 0.0
            continue
        group = samples[:, :, agents]  # [K, B, n_g, A]
        real = group[..., act_mask[agents]].reshape(k, b, len(agents), dim)
        sets = real.permute(1, 2, 0, 3).reshape(b * len(agents), k, dim)
        gmm = fit_gmm(sets, n_components, iterations, reg, generator)
        out[:, agents] = gmm_entropy(gmm.weights, gmm.covariances).reshape(b, len(agents))
    return out
