"""Typed configs: every scenario backend, agent and runner declares a dataclass, and its YAML is
validated against it, so a wrong key or type fails with a clear message before anything runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from marl_diff.errors import ConfigError, choices

T = TypeVar("T")


def to_dataclass(node: Mapping[str, Any] | DictConfig, cls: type[T], prefix: str) -> T:
    """Validate `node` against dataclass `cls`; raise ConfigError naming the bad key/value.

    `prefix` is the key path shown to the user (e.g. "agent").
    """
    schema = OmegaConf.structured(cls)
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    container = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))
    for key in container.keys():
        if key not in valid:
            raise ConfigError(
                f"unknown key '{prefix}.{key}'. Valid keys of {prefix}: {choices(valid)}."
            )
    try:
        merged = OmegaConf.merge(schema, container)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ValidationError as err:
        key = err.full_key or "?"
        raise ConfigError(f"bad value for '{prefix}.{key}': {_first_line(err)}") from None
    except ConfigKeyError as err:
        raise ConfigError(f"bad key under '{prefix}': {_first_line(err)}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid {prefix} config: {_first_line(err)}") from None


def defaults(cls: type) -> dict[str, Any]:
    """The default of every field of dataclass `cls` that has one: the value `to_dataclass`
    gives a config that lacks the key."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def key_values(args: list[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """A command's `key=value` arguments over its `settings` (name -> default); an argument
    that is not one of them is a ConfigError listing the valid ones."""
    values = dict(settings)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in settings:
            raise ConfigError(
                f"unknown argument '{arg}'. Valid: {choices(k + '=' for k in settings)}"
            )
        values[key] = value
    return values
