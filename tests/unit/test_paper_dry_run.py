"""The dry run of the paper profile (issue 19).

The full dry run builds every paper-size network for real and takes one training and one
sampling step of each at batch 1 on this machine: minutes per network on a 2-core CPU
and up to ~16 GiB of memory, so it is **opt-in**: ``LOLARAY_DRY_RUN=1 pytest
tests/unit/test_paper_dry_run.py -s`` (README, "The paper profile before a cluster").
The cheap parts — the grid reduction and the count check — always run; the parameter
counts themselves are checked on the meta device in ``test_plan.py``.
"""

import math
import os

import pytest

from lolaray.sweeps import dry_run as dry_run_module
from lolaray.sweeps.dry_run import (
    HEADER,
    PAPER_NETWORKS,
    StepDoesNotFit,
    _fitting_grid,
    run_isolated,
    within_stated_digits,
)

GIB = 2**30
opt_in = pytest.mark.skipif(
    os.environ.get("LOLARAY_DRY_RUN") != "1",
    reason="opt-in: the paper-size dry run takes minutes per network and up to ~16 GiB; set LOLARAY_DRY_RUN=1",
)


def test_a_step_that_does_not_fit_runs_at_a_reduced_grid(monkeypatch):
    spec = PAPER_NETWORKS["pixel solver (Euler 5x512^2, patch 16)"]

    # Weights, gradients and optimizer state (16 bytes a parameter) do not shrink with the
    # grid; activations do. A stand-in for the meta-device count keeps this test instant.
    def predicted(spec, grid=None):
        grid = grid or (512, 512)
        return int(16 * 860e6 + 1e4 * math.prod(grid))  # AdamW: 16 bytes a parameter

    monkeypatch.setattr(dry_run_module, "predicted_step_bytes", predicted)
    full = predicted(spec)
    assert _fitting_grid(spec, full) == ((512, 512), full)
    assert _fitting_grid(spec, full - 1) == ((256, 256), predicted(spec, (256, 256)))
    assert _fitting_grid(spec, predicted(spec, (64, 64)))[0] == (64, 64)
    assert _fitting_grid(spec, 0)[0] == (32, 32)  # never below 32 cells: the smallest grid tried


def test_counts_are_checked_at_the_digits_method_md_gives():
    assert within_stated_digits(222_888_256, 2.23e8)
    assert within_stated_digits(860_810_240, 8.6e8)
    assert not within_stated_digits(866_000_000, 8.6e8)


@opt_in
@pytest.mark.parametrize("name", list(PAPER_NETWORKS))
def test_paper_network_builds_and_takes_a_training_and_a_sampling_step(name):
    try:
        result = run_isolated(name)
    except StepDoesNotFit as error:
        if error.predicted > 24 * GIB:  # 24 GiB cannot hold it even at the smallest grid: a real failure
            raise
        pytest.skip(f"this machine has too little free memory now: {error}")
    print(f"\n{HEADER}\n{result.line()}")
    assert within_stated_digits(result.parameters, result.stated_parameters), result
    assert math.isfinite(result.loss)
    assert result.train_peak_bytes <= 24 * GIB
    assert result.train_seconds > 0 and result.sample_seconds > 0
