"""The YAML catalog: one file per named scenario, agent and runner (the config groups of
`marl_diff.run`), and per distillation study (`python -m marl_diff.distill study=NAME`).

In a source checkout the catalog is the top-level `scenarios/`, `agents/`, `runners/`,
`distillations/` folders; an installed package carries the same files under
`marl_diff/catalog/`.

An entry may name another of its group in `extends: NAME` and set only the keys it changes
(a preset, e.g. `agents/ddpl_fast.yaml`): it loads as that entry with those keys replaced, and
the scenario's `agent_defaults` for the entry it extends apply to it too (`lineage`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from marl_diff.errors import ConfigError, choices, unknown

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


def _read(group: str, name: str) -> DictConfig:
    return OmegaConf.load(group_dir(group) / f"{name}.yaml")  # type: ignore[return-value]


def load(group: str, name: str) -> DictConfig:
    """The entry's settings, with what it `extends` filled in."""
    if name not in names(group):
        raise unknown(group, name, names(group))
    merged, base_name = None, None
    for entry_name in reversed(lineage(group, name)):  # the root first
        entry = _read(group, entry_name)
        entry.pop("extends", None)
        if merged is not None:
            strays = [str(key) for key in entry.keys() if key not in merged]
            if strays:
                raise ConfigError(
                    f"{group} '{entry_name}' extends '{base_name}' but sets keys it does not "
                    f"have: {', '.join(strays)}. Valid keys: "
                    f"{choices(str(k) for k in merged.keys())}."
                )
            entry = OmegaConf.merge(merged, entry)  # type: ignore[assignment]
        merged, base_name = entry, entry_name
    return merged  # type: ignore[return-value]


def lineage(group: str, name: str) -> tuple[str, ...]:
    """`name`, then the entry it extends, and so on; a name not in the catalog (a run's
    `agent.name` set by hand) is its own lineage."""
    chain = [name]
    while chain[-1] in names(group):
        base = _read(group, chain[-1]).get("extends")
        if base is None:
            break
        if str(base) in chain:
            raise ConfigError(
                f"{group} entries extend one another in a cycle: {' -> '.join([*chain, str(base)])}"
            )
        if str(base) not in names(group):
            raise ConfigError(
                f"{group} '{chain[-1]}' extends '{base}', which is not in the catalog. "
                f"Valid choices: {choices(names(group))}."
            )
        chain.append(str(base))
    return tuple(chain)


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
