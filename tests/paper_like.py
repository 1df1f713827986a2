"""The ``compression.py`` options of the smoke study on the paper-like folders of
``tests/wellfiles.py`` (``test_paper_datasets.py``; the studies run in
``tests/integration/conftest.py``)."""

from pathlib import Path

#: Options beyond ``--profile smoke --dataset FOLDER --latent-channels 8 --contexts 1``: the
#: paper's settings are picked by the dataset's name, only what does not fit the tiny
#: trajectories is overridden.
PAPER_LIKE = {
    # RB's paper start state (32) and horizons (to 160) do not fit 33 steps: overridden.
    # The pixel baseline runs on the 3-D case only (the suite's time budget).
    "rayleigh_benard": ["--starts", "0", "--horizons", "1:8,9:32", "--no-pixel"],
    # TGC keeps its paper start state 4 (Δ = 1); the horizons are cut to its 12 steps.
    "turbulence_gravity_cooling": ["--horizons", "1:2,3:7"],
}


def paper_like_argv(name: str, folder: Path) -> list[str]:
    """The study's options on the paper-like folder ``name`` (its MLflow experiment: ``name``)."""
    argv = ["--profile", "smoke", "--dataset", str(folder), "--latent-channels", "8", "--contexts", "1"]
    return [*argv, *PAPER_LIKE[name], "--experiment", name]
