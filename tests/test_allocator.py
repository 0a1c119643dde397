"""The CPU allocator setting: freed training memory stays in the process (no page faults)."""

import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys, torch
from onestep.train import allocator
# glibc's documented defaults, made static (its dynamic thresholds make the default vary by run)
mallopt = ctypes.CDLL("libc.so.6").mallopt
assert mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024) == 1 and mallopt(allocator.M_MMAP_THRESHOLD, 128 * 1024) == 1
if sys.argv[1] == "retain":
    assert allocator.retain_freed_memory()
def faults(rounds):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):  # an iteration's pattern: many activation-sized blocks, all freed
        blocks = [torch.ones(256 * 1024) for _ in range(64)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
faults(2)
print(faults(8))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_retained_memory_is_not_faulted_back_in():
    counts = {}
    for mode in ("default", "retain"):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        counts[mode] = int(out.stdout.split()[-1])
    # 8 rounds of 64 MiB: with the default thresholds it goes back to the OS each time (16k pages a round)
    assert counts["default"] > 8 * 4000, counts
    assert counts["retain"] < 0.02 * counts["default"], counts
