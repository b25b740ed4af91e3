"""n-step returns (`agent.n_step`): the episode links the agent keeps in the replay buffer, the
returns gathered along them, the TD target's discount, the refusals and a run end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARGS, make_tiny_agent

from marl_diff.buffer import SUCCESSOR, Batch, ReplayBuffer, gather_n_step
from marl_diff.envs.base import StepResult
from marl_diff.errors import ConfigError

GAMMA = 0.5
ENVS = 2


def play(agent, buffer: ReplayBuffer, steps: int, ends: dict, reset_before: tuple = ()) -> list:
    """Feed `steps` batched env steps of ENVS envs through buffer.add and agent.observe, as
    the online runner does. Env e's step t has reward 10 t + e, obs t + e / 10 and next obs
    t + 1 + e / 10; `ends[(t, e)]` is "terminated" or "truncated". The envs are reset
    (`agent.reset_episodes`) before step 0 and before each step in `reset_before`. Returns
    per step (its slots, reward [E], next obs value [E], terminated [E], ended [E])."""
    spec = agent.spec
    n, d, a, s = spec.n_agents, spec.obs_dim, spec.act_dim, spec.state_dim
    history = []
    for t in range(steps):
        if t == 0 or t in reset_before:
            agent.reset_episodes()
        env = torch.arange(ENVS, dtype=torch.float32)
        reward = 10.0 * t + env
        obs, next_obs = t + env / 10, t + 1 + env / 10
        terminated = torch.tensor([ends.get((t, e)) == "terminated" for e in range(ENVS)])
        truncated = torch.tensor([ends.get((t, e)) == "truncated" for e in range(ENVS)])
        slots = buffer.add(
            Batch(
                obs=obs[:, None, None].expand(ENVS, n, d),
                state=obs[:, None].expand(ENVS, s),
                action=torch.zeros(ENVS, n, a),
                reward=reward[:, None].expand(ENVS, n),
                next_obs=next_obs[:, None, None].expand(ENVS, n, d),
                next_state=next_obs[:, None].expand(ENVS, s),
                terminated=terminated.float(),
            )
        )
        result = StepResult(
            obs=next_obs[:, None, None].expand(ENVS, n, d),
            state=next_obs[:, None].expand(ENVS, s),
            reward=reward[:, None].expand(ENVS, n),
            terminated=terminated,
            truncated=truncated,
            next_obs=next_obs[:, None, None].expand(ENVS, n, d),
            next_state=next_obs[:, None].expand(ENVS, s),
            info={},
        )
        agent.observe(buffer, slots, result)
        history.append((slots, reward, next_obs, terminated, terminated | truncated))
    return history


def expected(history: list, t: int, e: int, steps: int, reset_before: tuple = ()) -> tuple:
    """(n-step reward, discount, next obs value, terminated) of env e's step t, by hand."""
    total, k = 0.0, 0
    while True:
        _, reward, next_obs, terminated, ended = history[t + k]
        total += GAMMA**k * float(reward[e])
        k += 1
        last_step = t + k >= len(history) or (t + k) in reset_before
        if k == steps or bool(ended[e]) or last_step:
            return total, GAMMA**k, float(next_obs[e]), float(terminated[e])


def check_returns(agent, buffer, history, steps, reset_before=(), newest=None):
    """gather_n_step on every stored step (the newest `newest` steps when the ring dropped
    older ones) against the hand-made returns."""
    first = 0 if newest is None else len(history) - newest
    for t in range(first, len(history)):
        slots = history[t][0]
        batch = gather_n_step(buffer, slots, steps, GAMMA)
        for e in range(ENVS):
            reward, discount, next_obs, terminated = expected(history, t, e, steps, reset_before)
            assert batch.reward[e].tolist() == pytest.approx([reward] * agent.spec.n_agents)
            assert float(batch.discount[e]) == pytest.approx(discount)
            assert torch.all(batch.next_obs[e] == next_obs) and torch.all(
                batch.next_state[e] == next_obs
            )
            assert float(batch.terminated[e]) == terminated
            assert torch.all(batch.obs[e] == t + e / 10)  # the first step's own fields


def test_n_step_returns_stop_at_episode_ends_and_at_the_newest_step():
    agent = make_tiny_agent("gaussian", n_step=3, gamma=GAMMA)
    buffer = ReplayBuffer(40, agent.spec, torch.device("cpu"), agent.buffer_fields())
    ends = {(2, 0): "truncated", (3, 1): "terminated", (6, 0): "terminated"}
    history = play(agent, buffer, 8, ends)
    check_returns(agent, buffer, history, steps=3)
    # spot checks of the hand-made reference itself
    assert expected(history, 0, 0, 3) == pytest.approx((0 + 0.5 * 10 + 0.25 * 20, 0.125, 3, 0))
    assert expected(history, 2, 0, 3) == pytest.approx((20, 0.5, 3, 0))  # truncated: bootstraps
    assert expected(history, 2, 1, 3) == pytest.approx((21 + 0.5 * 31, 0.25, 4.1, 1))  # terminal
    assert expected(history, 7, 1, 3) == pytest.approx((71, 0.5, 8.1, 0))  # the newest step


def test_n_step_returns_do_not_cross_a_reset_of_the_envs():
    """The runner resets the training envs after an evaluation that shares them: the step
    before that reset must not link to the step after it."""
    agent = make_tiny_agent("gaussian", n_step=4, gamma=GAMMA)
    buffer = ReplayBuffer(40, agent.spec, torch.device("cpu"), agent.buffer_fields())
    history = play(agent, buffer, 7, {}, reset_before=(3,))
    check_returns(agent, buffer, history, steps=4, reset_before=(3,))
    assert float(gather_n_step(buffer, history[2][0], 4, GAMMA).discount[0]) == GAMMA


