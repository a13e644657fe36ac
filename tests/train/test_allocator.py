# SPDX-License-Identifier: Apache-2.0
"""``kep_train.train.allocator``: freed activation buffers are reused, not faulted in again."""

import os
import subprocess
import sys

import pytest

# A small CNN's forward and backward at batch 1,000 (activations of 65 MB, above glibc's 32 MiB mmap
# ceiling), 8 times; prints the minor page faults of the last 5 (the first ones grow the heap).
_PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from kep_train.train.allocator import keep_freed_memory
    print(keep_freed_memory(), file=sys.stderr)
torch.manual_seed(0)
nn = torch.nn
m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                  nn.Flatten(), nn.Linear(16 * 32 * 32, 10))
x = torch.randn(1000, 3, 32, 32)
for i in range(8):
    if i == 3:
        r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    m(x).sum().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")


def _faults(mode, **env):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)
    return int(out.stdout.strip()), out.stderr


@glibc
def test_freed_buffers_are_reused():
    plain, _ = _faults("plain")
    kept, state = _faults("keep")
    assert "mmap_threshold" in state, state
    # measured: about 2 million faults without it (each 65 MB buffer faulted in again every
    # step), at most a few heap growths (16,000) with it
    assert plain > 200_000
    assert kept < plain // 10


@glibc
def test_the_users_tunables_win():
    kept, state = _faults("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert "set by the user" in state
    assert kept > 200_000


def test_the_report_records_it():
    from kep_train.train.allocator import keep_freed_memory
    state = keep_freed_memory()
    assert state["allocator"]
    assert keep_freed_memory() is state       # once per process
