"""Every catalog YAML: a leading comment, `name` equal to its file stem, exactly the fields of
its class's Config dataclass (a preset: the entry it `extends` and some of those fields), and
it validates against that dataclass."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import DictConfig, OmegaConf

from marl_diff import catalog
from marl_diff.agents import agent_class
from marl_diff.envs import backend_class
from marl_diff.errors import BackendMissing
from marl_diff.runners import RUNNERS
from marl_diff.typed_config import to_dataclass

ENTRIES = [(group, name) for group in catalog.GROUPS for name in catalog.names(group)]


def config_class(group: str, node: DictConfig) -> type:
    if group == "scenario":
        # Only BackendMissing (a third-party package genuinely not installed) skips, and with
        # CI=true the conftest turns that skip into a failure: `[all]` installs every backend
        # (Isaac Lab's module imports without Isaac Sim). Any other ImportError is a bug or a
        # broken install and fails the test everywhere.
        try:
            return backend_class(str(node.backend)).Config  # type: ignore[attr-defined]
        except BackendMissing as err:
            pytest.skip(f"backend '{node.backend}' is not installed: {err}")
    if group == "agent":
        return agent_class(str(node.algorithm)).Config
    return RUNNERS[str(node.kind)][1]


def test_catalog_is_not_empty():
    for group in catalog.GROUPS:
        assert catalog.names(group), group
    assert "pendulum" in catalog.names("scenario")
    assert "gaussian" in catalog.names("agent")
    assert "off_policy" in catalog.names("runner")


@pytest.mark.parametrize("group, name", ENTRIES, ids=[f"{g}-{n}" for g, n in ENTRIES])
def test_yaml_matches_its_config_dataclass(group, name):
    path = catalog.group_dir(group) / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), f"{path} must start with a comment describing it"
    raw = OmegaConf.load(path)
    assert isinstance(raw, DictConfig)
    assert raw.name == name, f"{path}: name '{raw.name}' differs from the file stem"
    node = catalog.load(group, name)
    cls = config_class(group, node)
    fields = {f.name for f in dataclasses.fields(cls)}
    keys = {str(k) for k in node.keys()}
    assert keys == fields, (
        f"{path}: missing {sorted(fields - keys)}, not in {cls.__name__}: {sorted(keys - fields)}"
    )
    typed = to_dataclass(node, cls, group)
    assert typed.name == name
    if group == "scenario":
        assert typed.default_runner in catalog.names("runner"), typed.default_runner
        for agent_name, defaults in typed.agent_defaults.items():
            agent = catalog.load("agent", agent_name)
            unknown = set(defaults) - {
                f.name for f in dataclasses.fields(config_class("agent", agent))
            }
            assert not unknown, f"{path}: agent_defaults.{agent_name} has unknown keys {unknown}"
            to_dataclass(
                {**OmegaConf.to_container(agent), **defaults}, config_class("agent", agent), "agent"
            )


def test_catalog_load_unknown_name_lists_choices():
    from marl_diff.errors import ConfigError

    with pytest.raises(ConfigError, match="pendulum"):
        catalog.load("scenario", "nope")


def test_listing_names_every_entry():
    first_words = [line.split()[0] for line in catalog.listing().splitlines()]
    for _, name in ENTRIES:
        assert name in first_words


def test_a_preset_is_the_entry_it_extends_with_its_own_keys_replaced():
    fast, ddpl = catalog.load("agent", "ddpl_fast"), catalog.load("agent", "ddpl")
    own = OmegaConf.load(catalog.group_dir("agent") / "ddpl_fast.yaml")
    changed = {str(k) for k in fast if fast[k] != ddpl[k]}
    assert changed == {str(k) for k in own if k != "extends"}
    assert "name" in changed and fast.algorithm == "ddpl" and "extends" not in fast
    assert catalog.lineage("agent", "ddpl_fast") == ("ddpl_fast", "ddpl")
    assert catalog.lineage("agent", "ddpl") == ("ddpl",)
    assert catalog.lineage("agent", "renamed_by_hand") == ("renamed_by_hand",)


@pytest.mark.parametrize(
    "entries, needles",
    [
        ({"fast": "extends: base\nname: fast\nwidth: 3\n"}, ["fast", "width", "Valid keys: lr"]),
        ({"fast": "extends: nowhere\nname: fast\n"}, ["'nowhere'", "Valid choices"]),
        (
            {"fast": "extends: loop\nname: fast\n", "loop": "extends: fast\nname: loop\n"},
            ["cycle: fast -> loop -> fast"],
        ),
    ],
    ids=["unknown-key", "unknown-base", "cycle"],
)
def test_a_broken_preset_is_refused_with_what_is_wrong(tmp_path, monkeypatch, entries, needles):
    from marl_diff.errors import ConfigError

    (tmp_path / "base.yaml").write_text("# base\nname: base\nlr: 0.1\n")
    for name, text in entries.items():
        (tmp_path / f"{name}.yaml").write_text(f"# {name}\n{text}")
    monkeypatch.setattr(catalog, "group_dir", lambda group: tmp_path)
    catalog.names.cache_clear()
    try:
        with pytest.raises(ConfigError) as err:
            catalog.load("agent", "fast")
        for needle in needles:
            assert needle in str(err.value), str(err.value)
    finally:
        catalog.names.cache_clear()