def test_n_step_returns_follow_the_ring_and_skip_overwritten_steps():
    """A capacity that is no multiple of the env count: links survive the wrap, and a
    return never reaches a slot the ring has since overwritten."""
    agent = make_tiny_agent("gaussian", n_step=3, gamma=GAMMA)
    buffer = ReplayBuffer(7, agent.spec, torch.device("cpu"), agent.buffer_fields())
    history = play(agent, buffer, 9, {(5, 1): "terminated"})
    check_returns(agent, buffer, history, steps=3, newest=3)  # 7 slots hold 3 whole steps
    assert set(buffer.extras[SUCCESSOR].tolist()) <= {-1, 0, ENVS}


def test_the_links_survive_a_buffer_state_dict_round_trip():
    agent = make_tiny_agent("gaussian", n_step=3, gamma=GAMMA)
    buffer = ReplayBuffer(9, agent.spec, torch.device("cpu"), agent.buffer_fields())
    play(agent, buffer, 6, {(4, 0): "truncated"})
    for capacity in (9, 20):  # the same layout, and a compacted one
        restored = ReplayBuffer(capacity, agent.spec, torch.device("cpu"), agent.buffer_fields())
        restored.load_state_dict(buffer.state_dict())
        order = torch.arange(restored.size)
        if capacity == 9:
            order = (order + restored.position) % capacity
        original_order = (torch.arange(buffer.size) + buffer.position) % buffer.capacity
        ours = gather_n_step(restored, order, 3, GAMMA)
        theirs = gather_n_step(buffer, original_order, 3, GAMMA)
        for name in ("reward", "next_obs", "terminated", "discount"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), (capacity, name)


def test_the_critic_target_discounts_the_bootstrap_by_the_batch():
    """A k-step batch's `discount` d replaces gamma: an agent with gamma = d and one-step
    batches has the same critic loss, for the team and the per-agent critics alike."""
    for rewards in ("team", "per_agent"):
        one = make_tiny_agent("gaussian", gamma=0.25, critic_rewards=rewards)
        many = make_tiny_agent("gaussian", gamma=GAMMA, n_step=2, critic_rewards=rewards)
        many.load_state_dict(one.state_dict(), strict=False)
        g = torch.Generator().manual_seed(0)
        batch = Batch(
            obs=torch.randn(8, 2, 3, generator=g),
            state=torch.randn(8, 4, generator=g),
            action=torch.rand(8, 2, 1, generator=g) * 2 - 1,
            reward=torch.randn(8, 2, generator=g),
            next_obs=torch.randn(8, 2, 3, generator=g),
            next_state=torch.randn(8, 4, generator=g),
            terminated=(torch.arange(8) % 3 == 0).float(),
        )
        torch.manual_seed(1)
        loss_one, _ = one.critic_loss(batch)
        torch.manual_seed(1)
        loss_many, _ = many.critic_loss(batch._replace(discount=torch.full((8,), 0.25)))
        assert torch.equal(loss_one, loss_many), rewards
        torch.manual_seed(1)
        loss_half, _ = many.critic_loss(batch)  # no discount: the agent's own gamma
        assert not torch.equal(loss_half, loss_one)


@pytest.mark.parametrize("algorithm", ["ddiffpg", "dtql", "qensemble"])
def test_agents_without_n_step_returns_refuse_it(algorithm):
    with pytest.raises(ConfigError, match=rf"agent.n_step must be 1 for agent '{algorithm}'"):
        make_tiny_agent(algorithm, n_step=2)


def test_n_step_must_be_positive():
    with pytest.raises(ConfigError, match="agent.n_step must be >= 1, got 0"):
        make_tiny_agent("gaussian", n_step=0)


def test_one_step_agents_keep_no_links():
    agent = make_tiny_agent("gaussian")
    assert agent.buffer_fields() == {} and "episodes_continue" not in agent.state_dict()


@pytest.mark.parametrize("algorithm", ["gaussian", "ddpl", "qvpo", "dacer"])
def test_n_step_agents_update_from_n_step_batches(algorithm):
    agent = make_tiny_agent(algorithm, n_step=3, gamma=GAMMA)
    buffer = ReplayBuffer(40, agent.spec, torch.device("cpu"), agent.buffer_fields())
    play(agent, buffer, 8, {(3, 0): "terminated"})
    batch = agent.sample_batch(buffer, 16, torch.Generator().manual_seed(0))
    assert batch.discount is not None and set(batch.discount.tolist()) <= {0.5, 0.25, 0.125}
    metrics = agent.update(batch)
    assert torch.isfinite(metrics["loss/critic"])


def test_a_run_links_each_envs_steps(tmp_path, run_main):
    """An online run with n_step: every link joins a transition to the same env's next one
    (its next obs is that one's obs) and every ended transition has none."""
    run_dir = tmp_path / "run"
    result = run_main(
        [
            *TINY_ARGS,
            "agent.n_step=3",
            "runner.num_envs=3",
            "runner.save_buffer=true",
            "scenario.max_steps=40",  # truncations inside the run
            f"run_dir={run_dir}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    state = torch.load(run_dir / "buffer.pt", weights_only=True)
    successor = state[f"extras/{SUCCESSOR}"]
    linked = (successor > 0).nonzero().flatten()
    assert len(linked) > 200 and torch.all(successor[linked] == 3)
    assert torch.equal(state["next_obs"][linked], state["obs"][linked + 3])
    ended = (successor == -1).nonzero().flatten()
    assert len(ended) >= 3  # the 40-step episodes of the 3 envs ended in the run
    assert not torch.equal(state["next_obs"][ended], state["obs"][ended + 3])
