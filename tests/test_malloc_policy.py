"""utils/malloc_policy.py: after keep_freed_memory() large buffers come from the heap, which keeps them when freed;
the user's own malloc settings win; the run's entry point applies it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from utils import malloc_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where a 64 MiB buffer comes from (glibc's mallinfo2: bytes in mapped chunks, bytes of the heap) while it lives
# and after it is freed
CHILD = """
import ctypes, json, sys
import torch
from utils import malloc_policy

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "main":  # the command line's entry point (its --help: nothing else runs)
    import contextlib, io
    from app import runner
    with contextlib.redirect_stdout(io.StringIO()):
        assert runner.main(["--model", "sgd", "--help"]) == 0
applied = malloc_policy.keep_freed_memory() if sys.argv[1] == "policy" else sys.argv[1] == "main"
before = libc.mallinfo2()
x = torch.empty(1 << 24)
alive = libc.mallinfo2()
del x
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "mapped": alive.hblkhd - before.hblkhd, "heap_alive": alive.arena,
                  "heap_freed": freed.arena}))
"""
MIB64 = 1 << 26


def placement(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not malloc_policy.user_settings({k: v})}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(malloc_policy._glibc() is None or not hasattr(malloc_policy._glibc(), "mallinfo2"),
                    reason="glibc's malloc (2.33 or later) only")
def test_large_buffers_come_from_the_heap_and_stay_there():
    default, kept = placement("default"), placement("policy")
    assert kept["applied"] and not default["applied"]
    assert default["mapped"] >= MIB64  # mapped: zeroed anew by the kernel at each allocation
    assert kept["mapped"] == 0 and kept["heap_alive"] >= MIB64  # from the heap ...
    assert kept["heap_freed"] == kept["heap_alive"]  # ... which keeps it for the next allocation


def test_the_users_settings_win():
    assert not malloc_policy.keep_freed_memory({"MALLOC_ARENA_MAX": "2"})
    assert not malloc_policy.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    assert malloc_policy.user_settings({"MALLOC_MMAP_MAX_": "0"}) and not malloc_policy.user_settings({"PATH": "/"})


@pytest.mark.skipif(malloc_policy._glibc() is None or not hasattr(malloc_policy._glibc(), "mallinfo2"),
                    reason="glibc's malloc (2.33 or later) only")
def test_the_entry_point_applies_it():
    after_main = placement("main")  # what main.py runs, then the same 64 MiB buffer
    assert after_main["mapped"] == 0 and after_main["heap_freed"] == after_main["heap_alive"] >= MIB64


def test_the_fisher_pass_runs_with_the_collector_paused():
    import gc

    from models.second_order_utils.fisher import network_fisher
    from models.second_order_utils.modules import inject_adapters
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
    layers = inject_adapters(net, "lora", 2)
    seen = []

    def forward(x):
        seen.append(gc.isenabled())
        return net(x)
    assert gc.isenabled()
    sums, n = network_fisher(forward, layers, [torch.randn(3, 6), torch.randn(2, 6)])
    assert seen == [False, False] and gc.isenabled() and n == 5 and all(v.abs().sum() > 0 for v in sums.values())
    gc.disable()
    try:
        with malloc_policy.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()
