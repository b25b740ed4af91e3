"""Atomic checkpoints: written to a temporary file then renamed, so killing the process at any
moment leaves the latest complete checkpoint intact; loaded with `weights_only=True` so no
arbitrary objects are unpickled."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from marl_diff.errors import MarlDiffError

PATTERN = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_paths(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def atomic_save(path: Path, payload: dict) -> Path:
    """torch.save to a temporary file, then rename: `path` is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def claim_new_dir(base: Path) -> Path:
    """A directory no other run uses: `base`, or `base-1`, `base-2`, ... where that is taken,
    created here by an atomic mkdir, so two runs started in the same second (timestamped
    names) never share one."""
    candidate, k = base, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            candidate, k = base.with_name(f"{base.name}-{k}"), k + 1


def load_file(path: Path, map_location: torch.device | str = "cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a foreign or damaged file: say which, never unpickle it
        raise MarlDiffError(f"cannot load checkpoint '{path}': {err}") from None


def save_checkpoint(directory: Path, step: int, payload: dict, keep: int) -> Path:
    final = atomic_save(directory / f"step_{step:012d}.pt", payload)
    for old in checkpoint_paths(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load_latest(directory: Path, map_location: torch.device | str = "cpu") -> dict:
    paths = checkpoint_paths(directory)
    if not paths:
        raise MarlDiffError(f"no checkpoint found in '{directory}'")
    return load_file(paths[-1], map_location)
