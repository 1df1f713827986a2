"""Process setup of the Ray session: glibc keeps freed tensor memory (no page fault per tensor)."""

import json
import subprocess
import sys

import pytest

# A fresh process each time: mallopt settings last for the life of a process.
_FAULTS = """
import json, resource, sys, torch
from lolaray.platform.session import keep_freed_memory
from lolaray.trainers.transformer import build_backbone
took = keep_freed_memory() if sys.argv[1] == "on" else False
torch.manual_seed(0)
net = build_backbone("demo", in_channels=16).eval()
# A batch of 8 ensemble members, as in a rollout: activations of a few MiB each.
x, mod, cond = torch.randn(8, 16, 5, 8, 8), torch.randn(8, 128), torch.ones(8, 1, 5, 1, 1)
with torch.inference_mode():
    for _ in range(5):
        net(x, mod, cond)  # warm up: glibc's thresholds adapt, the heap grows
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        net(x, mod, cond)
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, **env) -> dict:
    import os

    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_removes_the_page_faults_of_large_tensors():
    off, on = _faults("off"), _faults("on")
    # By default glibc hands freed activations back to the OS and every forward pass faults
    # their pages in again (6,000-9,000 faults per pass measured); reused heap memory does not.
    assert off["faults"] > 3000, off
    assert on["took"] and on["faults"] < off["faults"] / 4, (on, off)


def test_keep_freed_memory_can_be_turned_off():
    assert _faults("on", LOLARAY_KEEP_FREED_MEMORY="0")["took"] is False
