"""User-facing errors: raised anywhere, printed as one paragraph by the entry points."""

from __future__ import annotations

import functools
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
