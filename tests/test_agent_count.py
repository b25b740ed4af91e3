"""Agent counts read from catalog entries (`run list`, the scaling study): every backend has a
rule, names parse as their simulators count them, and where `scenario.n_agents` is said to
change the count, a built env has that many agents. (Every catalog scenario that the agent
tests build is checked against its env in test_agents_all_scenarios.py.)"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from marl_diff import catalog
from marl_diff.envs import BACKENDS, make_env
from marl_diff.envs.agent_count import RULES, AgentCount, agent_count
from marl_diff.run import compose


def test_every_backend_and_catalog_scenario_has_a_rule():
    assert set(RULES) == set(BACKENDS)
    for name in catalog.names("scenario"):
        assert isinstance(agent_count(catalog.load("scenario", name)), AgentCount)


@pytest.mark.parametrize(
    "entry, count",
    [
        ({"backend": "smax", "map": "3m"}, 3),
        ({"backend": "smax", "map": "2s3z"}, 5),
        ({"backend": "smax", "map": "5m_vs_6m"}, 5),
        ({"backend": "smax", "map": "smacv2_10_units"}, 10),
        ({"backend": "mabrax", "task": "ant_4x2"}, 4),
        ({"backend": "mabrax", "task": "humanoid_9|8"}, 2),
        ({"backend": "mabrax", "task": "halfcheetah_6x1"}, 6),
        ({"backend": "mamujoco", "scenario": "Humanoid", "agent_conf": "9|8"}, 2),
        ({"backend": "mamujoco", "scenario": "Ant", "agent_conf": "2x4"}, 2),
    ],
)
def test_fixed_counts_parse_from_their_names(entry, count):
    assert agent_count(entry) == AgentCount(count, False)


def test_descriptions_say_the_count_and_whether_it_can_change():
    assert AgentCount(1, False).describe() == "1 agent (fixed)"
    assert AgentCount(11, True).describe() == "11 agents (scenario.n_agents changes it)"
    assert AgentCount(None, False).describe() == "agents set by the env (fixed)"


@pytest.mark.parametrize(
    "scenario, n",
    [
        ("multigoal", 3),
        ("vmas_navigation", 2),
        ("mpe_simple_spread", 2),
        ("mamujoco_manysegment_ant", 3),
    ],
)
def test_a_sweepable_count_is_what_the_env_builds(scenario, n):
    cfg = OmegaConf.to_container(
        compose([f"scenario={scenario}", f"scenario.n_agents={n}"]).scenario
    )
    count = agent_count(cfg)
    assert count == AgentCount(n, True)
    env = make_env(cfg, 1, "cpu", seed=0)
    try:
        assert env.spec.n_agents == n
    finally:
        env.close()
