import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from rloss.runtime import retain_large_allocations
if sys.argv[1] == "retain":
    assert retain_large_allocations() and retain_large_allocations()  # idempotent
x = torch.ones(16 * 2**20)  # 64 MiB, touched
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(16 * 2**20)  # the same size again, touched
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_allocations_are_reused_without_page_faults():
    # 64 MiB is 16384 pages of 4 KiB: by default every one faults in again.
    assert page_faults("default") > 8000
    assert page_faults("retain") < 1000
