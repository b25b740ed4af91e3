"""User-facing errors: raised anywhere, printed as one paragraph by the entry points."""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class MarlDiffError(Exception):
    """A problem the user can fix (bad config, missing backend, bad checkpoint)."""


class ConfigError(MarlDiffError):
    """An invalid name, key, value or combination in the configuration."""


class BackendMissing(MarlDiffError):
    """An optional backend package is not installed."""


class TrainingDiverged(MarlDiffError):
    """NaN/Inf appeared in a loss or in the parameters."""


def missing_package(err: ImportError) -> str | None:
    """The top-level third-party package whose absence raised `err`, or None.

    Only a ModuleNotFoundError for a package that is genuinely not installed counts: the error
    names the top-level package itself, or a submodule of a top-level package that cannot be
    found either. Anything else (a name missing from an installed package, a half-installed
    package, or any import error inside marl_diff itself) returns None, and callers must let
    the error propagate instead of reporting an optional backend as "not installed".
    """
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    top = err.name.split(".")[0]
    if top == "marl_diff":
        return None
    if err.name != top:
        try:
            if importlib.util.find_spec(top) is not None:
                return None  # installed, but a submodule is missing: a broken install
        except (ImportError, ValueError):
            return None
    return top


def choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def unknown(what: str, name: str, valid: Iterable[str]) -> ConfigError:
    return ConfigError(f"unknown {what} '{name}'. Valid choices: {choices(valid)}.")


def exit_cleanly_on_user_error(fn: F) -> F:
    """Turn MarlDiffError into 'error: ...' on stderr and exit code 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MarlDiffError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
