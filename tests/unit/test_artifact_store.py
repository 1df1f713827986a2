"""The local artifact store under concurrency: processes that build the same artifact at
once (two studies sharing an autoencoder) all succeed, one copy is published, and a reader
never sees a half-written artifact."""

import multiprocessing
import time

import pytest

from lolaray.platform.artifacts import MANIFEST, ArtifactStore

PAYLOAD = b"x" * (4 << 20)  # a few MiB per file, so that writing takes a while


def _build(root: str, barrier, on_store: bool, results) -> None:
    store = ArtifactStore(root)
    barrier.wait()
    if on_store:
        with store.build_on_store("stage", "stage-same", {"by": "worker"}) as folder:
            for i in range(4):
                with open(f"{folder}/part-{i}.bin", "wb") as f:
                    f.write(PAYLOAD)
    else:
        with store.build("stage", "stage-same", {"by": "driver"}) as folder:
            for i in range(4):
                (folder / f"part-{i}.bin").write_bytes(PAYLOAD)
    results.put(store.get("stage", "stage-same").manifest["created"])


@pytest.mark.parametrize("on_store", [False, True])
def test_concurrent_builds_of_one_artifact_publish_one_complete_copy(tmp_path, on_store):
    builders = 3
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(builders + 1), context.Queue()
    processes = [
        context.Process(target=_build, args=(str(tmp_path), barrier, on_store, results))
        for _ in range(builders)
    ]
    for process in processes:
        process.start()
    barrier.wait(timeout=120)
    store = ArtifactStore(tmp_path)
    seen, deadline = 0, time.monotonic() + 120
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        artifact = store.get("stage", "stage-same")
        if artifact is not None:  # whenever it is visible, it is whole
            seen += 1
            files = sorted(p.name for p in artifact.path.iterdir())
            assert files == [MANIFEST, *[f"part-{i}.bin" for i in range(4)]]
            assert all((artifact.path / f"part-{i}.bin").stat().st_size == len(PAYLOAD) for i in range(4))
        time.sleep(0.005)
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * builders
    created = [results.get(timeout=10) for _ in range(builders)]
    assert len(set(created)) == 1  # every builder got the one published copy
    assert store.complete_ids("stage") == {"stage-same"}
    leftovers = [p.name for p in (tmp_path / "stage").iterdir() if p.name != "stage-same"]
    assert leftovers == []  # no staging folder stays behind
