"""Tests of lolaray.evaluation.split_ensemble: scores of an ensemble split into member
blocks, read back one chunk of lead times at a time, equal those of the whole ensemble."""

import numpy as np
import pytest
import torch

from lolaray.evaluation.metrics import ensemble_scores
from lolaray.evaluation.split_ensemble import (
    join_chunks,
    lead_chunks,
    read_chunk,
    remove_scratch,
    score_chunk,
    scratch_folder,
    write_block,
)
from lolaray.platform.artifacts import ArtifactStore


def _ensemble(*shape, seed=0):
    # float32 values: the blocks are stored in float32, so the reference sees the same numbers.
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize(
    ("spatial", "sizes", "chunk_leads"),
    [((8, 8), (3, 3, 1), 1), ((8, 8), (4, 3), 4), ((6, 4, 5), (2, 2, 2, 1), 9), ((16,), (7,), 2)],
)
def test_scores_from_blocks_and_lead_chunks_equal_the_whole_ensemble(tmp_path, spatial, sizes, chunk_leads):
    members, leads, channels = sum(sizes), 9, 2
    ensemble = _ensemble(members, leads, channels, *spatial)  # (K, L, C, *spatial)
    truths = {"absolute": _ensemble(leads, channels, *spatial, seed=1)}
    truths["relative"] = truths["absolute"] + 0.1
    folder = scratch_folder(str(tmp_path), "evaluation", "abc")
    key, starts, start = (3, 1, 2), [], 0
    for size in sizes:
        write_block(folder, key, start, ensemble[start : start + size].numpy())
        starts.append(start)
        start += size
    state_size = channels * int(np.prod(spatial))
    chunks = lead_chunks(
        leads, members=members, state_size=state_size, chunk_bytes=chunk_leads * members * state_size * 4
    )
    assert [len(c) for c in chunks[:-1]] == [chunk_leads] * (len(chunks) - 1)
    scored = join_chunks(
        [
            score_chunk(
                read_chunk(folder, key, starts, c),
                {ref: u[c.start : c.stop].numpy() for ref, u in truths.items()},
                spatial_dims=len(spatial),
            )
            for c in chunks
        ]
    )
    for ref, truth in truths.items():
        expected = ensemble_scores(ensemble, truth, spatial_dims=len(spatial))
        assert scored[ref].keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(scored[ref][name], value.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    ("length", "members", "size", "budget"),
    [(26, 8, 4096, 64 * 2**20), (100, 16, 10**6, 64 * 2**20), (5, 2, 10, 1), (7, 3, 5, 3 * 5 * 4 * 3)],
)
def test_lead_chunks_cover_the_rollout_within_the_budget(length, members, size, budget):
    chunks = lead_chunks(length, members=members, state_size=size, chunk_bytes=budget)
    assert [i for c in chunks for i in c] == list(range(length))
    assert all(len(c) == 1 or len(c) * members * size * 4 <= budget for c in chunks)
    with pytest.raises(ValueError, match="positive"):
        lead_chunks(0, members=members, state_size=size)


def test_read_outside_the_rollout_fails_and_scratch_is_no_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    folder = scratch_folder(store.root, "evaluation", "abc")
    write_block(folder, (0, 0, 1), 0, np.zeros((2, 4, 1, 3, 3)))
    with pytest.raises(ValueError, match="cannot read leads"):
        read_chunk(folder, (0, 0, 1), [0], range(2, 6))
    assert store.complete_ids("evaluation") == set()
    remove_scratch(folder)
    remove_scratch(folder)  # absent: nothing to do
    assert not list((tmp_path / "evaluation").iterdir())
