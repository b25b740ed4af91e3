"""DDiffPG mode discovery (marl_diff/modes.py) on synthetic 2-D paths with known structure.

The scene: start at (0, 0) below a wall, goal at (0, 2) above it; route "left" goes round the
wall's left end (x = -1), route "right" round its right end (x = +1).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from marl_diff import modes
from marl_diff.errors import BackendMissing, ConfigError

LEFT, RIGHT = -1.0, 1.0


def route(side: float, length: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """[length, 2] x-y path start -> (side, 0) -> (side, 2) -> goal, plus Gaussian noise."""
    corners = np.array([[0.0, 0.0], [side, 0.0], [side, 2.0], [0.0, 2.0]])
    s = np.linspace(0.0, 3.0, length)
    seg = np.minimum(s.astype(int), 2)
    frac = (s - seg)[:, None]
    path = corners[seg] * (1 - frac) + corners[seg + 1] * frac
    return path + rng.normal(0.0, noise, path.shape)


def routes(sides, rng, noise=0.05):
    """One noisy path per entry of `sides`, of random lengths 30..49."""
    return [route(s, int(rng.integers(30, 50)), noise, rng) for s in sides]


def failed(side, rng, n=3):
    """Failures: noisier paths that follow `side` but stop before the goal."""
    return [route(side, 40, 0.15, rng)[: int(rng.integers(15, 30))] for _ in range(n)]


def test_dtw_distances_symmetric_zero_diagonal_and_equal_to_dtaidistance():
    from dtaidistance import dtw_ndim

    rng = np.random.default_rng(0)
    paths = routes([LEFT, RIGHT, LEFT, RIGHT, LEFT], rng)
    d = modes.dtw_distances(paths)
    assert d.shape == (5, 5)
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    assert (d[~np.eye(5, dtype=bool)] > 0).all()
    for i, j in [(0, 1), (1, 3), (2, 4), (4, 0)]:
        assert d[i, j] == pytest.approx(dtw_ndim.distance(paths[i], paths[j]), rel=1e-12)
    assert modes.dtw_distances([]).shape == (0, 0)
    np.testing.assert_array_equal(modes.dtw_distances(paths[:1]), [[0.0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_routes_give_two_clusters_that_match_them(seed):
    rng = np.random.default_rng(seed)
    sides = rng.permutation([LEFT] * 6 + [RIGHT] * 6)
    paths = routes(sides, rng)  # lengths differ from path to path
    assert len({len(p) for p in paths}) > 1
    labels = modes.cluster_successes(paths)
    assert labels.dtype == np.int64
    assert set(labels) == {0, 1}
    left = labels[sides == LEFT]
    right = labels[sides == RIGHT]
    assert len(set(left)) == 1 and len(set(right)) == 1 and left[0] != right[0]
    assert labels[0] == 0  # numbered in order of first appearance
    assert labels[np.argmax(labels != labels[0])] == 1


def test_one_route_of_noisy_copies_is_one_mode():
    # The relative cut always splits the top merge; with i.i.d. noise around one route the
    # dendrogram is flat and shatters into many small clusters, which the card's "more than
    # max_clusters -> one mode" rule turns back into a single mode.
    rng = np.random.default_rng(3)
    paths = routes([RIGHT] * 16, rng)
    assert modes.cluster_successes(paths, max_clusters=100).max() + 1 > 10
    np.testing.assert_array_equal(modes.cluster_successes(paths), np.zeros(16))


def test_few_copies_of_one_route_are_still_split():
    # Documents the card's rule: the cut is relative to the top merge, so two or more distinct
    # paths always give at least two clusters, even along one route.
    rng = np.random.default_rng(4)
    assert modes.cluster_successes(routes([LEFT] * 3, rng)).max() >= 1


def test_more_than_max_clusters_is_one_mode():
    # Five destinations on a pentagon of radius 10, three noisy paths to each.
    rng = np.random.default_rng(5)
    angles = 2 * np.pi * np.arange(5) / 5
    paths = []
    for a in np.repeat(angles, 3):
        end = 10 * np.array([np.cos(a), np.sin(a)])
        line = np.linspace(0, 1, 30)[:, None] * end
        paths.append(line + rng.normal(0, 0.05, line.shape))
    labels = modes.cluster_successes(paths)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(modes.cluster_successes(paths, max_clusters=4), np.zeros(15))


def test_fewer_than_two_paths_or_identical_paths_are_one_mode():
    rng = np.random.default_rng(6)
    assert modes.cluster_successes([]).shape == (0,)
    np.testing.assert_array_equal(modes.cluster_successes(routes([LEFT], rng)), [0])
    same = routes([RIGHT], rng) * 4
    np.testing.assert_array_equal(modes.cluster_successes(same), np.zeros(4))


def test_bad_inputs_are_rejected():
    rng = np.random.default_rng(7)
    paths = routes([LEFT, RIGHT], rng)
    with pytest.raises(ValueError, match="cut_fraction"):
        modes.cluster_successes(paths, cut_fraction=0.0)
    with pytest.raises(ValueError, match=r"\[T, F\]"):
        modes.dtw_distances([np.zeros(5), np.zeros(5)])
    with pytest.raises(ValueError, match="same number of features"):
        modes.dtw_distances([np.zeros((5, 2)), np.zeros((5, 3))])
    with pytest.raises(ConfigError, match="cut_fraction"):
        modes.ModeDiscoveryConfig(cut_fraction=1.5)


def test_failed_paths_join_the_nearest_route():
    rng = np.random.default_rng(8)
    sides = np.array([LEFT, RIGHT] * 5)
    successes = routes(sides, rng)
    labels = modes.cluster_successes(successes)
    left, right = labels[0], labels[1]
    failures = failed(LEFT, rng) + failed(RIGHT, rng)
    got = modes.assign_to_clusters(failures, successes, labels, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(got, [left] * 3 + [right] * 3)
    # One member per cluster, and a cluster smaller than members_per_cluster, both work.
    one = modes.assign_to_clusters(failures, successes[:3], labels[:3], 1, rng=rng)
    np.testing.assert_array_equal(one, [left] * 3 + [right] * 3)
    empty = modes.assign_to_clusters([], successes, labels, rng=rng)
    assert empty.shape == (0,)


def test_inherit_maps_each_new_mode_to_the_old_mode_it_overlaps_most():
    old_ids = list(range(10))
    old_labels = [0] * 5 + [1] * 5
    # Reclustered: the same trajectories, labels swapped, one moved across; plus five brand-new
    # trajectories (ids 10..14) that form a mode of their own.
    new_ids = list(range(15))
    new_labels = [1] * 4 + [0] * 6 + [2] * 5
    got = modes.inherit(old_ids, old_labels, new_ids, new_labels)
    assert got == {0: 1, 1: 0, 2: None}
    # A tie (two shared with old 1, two with old 0) goes to the lowest old label.
    assert modes.inherit([1, 2, 3, 4], [1, 1, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]) == {0: 0}
    with pytest.raises(ValueError, match="unique"):
        modes.inherit([1, 1], [0, 0], [1], [0])


def test_discover_then_rediscover_inherits_by_route():
    rng = np.random.default_rng(9)
    config = modes.ModeDiscoveryConfig()
    sides = np.array([LEFT, RIGHT] * 4)
    ok, bad = routes(sides, rng), failed(LEFT, rng, 2) + failed(RIGHT, rng, 2)
    first = modes.discover(ok, range(8), bad, range(8, 12), None, config, rng=rng)
    assert first.n_modes == 2
    assert first.inherited == {0: None, 1: None}
    assert set(first.labels) == set(range(12))
    assert first.labels[8] == first.labels[0] and first.labels[10] == first.labels[1]

    # Later: the old successes minus two, plus new ones that start on the right route (so the
    # mode numbers swap): each new mode still inherits the old mode of its own route.
    more = np.array([RIGHT, LEFT, RIGHT, LEFT])
    ok2 = routes(more, rng) + ok[2:]
    ids2 = list(range(100, 104)) + list(range(2, 8))
    second = modes.discover(ok2, ids2, [], [], first.ids_and_labels(), config, rng=rng)
    assert second.n_modes == 2
    assert second.labels[100] != first.labels[1]  # renumbered in order of appearance
    assert second.inherited == {
        second.labels[100]: first.labels[1],
        second.labels[101]: first.labels[0],
    }


def test_discover_with_one_success_is_one_mode():
    rng = np.random.default_rng(10)
    ok = routes([LEFT], rng)
    bad = failed(LEFT, rng) + failed(RIGHT, rng)
    got = modes.discover(ok, ["a"], bad, list("bcdefg"), None, rng=rng)
    assert got.n_modes == 1
    assert got.labels == dict.fromkeys("abcdefg", 0)
    assert got.inherited == {0: None}
    previous = (["a", "b", "z"], [1, 0, 1])
    assert modes.discover(ok, ["a"], [], [], previous, rng=rng).inherited == {0: 1}
    nothing = modes.discover([], [], [], [], None, rng=rng)
    assert (nothing.n_modes, nothing.labels, nothing.inherited) == (1, {}, {0: None})


def test_missing_dtaidistance_raises_backend_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "dtaidistance", None)
    rng = np.random.default_rng(11)
    with pytest.raises(BackendMissing) as err:
        modes.cluster_successes(routes([LEFT, RIGHT], rng))
    assert str(err.value) == (
        "mode discovery needs dtaidistance. Install it with: pip install 'marl_diff[modes]'"
    )
