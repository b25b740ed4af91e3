"""Sample-based entropy estimates for policies without a tractable density (diffusion).

The Kozachenko-Leonenko nearest-neighbour estimator works on samples the agent already drew
(e.g. ISSM's M candidates per state), for all states and agents in one batched call:

    H ~= psi(M) - psi(k) + log c_d + (d / M) sum_j log r_j

with r_j the distance from sample j to its k-th nearest neighbour among the M samples of the
same state and c_d the volume of the unit d-ball. It makes no unimodality assumption, which
matters for multimodal diffusion policies.
"""

from __future__ import annotations

import math

import torch

MIN_DISTANCE = 1e-6  # samples clamped to the same action-box corner would give log 0


def knn_log_distances(samples: torch.Tensor, k: int = 1) -> torch.Tensor:
    """samples [M, ..., d] -> log distance of each sample to its k-th nearest neighbour among
    the M samples of the same distribution, [M, ...].

    Up to constants, -d * this is the kNN estimate of each sample's log density, which is what
    importance weights need when the proposal is a policy without a tractable density.
    """
    m = samples.shape[0]
    if not 1 <= k < m:
        raise ValueError(f"need 1 <= k < M, got k={k}, M={m}")
    points = samples.movedim(0, -2)  # [..., M, d]
    # The direct form: the |x|^2 + |y|^2 - 2xy form cdist picks above 25 points loses close
    # pairs to cancellation in float32, and those are exactly the nearest neighbours.
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    eye = torch.eye(m, dtype=torch.bool, device=samples.device)
    distances = distances.masked_fill(eye, float("inf"))
    # k = 1 (every caller's): the row's minimum, kthvalue's value exactly at about an eighth of
    # its time (kthvalue was most of ddpl's kNN estimate at MASAC's 4-agent peer shapes)
    kth = distances.amin(-1) if k == 1 else distances.kthvalue(k, dim=-1).values  # [..., M]
    return kth.clamp_min(MIN_DISTANCE).log().movedim(-1, 0)


def knn_entropy(
    samples: torch.Tensor, dims: torch.Tensor | None = None, k: int = 1
) -> torch.Tensor:
    """samples [M, ..., d] (M draws per distribution) -> entropy estimate [...] in nats.

    `dims` ([...] broadcastable, optional) gives each distribution's real dimension when the
    trailing dim is zero-padded (heterogeneous agents); padded entries must be equal (zero)
    across samples so they do not change distances.
    """
    m = samples.shape[0]
    mean_log_r = knn_log_distances(samples, k).mean(0)  # [...]
    d = (
        samples.new_full(mean_log_r.shape, float(samples.shape[-1]))
        if dims is None
        else (dims.to(samples.device, samples.dtype).expand(mean_log_r.shape))
    )
    log_unit_ball = 0.5 * d * math.log(math.pi) - torch.lgamma(0.5 * d + 1.0)
    digamma = torch.special.digamma(torch.tensor([float(m), float(k)]))
    return float(digamma[0] - digamma[1]) + log_unit_ball + d * mean_log_r
