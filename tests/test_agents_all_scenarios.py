"""Every agent is an ordinary agent of the framework: it acts and updates on every scenario
family (heterogeneous MaMuJoCo, discrete PettingZoo through the continuous relaxation, SMAX and
multi-agent Brax through the JAX bridge included) with the centralised critic, and the updates
change both the actor's and the critic's parameters.

Each env is built once per module and reset before each agent uses it: the JAX backends spend
tens of seconds compiling their reset and step on a CPU, four times over otherwise."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_AGENTS, TINY_NETS
from omegaconf import OmegaConf

from marl_diff import catalog
from marl_diff.agents import make_agent
from marl_diff.buffer import Batch, ReplayBuffer
from marl_diff.envs import make_env
from marl_diff.envs.agent_count import agent_count
from marl_diff.run import compose

# test id -> (catalog scenario, overrides of its scenario config)
SCENARIOS: dict[str, tuple[str, dict]] = {
    "pendulum": ("pendulum", {}),
    "multigoal": ("multigoal", {}),
    "vmas_navigation": ("vmas_navigation", {}),
    "vmas_balance": ("vmas_balance", {}),
    "vmas_transport": ("vmas_transport", {}),
    "vmas_simple_spread": ("vmas_simple_spread", {}),
    "mpe_simple_spread": ("mpe_simple_spread", {}),
    # MPE with Discrete(5) actions: the agents emit 5 scores, the env takes the best one
    "pettingzoo_discrete": (
        "pettingzoo",
        {"env_kwargs": {"continuous_actions": False, "max_cycles": 25}},
    ),
    "mamujoco_halfcheetah_6x1": ("mamujoco_halfcheetah_6x1", {}),
    "mamujoco_humanoid_9_8": ("mamujoco_humanoid_9_8", {}),
    "smax_3m": ("smax_3m", {}),  # JAX, discrete actions with availability masks
    "mabrax_hopper_3x1": ("mabrax_hopper_3x1", {}),  # JAX, the cheapest MABrax task
}
B = 2


@pytest.fixture(scope="module")
def envs():
    """envs(test id) -> that scenario's env with B copies, built on first use in this module."""
    cache = {}

    def get(scenario_id: str):
        if scenario_id not in cache:
            name, overrides = SCENARIOS[scenario_id]
            config = {**OmegaConf.to_container(compose([f"scenario={name}"]).scenario), **overrides}
            cache[scenario_id] = make_env(config, B, "cpu", seed=0)
        return cache[scenario_id]

    yield get
    for env in cache.values():
        env.close()


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    after = list(module.parameters())
    assert len(after) == len(before) and after
    return any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize("agent_name", sorted(TINY_AGENTS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_agent_acts_and_updates_on_every_scenario_family(envs, agent_name, scenario):
    env = envs(scenario)
    cfg = compose([f"scenario={SCENARIOS[scenario][0]}", f"agent={agent_name}"])
    agent = make_agent(
        {**OmegaConf.to_container(cfg.agent), **TINY_NETS, **TINY_AGENTS[agent_name]},
        env.spec,
        "cpu",
    )
    buffer = ReplayBuffer(64, env.spec, torch.device("cpu"), agent.buffer_fields())
    obs, state = env.reset(seed=0)
    mask = env.spec.act_mask()
    for explore in (True, True, True, False):
        action = agent.act(obs, explore=explore, state=state if explore else None)
        assert action.shape == (B, env.spec.n_agents, env.spec.act_dim)
        assert (action.abs() <= 1).all() and (action[:, ~mask] == 0).all()
        result = env.step(action)
        slots = buffer.add(
            Batch(
                obs,
                state,
                action,
                result.reward,
                result.next_obs,
                result.next_state,
                result.terminated.float(),
            )
        )
        agent.observe(buffer, slots, result)
        obs, state = result.obs, result.state
    actor, critic = snapshot(agent.policy), snapshot(agent.critic)
    # two updates: the actor updates on the first of every `policy_delay` (2 for DACER) critic
    # updates, and the second covers the delayed branch
    for _ in range(2):
        metrics = agent.update(agent.sample_batch(buffer, 8))
        assert all(torch.isfinite(v) for v in metrics.values()), metrics
    assert {"loss/critic", "q/mean"} <= set(metrics)
    assert changed(critic, agent.critic), "the critic's parameters did not change"
    assert changed(actor, agent.policy), "the actor's parameters did not change"


@pytest.mark.parametrize("scenario_id", sorted(SCENARIOS))
def test_the_agent_count_read_from_the_catalog_is_what_the_env_builds(envs, scenario_id):
    """`run list` and the scaling study read agent counts from the YAML alone."""
    name, overrides = SCENARIOS[scenario_id]
    count = agent_count({**catalog.load("scenario", name), **overrides})
    built = envs(scenario_id).spec.n_agents
    assert count.count == built or (count.count is None and name == "pettingzoo"), (count, built)
