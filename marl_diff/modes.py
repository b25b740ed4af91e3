"""DDiffPG's mode discovery: which behaviour mode (route, goal) each stored trajectory belongs to.

Pipeline (algorithms.md, DDiffPG "Modes"), numpy in and numpy out, no agent code:
1. `cluster_successes`: only *successful* trajectories define modes. Each is reduced to a path
   of mode features ([T_i, F], e.g. the x-y position in a maze; lengths may differ), compared by
   multivariate DTW (dtaidistance, `dtw_distances`), and grouped by average-linkage hierarchical
   clustering (scipy) cut at `cut_fraction` (0.7) x the largest merge height. The cut is relative,
   so no distance scale has to be tuned per task. Fewer than 2 successes, or more than
   `max_clusters` (10) clusters, mean one mode.
2. `assign_to_clusters`: every failed trajectory joins the mode whose successes its path is
   closest to, DTW measured to at most `members_per_cluster` (3) random members of each mode.
3. `inherit`: after a reclustering, each new mode takes over the critic of the old mode it
   shares the most trajectories with; a mode sharing none starts from a copy of the
   exploration critic.
`discover` runs all three for an agent that keeps a trajectory buffer; `ModeDiscoveryConfig`
holds the card's settings.

Two consequences of the relative cut that callers should know: the top merge is always cut, so
any two or more distinct successful paths give at least two clusters, even copies of one route
that differ only by noise; many noisy copies of one route make a flat dendrogram that splits
into many clusters, which the `max_clusters` rule turns back into a single mode.

dtaidistance and scipy are optional (`pip install 'marl_diff[modes]'`) and imported only here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from marl_diff.errors import BackendMissing, ConfigError, missing_package

INSTALL_HINT = "Install it with: pip install 'marl_diff[modes]'"


def _dtw():
    """dtaidistance's `dtw_ndim` and whether its OpenMP build is usable (imported lazily)."""
    try:
        from dtaidistance import dtw, dtw_ndim
    except ImportError as err:
        if missing_package(err) is None:
            raise  # installed but broken: show the real error
        raise BackendMissing(f"mode discovery needs dtaidistance. {INSTALL_HINT}") from None
    if dtw.dtw_cc is None:
        # The pure-Python fallback is orders of magnitude slower: refuse rather than stall.
        raise BackendMissing(
            "mode discovery needs dtaidistance's compiled C library, which this install lacks. "
            "Reinstall it with: pip install --force-reinstall --no-cache-dir dtaidistance"
        )
    omp = dtw.dtw_cc_omp
    return dtw_ndim, omp is not None and bool(omp.is_openmp_supported())


def _hierarchy():
    """scipy's `linkage`, `fcluster` and `squareform` (imported lazily)."""
    try:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform
    except ImportError as err:
        if missing_package(err) is None:
            raise
        raise BackendMissing(f"mode discovery needs scipy. {INSTALL_HINT}") from None
    return linkage, fcluster, squareform


def _as_paths(paths: Sequence[np.ndarray], what: str = "paths") -> list[np.ndarray]:
    """Float64, C-ordered [T_i, F] arrays (what dtaidistance's C code reads), one F for all."""
    out = []
    for i, p in enumerate(paths):
        a = np.ascontiguousarray(np.asarray(p, dtype=np.float64))
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"{what}[{i}] must be a [T, F] array with T, F >= 1, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what}[{i}] contains NaN or Inf")
        out.append(a)
    if len({a.shape[1] for a in out}) > 1:
        raise ValueError(f"all {what} need the same number of features F")
    return out


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..K-1 in order of first appearance, so equal inputs give equal labels."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def dtw_distances(paths: Sequence[np.ndarray]) -> np.ndarray:
    """Pairwise multivariate (dependent) DTW distances [n, n]: symmetric, zero diagonal.

    DTW, not a step-by-step distance, because trajectories along the same route differ in speed
    and length; dtaidistance's C code (OpenMP where built with it) does the O(n^2 T^2) work.
    """
    series = _as_paths(paths)
    n = len(series)
    if n < 2:
        return np.zeros((n, n))
    dtw_ndim, parallel = _dtw()
    d = np.asarray(dtw_ndim.distance_matrix_fast(series, parallel=parallel), dtype=np.float64)
    return np.maximum(d, d.T)  # exactly symmetric (dtaidistance mirrors the upper triangle)


