"""How many agents a scenario has, and whether `scenario.n_agents` changes it, read from its
catalog entry alone: `run list` and the scaling study need this without importing (or even
having installed) each backend's simulator. Each backend's rule mirrors how that backend
builds its agents; tests/test_agent_count.py checks every rule against built environments."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AgentCount:
    count: int | None  # None: decided by the environment when it is built
    sweepable: bool  # whether `scenario.n_agents` changes it

    def describe(self) -> str:
        if self.count is None:
            count = "agents set by the env"
        else:
            count = f"{self.count} agent" + ("" if self.count == 1 else "s")
        change = "scenario.n_agents changes it" if self.sweepable else "fixed"
        return f"{count} ({change})"


def _own_count(scenario: Mapping[str, Any]) -> AgentCount:
    """VMAS and multigoal build exactly `n_agents` agents."""
    return AgentCount(int(scenario["n_agents"]), True)


def _pettingzoo(scenario: Mapping[str, Any]) -> AgentCount:
    """`n_agents` is passed to the env factory as its `n_agents_kwarg` keyword, if it has one;
    0 leaves the count to the env."""
    n = int(scenario.get("n_agents", 0))
    return AgentCount(n or None, bool(scenario.get("n_agents_kwarg")))


def _conf_agents(conf: str) -> int:
    """Agents of a MaMuJoCo / MABrax factorisation: '2x4' is 2 agents, '9|8' is 2."""
    if "|" in conf:
        return conf.count("|") + 1
    return int(conf.lower().split("x")[0])


def _mamujoco(scenario: Mapping[str, Any]) -> AgentCount:
    """ManySegment* robots are built from `n_agents` x `segments_per_agent`; other robots take
    their agents from the fixed `agent_conf`."""
    if str(scenario["scenario"]).startswith("ManySegment"):
        n = int(scenario.get("n_agents", 0)) or _conf_agents(str(scenario["agent_conf"]))
        return AgentCount(n, True)
    return AgentCount(_conf_agents(str(scenario["agent_conf"])), False)


def _smax(scenario: Mapping[str, Any]) -> AgentCount:
    """SMAX maps name their allies: '3m' (3), '2s3z' (5), '5m_vs_6m' (5), 'smacv2_5_units' (5)."""
    name = str(scenario["map"])
    units = re.fullmatch(r"smacv2_(\d+)_units", name)
    if units:
        return AgentCount(int(units.group(1)), False)
    allies = name.split("_vs_")[0]
    return AgentCount(sum(int(n) for n in re.findall(r"\d+", allies)), False)


def _mabrax(scenario: Mapping[str, Any]) -> AgentCount:
    """MABrax tasks end in their factorisation: 'ant_4x2' (4), 'humanoid_9|8' (2)."""
    return AgentCount(_conf_agents(str(scenario["task"]).split("_", 1)[1]), False)


RULES: dict[str, Callable[[Mapping[str, Any]], AgentCount]] = {
    "vmas": _own_count,
    "multigoal": _own_count,
    "pettingzoo": _pettingzoo,
    "mamujoco": _mamujoco,
    "smax": _smax,
    "mabrax": _mabrax,
    "gymnasium": lambda _: AgentCount(1, False),
    "maze": lambda _: AgentCount(1, False),
    "isaaclab": lambda _: AgentCount(None, False),
}


def agent_count(scenario: Mapping[str, Any]) -> AgentCount:
    """The agent count of a scenario's catalog entry (or composed `cfg.scenario`)."""
    return RULES[str(scenario["backend"])](scenario)
