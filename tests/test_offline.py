"""The offline seam: the composition root's regime check, datasets (Minari and OG-MARL `.npz`
round trips, action mapping, dimension checks), observation normalisation, `collect`, the
offline runner and the critic component's reductions and targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_spec, train_run

from marl_diff.agents.networks import CentralCritic
from marl_diff.buffer import Batch
from marl_diff.datasets import (
    EpisodeRecord,
    ObservationNormalizer,
    load_transitions,
    write_minari,
)
from marl_diff.errors import ConfigError, MarlDiffError

pytest.importorskip("minari")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty local Minari store for the test."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def random_episode(rng, spec, steps: int, terminated: bool) -> EpisodeRecord:
    n, d, a = spec.n_agents, spec.obs_dim, spec.act_dim
    mask_o = spec.obs_mask().numpy()
    low, high = spec.act_low.numpy(), spec.act_high.numpy()
    unit = rng.uniform(-1, 1, (steps, n, a)) * spec.act_mask().numpy()
    return EpisodeRecord(
        obs=(rng.normal(size=(steps + 1, n, d)) * mask_o).astype(np.float32),
        state=rng.normal(size=(steps + 1, spec.state_dim)).astype(np.float32),
        actions=(low + (unit + 1) * 0.5 * (high - low)).astype(np.float32),
        rewards=rng.normal(size=(steps, n)).astype(np.float32),
        terminated=terminated,
    )


def hetero_spec():
    """Two agents of different sizes with env action bounds other than [-1, 1]."""
    from marl_diff.envs.base import EnvSpec

    return EnvSpec(
        ("walker", "flyer"),
        (3, 2),
        (1, 2),
        5,
        10,
        torch.tensor([[-2.0, -1.0], [0.0, -4.0]]),
        torch.tensor([[2.0, 1.0], [1.0, 4.0]]),
    )


def test_minari_round_trip_multi_agent_maps_actions_and_keeps_every_transition(store):
    spec = hetero_spec()
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, spec, 4, True), random_episode(rng, spec, 3, False)]
    write_minari(
        "test/hetero-v0",
        episodes,
        spec,
        gym_id=None,
        algorithm="t",
        description="t",
        ref_scores=None,
    )
    data = load_transitions("test/hetero-v0", spec)
    assert len(data) == 7 and data.episodes == 2
    b = data.batch
    ep = episodes[0]
    torch.testing.assert_close(b.obs[:4], torch.as_tensor(ep.obs[:-1]))
    torch.testing.assert_close(b.next_obs[:4], torch.as_tensor(ep.obs[1:]))
    torch.testing.assert_close(b.state[:4], torch.as_tensor(ep.state[:-1]))
    torch.testing.assert_close(b.reward[:4], torch.as_tensor(ep.rewards))
    # env units -> [-1, 1] by each agent's own bounds; the padded entry (walker's 2nd) is 0
    low, high = spec.act_low, spec.act_high
    unit = (2 * (torch.as_tensor(ep.actions) - low) / (high - low) - 1) * spec.act_mask()
    torch.testing.assert_close(b.action[:4], unit)
    assert torch.all(b.action[:, 0, 1] == 0)
    assert b.terminated.tolist() == [0, 0, 0, 1, 0, 0, 0]  # the truncation is no terminal
    returns = [float(e.rewards.mean(-1).sum()) for e in episodes]
    np.testing.assert_allclose(data.episode_returns, returns, rtol=1e-5)


def test_minari_single_agent_dataset_has_box_spaces_and_reference_scores(store):
    import minari

    spec = make_spec(1, (3,), (1,), 3)
    rng = np.random.default_rng(1)
    episodes = [random_episode(rng, spec, 5, False)]
    write_minari(
        "test/single-v0",
        episodes,
        spec,
        gym_id="Pendulum-v1",
        algorithm="t",
        description="t",
        ref_scores=(-100.0, 0.0),
    )
    dataset = minari.load_dataset("test/single-v0")
    assert dataset.observation_space.shape == (3,) and dataset.spec.env_spec.id == "Pendulum-v1"
    assert minari.get_normalized_score(dataset, np.array([-50.0]))[0] == pytest.approx(0.5)
    data = load_transitions(str(store / "test" / "single-v0"), spec)  # the folder works too
    assert len(data) == 5 and data.ref_scores == (-100.0, 0.0)


def test_dataset_that_does_not_fit_the_scenario_is_a_clear_error(store):
    spec = hetero_spec()
    episodes = [random_episode(np.random.default_rng(2), spec, 3, True)]
    write_minari(
        "test/fit-v0",
        episodes,
        spec,
        gym_id=None,
        algorithm="t",
        description="t",
        ref_scores=None,
    )
    other = make_spec(2, (3, 3), (1, 2), 5)
    with pytest.raises(MarlDiffError, match="agents are .* the scenario's"):
        load_transitions("test/fit-v0", other)
    with pytest.raises(ConfigError, match="neither an existing folder"):
        load_transitions("no such thing", spec)
    with pytest.raises(ConfigError, match="runner.dataset is required"):
        load_transitions("", spec)
    with pytest.raises(MarlDiffError, match="already exists"):
        write_minari(
            "test/fit-v0",
            episodes,
            spec,
            gym_id=None,
            algorithm="t",
            description="t",
            ref_scores=None,
        )


def test_og_marl_npz_drops_steps_without_a_stored_successor(tmp_path):
    spec = make_spec(2, (3, 3), (1, 1), 4)
    b, t = 2, 4
    obs = np.arange(b * t * 2 * 3, dtype=np.float32).reshape(b, t, 2, 3)
    state = np.arange(b * t * 4, dtype=np.float32).reshape(b, t, 4)
    terminals = np.zeros((b, t, 2), bool)
    truncations = np.zeros((b, t, 2), bool)
    terminals[0, 1] = True  # row 0: episode ends at step 1 (terminal), next starts at 2
    truncations[1, 2] = True  # row 1: truncated at step 2: no stored successor
    path = tmp_path / "vault.npz"
    np.savez(
        path,
        observations=obs,
        actions=np.full((b, t, 2, 1), 0.5, np.float32),
        rewards=np.ones((b, t, 2), np.float32),
        terminals=terminals,
        truncations=truncations,
        **{"infos.state": state},
    )
    data = load_transitions(str(path), spec)
    # row 0 keeps steps 0, 1 (terminal), 2; drops 3 (last, not terminal). Row 1 keeps 0, 1
    # and drops 2 (truncated) and 3 (last).
    assert len(data) == 5
    torch.testing.assert_close(
        data.batch.obs, torch.as_tensor(obs[[0, 0, 0, 1, 1], [0, 1, 2, 0, 1]])
    )
    torch.testing.assert_close(data.batch.next_obs[0], torch.as_tensor(obs[0, 1]))
    assert data.batch.terminated.tolist() == [0, 1, 0, 0, 0]
    assert torch.all(data.batch.action == 0.5)  # bounds [-1, 1]: unchanged
    assert data.episodes == 2  # row 0's terminal and row 1's truncation


def test_normalizer_standardises_and_keeps_padding_zero():
    spec = make_spec(2, (3, 2), (1, 1), 4)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(500, 2, 3, generator=gen) * 3 + 1
    obs[:, 1, 2] = 0  # agent 1's padded entry
    state = torch.randn(500, 4, generator=gen) * 2 - 5
    zeros = torch.zeros(500)
    batch = Batch(
        obs, state, torch.zeros(500, 2, 1), zeros[:, None].expand(-1, 2), obs, state, zeros
    )
    norm = ObservationNormalizer.fit(batch, spec.obs_mask())
    out = norm.batch(batch)
    real = spec.obs_mask()
    torch.testing.assert_close(out.obs.mean(0)[real], torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.obs.std(0)[real], torch.ones(5), atol=1e-4, rtol=0)
    assert torch.all(out.obs[:, 1, 2] == 0)
    torch.testing.assert_close(out.state.std(0), torch.ones(4), atol=1e-4, rtol=0)
    back = ObservationNormalizer.from_state_dict(norm.state_dict(), torch.device("cpu"))
    torch.testing.assert_close(back.obs(obs), out.obs)


def test_regime_mismatch_names_the_right_runner(tmp_path):
    from marl_diff.experiment import make_runner
    from marl_diff.run import compose

    cfg = compose(["scenario=pendulum", "agent=diffusion_bc", "device=cpu"])
    with pytest.raises(ConfigError, match="trains offline .* runner=offline"):
        make_runner(cfg, tmp_path, "cpu")
    cfg = compose(["scenario=pendulum", "agent=gaussian", "runner=offline", "device=cpu"])
    with pytest.raises(ConfigError, match="trains online .* runner=off_policy"):
        make_runner(cfg, tmp_path, "cpu")


def test_collect_writes_what_the_policy_played_and_offline_training_reads_it(
    tmp_path, store, tiny_args
):
    """collect -> Minari -> offline run: the stored transitions are the episodes played, and an
    offline run with normalised observations saves its statistics for evaluate."""
    from marl_diff.collect import collect, parse
    from marl_diff.evaluate import evaluate_run

    run = tmp_path / "expert"
    train_run(run, tiny_args)
    out, records = collect(
        parse(
            [
                f"run_dir={run}",
                "episodes=3",
                "num_envs=2",
                "random_fraction=0.5",
                "out=test/pend-v0",
                "device=cpu",
            ]
        )
    )
    assert len(records) == 3 and all(r.actions.shape == (200, 1, 1) for r in records)
    assert all(np.abs(r.actions).max() <= 2.0 for r in records)  # Pendulum's torque bound
    spec = make_spec(1, (3,), (1,), 3)
    data = load_transitions(out, spec)
    assert len(data) == 600
    torch.testing.assert_close(data.batch.action[:200], torch.as_tensor(records[0].actions / 2.0))
    torch.testing.assert_close(data.batch.obs[:200], torch.as_tensor(records[0].obs[:-1]))

    bc = tmp_path / "bc"
    report, rows = train_run(
        bc,
        [
            "scenario=pendulum",
            "agent=diffusion_bc",
            "runner=offline",
            f"runner.dataset={out}",
            "runner.total_updates=40",
            "runner.batch_size=32",
            "runner.log_every=20",
            "runner.eval_every=0",
            "runner.eval_episodes=2",
            "runner.eval_num_envs=2",
            "runner.normalize_obs=true",
            "agent.actor_hidden=[16,16]",
            "agent.diffusion_steps=3",
        ],
    )
    assert [r["updates"] for r in rows if "loss/bc" in r] == [20, 40]
    again, _ = evaluate_run(bc, device="cpu")
    assert again["mean_return"] == pytest.approx(report["mean_return"])
    assert again["updates"] == 40


# ---------------------------------------------------------------------------- the critic
def test_critic_reductions_by_hand():
    q = torch.tensor([[1.0, -2.0], [3.0, 0.0], [2.0, 5.0]])  # [K=3, B=2]
    kwargs = {"state_dim": 2, "n_agents": 1, "act_dim": 1, "hidden": [4], "n_q": 3}
    assert CentralCritic(**kwargs, reduction="min").reduce(q).tolist() == [1.0, -2.0]
    assert CentralCritic(**kwargs, reduction="mean").reduce(q).tolist() == [2.0, 1.0]
    lcb = CentralCritic(**kwargs, reduction="lcb", lcb_beta=2.0).reduce(q)
    torch.testing.assert_close(lcb, torch.tensor([2.0 - 2.0 * 1.0, 1.0 - 2.0 * 13.0**0.5]))
    with pytest.raises(ValueError, match="min, mean, lcb"):
        CentralCritic(**kwargs, reduction="max")


@pytest.mark.parametrize("targets", ["reduced", "own"])
def test_critic_targets_reduced_or_each_members_own(targets):
    """With `own` targets member k regresses to r + gamma Q'_k; with `reduced` every member to
    r + gamma reduce(Q'). The critic loss is checked against the targets computed by hand."""
    from marl_diff.agents import make_agent
    from marl_diff.run import compose

    cfg = compose(
        [
            "scenario=pendulum",
            "agent=gaussian",
            "agent.critic_members=4",
            "agent.critic_reduction=lcb",
            f"agent.critic_targets={targets}",
        ]
    )
    from omegaconf import OmegaConf

    spec = make_spec(1, (3,), (1,), 3)
    agent = make_agent(OmegaConf.to_container(cfg.agent, resolve=True), spec, "cpu")
    gen = torch.Generator().manual_seed(0)
    b = 8
    batch = Batch(
        torch.randn(b, 1, 3, generator=gen),
        torch.randn(b, 3, generator=gen),
        torch.rand(b, 1, 1, generator=gen) * 2 - 1,
        torch.randn(b, 1, generator=gen),
        torch.randn(b, 1, 3, generator=gen),
        torch.randn(b, 3, generator=gen),
        torch.zeros(b),
    )
    next_action, bonus = torch.zeros(b, 1, 1), torch.zeros(b, 1)
    agent.target_action = lambda obs, state: (next_action, bonus)
    q_next = agent.critic_target(batch.next_state, next_action)  # [4, B]
    if targets == "reduced":
        q_next = q_next.mean(0) - 4.0 * q_next.std(0)
    target = batch.reward.mean(-1) + 0.99 * q_next
    expected = (agent.critic(batch.state, batch.action) - target).pow(2).mean(-1).sum()
    loss = agent.update_critic(batch)["loss/critic"]
    torch.testing.assert_close(loss, expected.detach())
