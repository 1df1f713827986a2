r"""Probabilistic scores of an ensemble rolled out in member blocks, in bounded memory.

Fair CRPS, interval coverage and the rank histogram
(:func:`~lolaray.evaluation.metrics.ensemble_scores`) need every member at a point at
once. Unlike the moments of :class:`~lolaray.evaluation.ensemble_statistics.EnsembleStatistics` they
have no statistic that adds over member blocks: CRPS's pair term
:math:`\sum_{k,j} |v_k - v_j|` pairs members of different blocks, and a quantile needs them
all. They are, however, separate at every lead time, so an ensemble too large for one
process is scored chunk of lead times by chunk:

1. each rollout actor writes its block of members to a scratch folder on the artifact
   store (:func:`write_block`; any ``pyarrow.fs`` file system, so the blocks of actors on
   other nodes are readable), lead-major ``(L, k, C, *spatial)`` float32 ``.npy``, so one
   chunk of lead times is one byte range (one ranged GET on S3);
2. :func:`lead_chunks` cuts the rollout into chunks whose joined members take at most
   ``chunk_bytes``;
3. one Ray Data task per (rollout, chunk) reads that range of every block, joins the
   members in member order (:func:`read_chunk`) and scores them (:func:`score_chunk`);
4. the chunks' scores are concatenated along the lead axis (:func:`join_chunks`).

No process holds more than one chunk of an ensemble, and the scores are those of the whole
ensemble in one block (``tests/unit/test_split_ensemble.py`` checks it on random data).
"""

from __future__ import annotations

import math
import pickle
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow.fs
import ray.data
import torch

from lolaray.evaluation.metrics import ensemble_scores
from lolaray.platform.artifacts import filesystem_for

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "join_chunks",
    "lead_chunks",
    "read_chunk",
    "remove_scratch",
    "score_chunk",
    "score_split_ensembles",
    "scratch_folder",
    "write_block",
]

#: Bytes of float32 members one scoring task joins at most (its peak is a few times this:
#: float64 copies and the sort).
DEFAULT_CHUNK_BYTES = 64 * 2**20

#: A rollout: ``(trajectory, start state, context)``.
RolloutKey = tuple[int, int, int]

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def scratch_folder(store_root: str, stage: str, artifact: str) -> str:
    """A fresh scratch folder URI beside the stage's artifacts (dot-named, so never taken
    for an artifact); remove it with :func:`remove_scratch`."""
    return f"{str(store_root).rstrip('/')}/{stage}/.members-{artifact}-{uuid.uuid4().hex[:8]}"


def remove_scratch(folder: str) -> None:
    """Deletes a scratch folder and everything in it (nothing if it is absent)."""
    fs, path = filesystem_for(folder)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


def _block_path(path: str, key: RolloutKey, start: int) -> str:
    trajectory, origin, context = key
    return f"{path}/t{trajectory}-s{origin}-c{context}-m{start:05d}.npy"


def write_block(folder: str, key: RolloutKey, start: int, members: np.ndarray) -> None:
    """Writes the block of members ``start, start + 1, …`` of rollout ``key``.

    :param folder: the scratch folder URI (:func:`scratch_folder`).
    :param members: ``(k, L, C, *spatial)``, stored float32 as ``(L, k, C, *spatial)``.
    """
    fs, path = filesystem_for(folder)
    fs.create_dir(path, recursive=True)
    lead_major = np.ascontiguousarray(np.swapaxes(np.asarray(members, dtype=np.float32), 0, 1))
    with fs.open_output_stream(_block_path(path, key, start)) as f:
        np.lib.format.write_array(f, lead_major, allow_pickle=False)


def read_chunk(folder: str, key: RolloutKey, starts: Sequence[int], leads: range) -> np.ndarray:
    """The members of lead times ``leads`` of rollout ``key``, joined over its blocks
    (given by their first members ``starts``, in member order): ``(K, len(leads), C, *spatial)``."""
    if not starts:
        raise ValueError(f"no member blocks given for rollout {key}")
    fs, path = filesystem_for(folder)
    blocks = []
    for start in starts:
        with fs.open_input_file(_block_path(path, key, start)) as f:
            shape, fortran, dtype = _HEADER_READERS[np.lib.format.read_magic(f)](f)
            if fortran or not 0 <= leads.start <= leads.stop <= shape[0]:
                raise ValueError(
                    f"block {start} of rollout {key} has shape {shape}: cannot read leads {leads}"
                )
            per_lead = math.prod(shape[1:]) * dtype.itemsize
            f.seek(f.tell() + leads.start * per_lead)
            data = f.read(len(leads) * per_lead)
        blocks.append(np.frombuffer(data, dtype=dtype).reshape(len(leads), *shape[1:]).swapaxes(0, 1))
    return np.concatenate(blocks, axis=0)


