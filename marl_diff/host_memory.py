"""What the process's C allocator does with freed memory (`host_memory=`).

glibc's malloc serves blocks above a threshold (128 KiB at start, rising to the largest block
freed so far) straight from the kernel with mmap and unmaps them at free, and it gives the
heap's free top back to the kernel past another threshold. A training update allocates and frees
the same large tensors at every step: in that mode each one comes back as fresh pages, which the
kernel faults in and zeroes one by one. "reuse" keeps freed blocks (up to 32 MiB each, glibc's
largest mmap threshold) in the heap for the next allocation, and never trims it: the process
keeps its peak heap instead of returning it between updates. The numbers are the same; only
where the memory comes from changes.

Measured on the project's 2-core CPU, one thread, `bench update` batches (results/speed.md):
page faults per update fell from 3,100-7,600 to about 150 for ddpl on MPE and from 25,000-86,000
to under 1,000 for qvpo, which then updated 12-29% faster; peak memory did not grow. "release"
keeps glibc's own behaviour. Other C libraries (musl, macOS) keep theirs whatever the setting.
"""

from __future__ import annotations

import ctypes
import platform

from marl_diff.errors import ConfigError, choices

MODES = ("reuse", "release")

_M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
_LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit machines
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt's int takes


def configure(mode: str) -> bool:
    """Apply `mode` (one of MODES) to this process's allocator; True when glibc took it.

    "release" changes nothing (a process starts that way); call this before the work whose
    allocations it should govern."""
    if mode not in MODES:
        raise ConfigError(f"host_memory must be one of {choices(MODES)}, not '{mode}'")
    if mode == "release" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the running process, glibc included
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    )
