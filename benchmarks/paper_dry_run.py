"""Dry run of the paper profile: every paper-size network, one training and one sampling step.

    python benchmarks/paper_dry_run.py [--device cpu|cuda] [--networks NAME ...] [--precision auto]

Each network runs in a fresh process (its peak memory is its own): parameter count against
method.md, one training step (the stage's loss, backward, clip, the profile's optimizer)
and one sampling step at batch 1, with wall time, CPU time and peak memory. A grid is
reduced (and marked so) only where the predicted step does not fit in 24 GiB or in the
memory this machine has free. See :mod:`lolaray.sweeps.dry_run`; the same run is the
opt-in test ``LOLARAY_DRY_RUN=1 pytest tests/unit/test_paper_dry_run.py``.
"""

import sys

from lolaray.sweeps.dry_run import main

if __name__ == "__main__":
    sys.exit(main())