def lead_chunks(
    length: int, *, members: int, state_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[range]:
    """Consecutive lead-time ranges covering ``0..length-1`` whose ``members`` float32
    states of ``state_size`` values take at most ``chunk_bytes`` (at least one lead each)."""
    if length < 1 or members < 1 or state_size < 1 or chunk_bytes < 1:
        raise ValueError(
            f"lead_chunks needs positive sizes, got {length}, {members}, {state_size}, {chunk_bytes}"
        )
    per_chunk = max(1, chunk_bytes // (members * state_size * 4))
    return [range(a, min(a + per_chunk, length)) for a in range(0, length, per_chunk)]


def score_chunk(ensemble: np.ndarray, truths: Mapping[str, np.ndarray], *, spatial_dims: int) -> dict:
    """:func:`~lolaray.evaluation.metrics.ensemble_scores` of members ``(K, l, C, *spatial)``
    against each reference's truth ``(l, C, *spatial)``: ``reference → score → array``."""
    members = torch.from_numpy(np.asarray(ensemble))
    return {
        ref: {
            name: value.numpy()
            for name, value in ensemble_scores(
                members, torch.as_tensor(truth), spatial_dims=spatial_dims
            ).items()
        }
        for ref, truth in truths.items()
    }


def join_chunks(chunks: Sequence[dict]) -> dict:
    """Scores of consecutive lead chunks (:func:`score_chunk`) joined along the lead axis."""
    return {
        ref: {name: np.concatenate([c[ref][name] for c in chunks], axis=0) for name in chunks[0][ref]}
        for ref in chunks[0]
    }


def _score_batch(batch: dict, *, folder: str, starts: list[int], spatial_dims: int) -> dict:
    """Ray Data task: scores one pickled chunk spec."""
    keys, results = [], []
    for payload in batch["spec"]:
        spec = pickle.loads(payload)
        leads = range(*spec["leads"])
        ensemble = read_chunk(folder, spec["key"], starts, leads)
        keys.append("/".join(str(v) for v in (*spec["key"], leads.start)))
        results.append(pickle.dumps(score_chunk(ensemble, spec["truths"], spatial_dims=spatial_dims)))
    return {"key": np.asarray(keys), "result": np.asarray(results, dtype=object)}


def score_split_ensembles(
    folder: str,
    truths: Mapping[RolloutKey, Mapping[str, np.ndarray]],
    *,
    starts: Sequence[int],
    members: int,
    spatial_dims: int,
    chunk_bytes: int | None = None,
) -> dict[RolloutKey, dict]:
    """Scores every rollout whose member blocks are in ``folder``, one Ray Data task per
    lead chunk (0.5 CPU each, like the rollout actors, so they fit a 2-CPU trial).

    :param truths: ``rollout → reference → (L, C, *spatial)`` physical truth from the
        rollout's first state on.
    :param starts: the blocks' first members, in member order.
    :param members: the ensemble size :math:`K`.
    :param chunk_bytes: see :func:`lead_chunks`; :data:`DEFAULT_CHUNK_BYTES` when ``None``.
    :returns: ``rollout → reference → score → (L, C)`` (``rank_histogram``: ``(L, C, K + 1)``).
    """

    chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    specs, chunks_of = [], {}
    for key, by_reference in truths.items():
        length, *state = next(iter(by_reference.values())).shape
        chunks_of[key] = lead_chunks(
            length, members=members, state_size=math.prod(state), chunk_bytes=chunk_bytes
        )
        for leads in chunks_of[key]:
            chunk_truths = {ref: np.asarray(u[leads.start : leads.stop]) for ref, u in by_reference.items()}
            spec = {
                "key": tuple(int(v) for v in key),
                "leads": (leads.start, leads.stop),
                "truths": chunk_truths,
            }
            specs.append({"spec": pickle.dumps(spec)})
    if not specs:
        return {}
    ds = ray.data.from_items(specs, override_num_blocks=len(specs)).map_batches(
        _score_batch,
        fn_kwargs={"folder": folder, "starts": [int(s) for s in starts], "spatial_dims": spatial_dims},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.5,
    )
    scored = {str(row["key"]): pickle.loads(row["result"]) for row in ds.iter_rows()}
    if len(scored) != len(specs):
        raise RuntimeError(f"the scoring pass returned {len(scored)} chunks for {len(specs)}")
    return {
        key: join_chunks([scored["/".join(str(v) for v in (*key, leads.start))] for leads in chunks])
        for key, chunks in chunks_of.items()
    }
