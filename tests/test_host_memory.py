"""The allocator setting (`host_memory=`): what it accepts, and that "reuse" keeps a large freed
tensor's memory in the heap for the next one instead of handing it back to the kernel."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from marl_diff import host_memory
from marl_diff.errors import ConfigError

# In a fresh process set to the mode in argv[1]: glibc's mallinfo2 counters while a 16 MiB
# tensor is held and after it is freed (mmapped bytes; free bytes kept in the heap).
PROBE = """
import ctypes, json, sys, torch
from marl_diff import host_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
host_memory.configure(sys.argv[1])
before = libc.mallinfo2()
block = torch.empty(4 * 1024 * 1024)
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(json.dumps({"mmapped": held.hblkhd - before.hblkhd, "kept_free": freed.fordblks}))
"""
MIB = 1024 * 1024


def test_unknown_mode_names_the_choices():
    with pytest.raises(ConfigError, match="host_memory.*release, reuse.*'keep'"):
        host_memory.configure("keep")


def test_release_leaves_the_allocator_alone():
    assert host_memory.configure("release") is False


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="acts on glibc's malloc only")
def test_reuse_keeps_a_freed_tensor_in_the_heap():
    """glibc's defaults map a fresh 16 MiB block from the kernel and unmap it at free, so the
    next such tensor faults all its pages in again; with "reuse" it comes from the heap and
    its memory stays there when freed."""
    released, reused = probe("release"), probe("reuse")
    assert released["mmapped"] >= 16 * MIB and released["kept_free"] < 16 * MIB, released
    assert reused["mmapped"] == 0 and reused["kept_free"] >= 16 * MIB, reused
