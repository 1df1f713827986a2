"""Process setup of the Ray session: glibc keeps freed tensor memory (no page fault per tensor).

Each probe runs in a fresh process: mallopt settings last for the life of a process.
"""

import json
import os
import subprocess
import sys

import pytest
import ray

from lolaray.platform import session

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")

_PROLOGUE = """
import json, resource, sys, torch
from lolaray.platform.session import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "on" else False
"""

# Where a 24 MiB tensor lives, and whether the heap still holds it once three are freed.
# Without the setting glibc maps the first one on its own (its adaptive threshold starts at
# 128 KiB); what it does with later ones depends on what sits on top of the heap, so only
# the setting's side is asserted about trimming.
_HEAP = """
def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = line.split()[0].split("-")
            return int(lo, 16), int(hi, 16)
    return 0, 0
tensors = [torch.empty(6 << 20) for _ in range(3)]
lo, hi = heap()
in_heap = all(lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= hi for t in tensors)
end = max(t.data_ptr() + t.nbytes for t in tensors)
del tensors
print(json.dumps({"took": took, "in_heap": in_heap, "kept": heap()[1] >= end}))
"""

# Page faults of the demo denoiser on a batch of 8 ensemble members, as in a rollout, once
# the heap has grown to its working size.
_DENOISER = """
from lolaray.trainers.transformer import build_backbone
torch.manual_seed(0)
net = build_backbone("demo", in_channels=16).eval()
x, mod, cond = torch.randn(8, 16, 5, 8, 8), torch.randn(8, 128), torch.ones(8, 1, 5, 1, 1)
with torch.inference_mode():
    for _ in range(8):
        net(x, mod, cond)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        net(x, mod, cond)
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(script: str, mode: str, **env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROLOGUE + script, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_tensors_below_32_mib_come_from_the_heap_and_stay_there_once_freed():
    assert _probe(_HEAP, "on") == {"took": True, "in_heap": True, "kept": True}
    assert _probe(_HEAP, "off")["in_heap"] is False


@glibc_only
def test_the_denoiser_stops_faulting_once_the_heap_has_grown():
    # One pass touches 7,000-10,000 fresh pages when glibc hands its activations back
    # (glibc's default, though how often it does so varies from run to run: 0-18,000 faults
    # per pass measured). With the setting, 0-1,921 faults in all of 8 passes after the
    # warm-up, from the odd late growth of the heap.
    on = _probe(_DENOISER, "on")
    assert on["took"] and on["faults"] < 4000, on


def test_keep_freed_memory_can_be_turned_off():
    took = 'print(json.dumps({"took": took}))'
    assert _probe(took, "on", LOLARAY_KEEP_FREED_MEMORY="0")["took"] is False


def test_the_embedded_ray_never_joins_a_cluster_named_by_a_stale_address_file(monkeypatch):
    """``start_ray()`` starts a new local Ray (``address="local"``): a bare ``ray.init()`` would
    connect to the cluster that /tmp/ray/ray_current_cluster names — one another process runs,
    or a dead one whose file a killed run left — and refuse the logical CPUs it is given."""
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 6.0})
    monkeypatch.setattr(session, "setup_process", lambda: None)
    assert session.start_ray() == {"CPU": 6.0}
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] >= 6
