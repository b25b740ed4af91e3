"""The YAML catalog: one file per named scenario, agent and runner (the config groups of
`marl_diff.run`), and per distillation study (`python -m marl_diff.distill study=NAME`).

In a source checkout the catalog is the top-level `scenarios/`, `agents/`, `runners/`,
`distillations/` folders; an installed package carries the same files under
`marl_diff/catalog/`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from marl_diff.errors import unknown

GROUPS = {"scenario": "scenarios", "agent": "agents", "runner": "runners"}
FOLDERS = {**GROUPS, "distillation": "distillations"}


def group_dir(group: str) -> Path:
    folder = FOLDERS[group]
    package = Path(__file__).resolve().parent
    installed = package / "catalog" / folder
    return installed if installed.is_dir() else package.parent / folder


@cache
def names(group: str) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in group_dir(group).glob("*.yaml")))


def load(group: str, name: str) -> DictConfig:
    if name not in names(group):
        raise unknown(group, name, names(group))
    return OmegaConf.load(group_dir(group) / f"{name}.yaml")  # type: ignore[return-value]


def summary(group: str, name: str) -> str:
    """An entry's one-line description: the first line of its YAML's leading comment."""
    first = (group_dir(group) / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    return first.removeprefix("#").strip() if first.startswith("#") else ""


def listing() -> str:
    """`run list`: each scenario with its backend and agent count (and whether
    `scenario.n_agents` changes it, which is what a scaling study sweeps); each agent, runner
    and distillation study with its one-line description."""
    from marl_diff.envs.agent_count import agent_count

    lines = ["scenarios:"]
    width = max(len(n) for group in FOLDERS for n in names(group))
    for name in names("scenario"):
        entry = load("scenario", name)
        backend = str(entry["backend"])
        lines.append(f"  {name:<{width}}  {backend:<10}  {agent_count(entry).describe()}")
    for group in ("agent", "runner", "distillation"):
        lines.append(f"{group}s:")
        lines += [f"  {name:<{width}}  {summary(group, name)}" for name in names(group)]
    return "\n".join(lines)