def _cut(distances: np.ndarray, cut_fraction: float, max_clusters: int) -> np.ndarray:
    n = distances.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    linkage, fcluster, squareform = _hierarchy()
    tree = linkage(squareform(distances, checks=False), method="average")
    top = float(tree[:, 2].max())  # average linkage is monotone: this is the root's height
    if top <= 0.0:
        return np.zeros(n, dtype=np.int64)  # all paths identical: one mode
    labels = _first_appearance(fcluster(tree, cut_fraction * top, criterion="distance"))
    if labels.max() + 1 > max_clusters:
        return np.zeros(n, dtype=np.int64)  # the card: too fragmented to be real modes
    return labels


def cluster_successes(
    paths: Sequence[np.ndarray], cut_fraction: float = 0.7, max_clusters: int = 10
) -> np.ndarray:
    """Mode labels 0..K-1 (int64, one per path) for successful trajectories' paths.

    Average-linkage clustering of the DTW distances, cut at `cut_fraction` x the largest merge
    height (the card's rule: relative, so it needs no per-task distance scale). Fewer than 2
    paths, identical paths, or more than `max_clusters` clusters give one mode (all 0): a
    dendrogram that shatters into many clusters is noise around one behaviour, not many modes.
    Labels are numbered in order of first appearance, so they do not depend on scipy's order.
    """
    if not 0.0 < cut_fraction <= 1.0:
        raise ValueError(f"cut_fraction must be in (0, 1], got {cut_fraction}")
    if max_clusters < 1:
        raise ValueError(f"max_clusters must be >= 1, got {max_clusters}")
    return _cut(dtw_distances(paths), cut_fraction, max_clusters)


def assign_to_clusters(
    paths: Sequence[np.ndarray],
    cluster_paths: Sequence[np.ndarray],
    cluster_labels: np.ndarray,
    members_per_cluster: int = 3,
    *,
    rng: np.random.Generator,
) -> np.ndarray:
    """The mode (from `cluster_labels`) of each path in `paths`, e.g. failed trajectories.

    Each path joins the mode whose successes it is closest to. As in the card, only up to
    `members_per_cluster` random members of each mode are compared (drawn once per call from
    `rng`, the same members for every path), which bounds the cost at a few DTWs per mode.
    The distance to a mode is the *mean* DTW to those members, not the minimum: it estimates
    the average-linkage distance the clustering itself used, and one outlying or odd member
    cannot pull failures into its mode. Ties go to the lowest label.
    """
    if members_per_cluster < 1:
        raise ValueError(f"members_per_cluster must be >= 1, got {members_per_cluster}")
    queries = _as_paths(paths)
    members = _as_paths(cluster_paths, "cluster_paths")
    labels = np.asarray(cluster_labels).reshape(-1)
    if len(labels) != len(members):
        raise ValueError(f"{len(members)} cluster_paths but {len(labels)} cluster_labels")
    if not queries:
        return np.zeros(0, dtype=np.int64)
    if not members:
        raise ValueError("assign_to_clusters needs at least one clustered path")
    if members[0].shape[1] != queries[0].shape[1]:
        raise ValueError("paths and cluster_paths need the same number of features F")

    modes = np.unique(labels)
    chosen, owner = [], []
    for k, mode in enumerate(modes):
        idx = np.flatnonzero(labels == mode)
        pick = rng.choice(idx, size=min(members_per_cluster, len(idx)), replace=False)
        chosen.extend(int(i) for i in pick)
        owner.extend([k] * len(pick))
    m, f = len(chosen), len(queries)
    dtw_ndim, parallel = _dtw()
    full = dtw_ndim.distance_matrix_fast(
        [members[i] for i in chosen] + queries, block=((0, m), (m, m + f)), parallel=parallel
    )
    d = np.asarray(full, dtype=np.float64)[:m, m:]  # [members, queries]
    owner_arr = np.asarray(owner)
    mean = np.stack([d[owner_arr == k].mean(axis=0) for k in range(len(modes))])  # [K, f]
    return modes[np.argmin(mean, axis=0)].astype(np.int64)  # argmin: first (lowest) on ties


def _label_map(ids: Sequence[Hashable], labels: Sequence[int], what: str) -> dict:
    ids, labels = list(ids), np.asarray(labels).reshape(-1)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} {what} ids but {len(labels)} labels")
    out = {i: int(lab) for i, lab in zip(ids, labels, strict=True)}
    if len(out) != len(ids):
        raise ValueError(f"{what} ids must be unique")
    return out


