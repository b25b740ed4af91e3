"""The YAML catalog: one file per named scenario, agent and runner.

In a source checkout the catalog is the top-level `scenarios/`, `agents/`, `runners/`
folders; an installed package carries the same files under `marl_diff/catalog/`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from marl_diff.errors import unknown

GROUPS = {"scenario": "scenarios", "agent": "agents", "runner": "runners"}


def group_dir(group: str) -> Path:
    folder = GROUPS[group]
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


def listing() -> str:
    lines = []
    for group in GROUPS:
        lines.append(f"{group}s:")
        for name in names(group):
            lines.append(f"  {name}")
    return "\n".join(lines)
