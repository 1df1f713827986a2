#!/usr/bin/env bash
# The paper profile's GPU checks in one go (minutes on one GPU), for a machine with CUDA:
#   bash benchmarks/gpu_check.sh [output folder]
# 1. the environment (GPU, torch, CUDA, NCCL); 2. --plan of the paper study (no Ray, seconds);
# 3. the dry run of every paper-size network on CUDA (one training + one sampling step,
#    batch 1, peak memory); 4. one network again with torch.compile (LOLARAY_TORCH_COMPILE=1);
# 5. model-FLOPs utilisation of training steps against the GPU's measured GEMM peak;
# 6. the paper-size emulator inference benchmark (Table 1: time per state).
# Every step's output goes to the terminal and to <output folder>/<step>.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
status=0

step() {  # step <name> <command...>: run, tee, remember a failure, go on
    local name=$1
    shift
    echo "== $name: $*"
    local began=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - began)) s"
    [ "$rc" -eq 0 ] || status=1
}

step environment bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.nccl.version(), torch.cuda.get_device_name())'"
step plan "$PY" sweeps/compression.py --profile paper --plan
step dry_run "$PY" benchmarks/paper_dry_run.py --device cuda
step dry_run_compiled env LOLARAY_TORCH_COMPILE=1 "$PY" -c "
import time
import torch
from lolaray.trainers.emulator_trainer import Objective
from lolaray.trainers.emulators import EmulatorConfig, build_emulator
from lolaray.trainers.hardware import compile_backbones, compile_enabled
assert compile_enabled('cuda')
# The training path compiles the backbone in place; time a compiled denoiser step against the eager one.
for compiled in (False, True):
    model = Objective(build_emulator(EmulatorConfig(preset='paper'), (64, 16, 16), 5)).cuda()
    if compiled:
        compile_backbones(model)
    x = torch.randn(8, 64, 5, 16, 16, device='cuda'); th = torch.randn(8, 5, device='cuda')
    mask = (torch.arange(5, device='cuda') < 1).expand(8, -1)
    times = []
    for _ in range(4):
        torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = model(x, th, mask)
        loss.backward(); torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    print(f'compiled={compiled}: first step {times[0]:.2f} s, then {min(times[1:]) * 1000:.1f} ms (batch 8)')
"
step mfu "$PY" benchmarks/mfu.py --device cuda --wide --gemm 8192
step inference "$PY" benchmarks/paper_inference.py --device cuda
echo "outputs in $OUT; overall exit $status"
exit $status
