"""Every agent is an ordinary agent of the framework: it acts and updates on every scenario
family (heterogeneous MaMuJoCo included) with the centralised critic."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from marl_diff.agents import make_agent
from marl_diff.buffer import Batch, ReplayBuffer
from marl_diff.envs import make_env
from marl_diff.run import compose

SMALL = {"actor_hidden": [16, 16], "critic_hidden": [16, 16]}
TINY = {
    "gaussian": {},
    "ddpl": {
        "diffusion_steps": 3,
        "n_candidates": 3,
        "proposal": "lagged",
        "action_selection": "best_of_k",
        "best_of_k": 2,
        "others_actions": "policy",
    },
    "dacer": {
        "diffusion_steps": 3,
        "entropy_states": 2,
        "entropy_samples": 8,
        "alpha_update_every": 1,
        "gmm_iterations": 3,
    },
    "qvpo": {
        "diffusion_steps": 3,
        "n_samples": 4,
        "behavior_samples": 2,
        "eval_samples": 2,
        "target_samples": 2,
        "n_entropy_samples": 2,
    },
}
SCENARIOS = [
    "pendulum",
    "multigoal",
    "vmas_navigation",
    "vmas_balance",
    "vmas_transport",
    "vmas_simple_spread",
    "mpe_simple_spread",
    "mamujoco_halfcheetah_6x1",
    "mamujoco_humanoid_9_8",
]


@pytest.mark.parametrize("agent_name", sorted(TINY))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_agent_acts_and_updates_on_every_scenario_family(agent_name, scenario):
    cfg = compose([f"scenario={scenario}", f"agent={agent_name}"])
    env = make_env(OmegaConf.to_container(cfg.scenario), 2, "cpu", seed=0)
    agent = make_agent(
        {**OmegaConf.to_container(cfg.agent), **SMALL, **TINY[agent_name]}, env.spec, "cpu"
    )
    buffer = ReplayBuffer(64, env.spec, torch.device("cpu"))
    obs, state = env.reset(seed=0)
    mask = env.spec.act_mask()
    for explore in (True, True, True, False):
        action = agent.act(obs, explore=explore, state=state if explore else None)
        assert action.shape == (2, env.spec.n_agents, env.spec.act_dim)
        assert (action.abs() <= 1).all() and (action[:, ~mask] == 0).all()
        result = env.step(action)
        buffer.add(
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
        obs, state = result.obs, result.state
    for _ in range(2):  # the second covers delayed policy updates
        metrics = agent.update(buffer.sample(8))
        assert all(torch.isfinite(v) for v in metrics.values()), metrics
    assert {"loss/critic", "q/mean"} <= set(metrics)
    env.close()
