"""The smoke study with ``--store s3://…`` against a real S3 API on loopback (moto's server):
every artifact lands in the bucket, a run killed mid-way (SIGKILL of the study's process
group, once the autoencoder and a latent cache are in the bucket) resumes from the bucket, and a third run reuses
every stage.

The study is the ``s3_study`` fixture of ``conftest.py``: one rate (c8) without the pixel
baseline, on the rayleigh_benard-like folder, whose artifacts ``test_paper_datasets.py``
checks too (one study for both files)."""

import re


def _stages(stdout: str) -> dict[str, tuple[int, int]]:
    """``trial → (stages ran, stages reused)`` from the study's closing lines."""
    return {
        m[1]: (int(m[2]), int(m[3]))
        for m in re.finditer(r"\[lolaray\] (\w+): ran (\d+) stage\(s\), reused (\d+)", stdout)
    }


def test_every_artifact_lands_in_the_bucket(s3_study):
    work, runs = s3_study.work, s3_study.runs
    manifests = runs["manifests"]
    # one rate: its autoencoder, 3 latent caches, the 2 latent emulators, their evaluations,
    # and the study report
    assert {s: len(v) for s, v in manifests.items()} == {
        "autoencoder": 1,
        "latents": 3,
        "emulator": 2,
        "evaluation": 2,
        "study": 1,
    }
    keys = set(runs["keys"])
    (study,) = manifests["study"]
    assert study.replace("manifest.json", "study.html") in keys
    (autoencoder,) = manifests["autoencoder"]
    assert autoencoder.replace("manifest.json", "autoencoder.pt") in keys
    for emulator in manifests["emulator"]:
        assert emulator.replace("manifest.json", "emulator.pt") in keys
    assert any(k.startswith("store/_train_runs/") for k in keys)  # Ray Train's storage_path too
    for latents in manifests["latents"]:
        assert any(k.startswith(latents.replace("manifest.json", "shards/")) for k in keys)
    assert not (work / "lolaray-store").exists()  # nothing went to a local default store
    assert f"study report: s3://lolaray/{study.replace('/manifest.json', '')}/study.html" in runs["again"]


def test_a_killed_study_resumes_from_the_bucket(s3_study):
    runs = s3_study.runs
    before = runs["killed_with"]
    assert before["autoencoder"] == 1 and before["latents"] >= 1
    stages = _stages(runs["resumed"])
    assert set(stages) == {"c8"}
    reused = sum(r for _, r in stages.values())
    # what the killed run finished is reused, not rebuilt: the autoencoder, its caches
    # and any emulator
    assert reused >= sum(before.values()), (before, stages)
    assert sum(n for n, _ in stages.values()) + reused == 8  # the 8 stages at ÷c8


def test_a_second_run_reuses_every_stage(s3_study):
    runs = s3_study.runs
    assert _stages(runs["again"]) == {"c8": (0, 8)}
    assert "Table 6 analogue" in runs["again"]