def inherit(
    old_ids: Sequence[Hashable],
    old_labels: Sequence[int],
    new_ids: Sequence[Hashable],
    new_labels: Sequence[int],
) -> dict[int, int | None]:
    """For each new mode label, the old mode it shares the most trajectories with, else None.

    The card: a reclustered mode keeps the critic (and embedding) of the old mode it overlaps
    most, so learning carries over; a mode sharing no trajectory (None) starts from a copy of
    the exploration critic. Overlap counts trajectory ids present in both labellings. Ties go
    to the lowest old label, so the result is deterministic. Two new modes may inherit the same
    old one (a split): each gets its own copy. Ids must name trajectories, not reusable buffer
    slots: a slot overwritten by a new trajectory should get a new id (e.g. an episode counter),
    or the new trajectory counts as overlap with whatever mode the slot's old one was in.
    """
    old = _label_map(old_ids, old_labels, "old")
    new = _label_map(new_ids, new_labels, "new")
    counts: dict[int, dict[int, int]] = {lab: {} for lab in sorted(set(new.values()))}
    for tid, lab in new.items():
        if tid in old:
            votes = counts[lab]
            votes[old[tid]] = votes.get(old[tid], 0) + 1
    return {
        lab: (min(votes, key=lambda o: (-votes[o], o)) if votes else None)
        for lab, votes in counts.items()
    }


@dataclass(frozen=True)
class ModeDiscoveryConfig:
    """The card's settings: cut at 0.7 x the top merge, > 10 clusters -> one mode, failures
    compared with 3 members per mode, and at least 2 successes before there is anything to
    cluster."""

    cut_fraction: float = 0.7
    max_clusters: int = 10
    members_per_cluster: int = 3
    min_successes: int = 2

    def __post_init__(self):
        if not 0.0 < self.cut_fraction <= 1.0:
            raise ConfigError(f"modes.cut_fraction must be in (0, 1], got {self.cut_fraction}")
        for name in ("max_clusters", "members_per_cluster", "min_successes"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"modes.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class DiscoveredModes:
    """The outcome of `discover`.

    labels: mode (0..n_modes-1) of every trajectory passed in, keyed by its id.
    n_modes: how many mode critics (and batch groups) the agent needs.
    inherited: for each mode 0..n_modes-1, the previous mode whose critic it takes over, or None
        for a fresh copy of the exploration critic (always None on the first discovery).
    """

    labels: dict[Hashable, int]
    n_modes: int
    inherited: dict[int, int | None]

    def ids_and_labels(self) -> tuple[list[Hashable], np.ndarray]:
        """(ids, labels): pass as `previous` to the next `discover`."""
        return list(self.labels), np.fromiter(self.labels.values(), dtype=np.int64)


def discover(
    success_paths: Sequence[np.ndarray],
    success_ids: Sequence[Hashable],
    failed_paths: Sequence[np.ndarray],
    failed_ids: Sequence[Hashable],
    previous: tuple[Sequence[Hashable], Sequence[int]] | None = None,
    config: ModeDiscoveryConfig | None = None,
    *,
    rng: np.random.Generator,
) -> DiscoveredModes:
    """Cluster the successes, assign the failures, and match the modes to `previous`.

    `previous` is the last discovery's (ids, labels) (`DiscoveredModes.ids_and_labels()`), or
    None the first time. Inheritance is decided on all labelled trajectories, successes and
    failures, since a mode's critic learned from both. With fewer than `config.min_successes`
    successes there is nothing to cluster: one mode (0) holds every trajectory.
    """
    config = config or ModeDiscoveryConfig()
    if len(success_paths) != len(success_ids) or len(failed_paths) != len(failed_ids):
        raise ValueError("each path needs exactly one id")
    all_ids = list(success_ids) + list(failed_ids)
    if len(set(all_ids)) != len(all_ids):
        raise ValueError("trajectory ids must be unique across successes and failures")

    if len(success_paths) < config.min_successes:
        labels = np.zeros(len(all_ids), dtype=np.int64)
    else:
        ok = cluster_successes(success_paths, config.cut_fraction, config.max_clusters)
        bad = assign_to_clusters(
            failed_paths, success_paths, ok, config.members_per_cluster, rng=rng
        )
        labels = np.concatenate([ok, bad])
    n_modes = int(labels.max()) + 1 if len(labels) else 1

    inherited: dict[int, int | None] = dict.fromkeys(range(n_modes))
    if previous is not None:
        inherited.update(inherit(previous[0], previous[1], all_ids, labels))
    return DiscoveredModes(
        labels={tid: int(lab) for tid, lab in zip(all_ids, labels, strict=True)},
        n_modes=n_modes,
        inherited=inherited,
    )
