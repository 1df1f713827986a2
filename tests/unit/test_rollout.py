"""Unit tests of evaluation/rollout.py: rollout bookkeeping, lead times, seeding, decoding."""

from __future__ import annotations

import math

import pytest
import torch

from lolaray.evaluation.emulator_steps import diffusion_step, solver_step
from lolaray.evaluation.rollout import (
    decode_in_chunks,
    ensemble_rollout,
    lead_times,
    member_generators,
    member_seed,
    rollout,
    rollout_origin,
    rollout_steps,
    split_members,
)
from lolaray.trainers.autoencoder import build_autoencoder
from lolaray.trainers.diffusion import ElucidatedDenoiser
from lolaray.trainers.solver import NeuralSolver
from lolaray.trainers.transformer import build_backbone


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny networks: one thread is as fast and avoids oversubscription on a busy box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ a bookkeeping step


class IndexStep:
    """A deterministic step that writes, in each unknown slot, the state index it should
    have (last known value + offset) in channel 0 and the call number in channel 1, and
    garbage in the known slots (so the rollout's context replacement is tested). It
    records the channel-0 values of the context it was given."""

    def __init__(self):
        self.calls: list[list[float]] = []

    def __call__(self, window, mask, theta, generator):
        known = mask[0]
        j = int(known.sum())
        assert known[:j].all() and not known[j:].any(), "the context must be the first states"
        assert torch.equal(mask, mask[:1].expand_as(mask))
        self.calls.append(window[0, 0, :j, 0, 0].tolist())
        out = torch.full_like(window, -999.0)
        last = window[:, 0, j - 1]
        for p in range(j, window.shape[2]):
            out[:, 0, p] = last + (p - j + 1)
            out[:, 1, p] = len(self.calls) - 1
        # The protocol: known entries come back equal to the context (except step 0's,
        # which we corrupt on purpose to check that rollout() restores them).
        if len(self.calls) > 1:
            out[:, :, :j] = window[:, :, :j]
        return out


@pytest.mark.parametrize(
    ("window", "context", "overlap", "length"),
    [(5, 1, 1, 26), (5, 2, 2, 26), (5, 3, 3, 26), (3, 1, 1, 10), (5, 1, 3, 12), (5, 3, 1, 9), (5, 4, 4, 7)],
)
def test_rollout_bookkeeping(window, context, overlap, length):
    step = IndexStep()
    batch, spatial = 2, (3, 2)
    initial = torch.zeros(batch, 2, context, *spatial)
    initial[:, 0] = torch.arange(context, dtype=torch.float32).reshape(1, context, 1, 1)
    initial[:, 1] = 7.25  # a marker that no generated state carries

    traj = rollout(step, initial, None, window=window, context=context, overlap=overlap, length=length)

    assert traj.shape == (batch, 2, length, *spatial)
    # The context states are exactly the given ones (step 0 returned garbage there).
    assert torch.equal(traj[:, :, :context], initial)
    # State t has index t everywhere (each step continued from the right context).
    expected = torch.arange(length, dtype=torch.float32).reshape(1, length, 1, 1)
    assert torch.equal(traj[:, 0], expected.expand(batch, length, *spatial))

    # Which call produced which state: step 0 makes states c..n, then n+1-o per step.
    producer = traj[0, 1, :, 0, 0].tolist()
    for t in range(context, length):
        k = 0 if t < window else 1 + (t - window) // (window - overlap)
        assert producer[t] == k, (t, producer)

    # Call k>0 was conditioned on the last o states produced before it.
    assert step.calls[0] == list(range(context))
    for k in range(1, len(step.calls)):
        end = window + (k - 1) * (window - overlap)
        assert step.calls[k] == list(range(end - overlap, end))

    assert len(step.calls) == rollout_steps(window=window, context=context, overlap=overlap, length=length)
    if (window, overlap, length) == (5, 1, 26):
        assert len(step.calls) == 7  # Euler: 26 states at Δ=4 in 7 steps (method.md §7)


def test_lead_times():
    assert lead_times(26, 1, 4).tolist() == list(range(0, 101, 4))
    assert lead_times(6, 3, 4).tolist() == [-8, -4, 0, 4, 8, 12]
    assert lead_times(5, 2, 1).tolist() == [-1, 0, 1, 2, 3]
    assert lead_times(4, 1, 4).dtype == torch.int64

    # Consistent with the rollout: the generated states (t >= c) have positive leads.
    for context in (1, 2, 3):
        leads = lead_times(26, context, 4)
        assert (leads[context:] > 0).all() and (leads[:context] <= 0).all()
        assert leads[context - 1] == 0


def test_rollout_length_equal_to_context_and_short_lengths():
    step = IndexStep()
    initial = torch.zeros(1, 2, 2, 2, 2)
    initial[:, 0, 1] = 1
    assert torch.equal(rollout(step, initial, window=5, context=2, overlap=1, length=2), initial)
    assert step.calls == []

    traj = rollout(step, initial, window=5, context=2, overlap=1, length=3)
    assert traj[0, 0, :, 0, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 5, "context": 5, "overlap": 1, "length": 10}, "context"),
        ({"window": 5, "context": 0, "overlap": 1, "length": 10}, "context"),
        ({"window": 5, "context": 1, "overlap": 5, "length": 10}, "overlap"),
        ({"window": 5, "context": 1, "overlap": 0, "length": 10}, "overlap"),
        ({"window": 5, "context": 3, "overlap": 1, "length": 2}, "length"),
        ({"window": 1, "context": 1, "overlap": 1, "length": 2}, "window"),
    ],
)
def test_rollout_validation(kwargs, message):
    initial = torch.zeros(1, 2, kwargs["context"] if kwargs["context"] > 0 else 1, 2, 2)
    with pytest.raises(ValueError, match=message):
        rollout(IndexStep(), initial, **kwargs)


def test_rollout_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="context = 2"):
        rollout(IndexStep(), torch.zeros(1, 2, 1, 2, 2), window=5, context=2, overlap=1, length=6)
    with pytest.raises(ValueError, match="theta"):
        rollout(
            IndexStep(),
            torch.zeros(2, 2, 1, 2, 2),
            torch.zeros(3, 1),
            window=5,
            context=1,
            overlap=1,
            length=6,
        )
    with pytest.raises(ValueError, match="returned shape"):
        rollout(
            lambda w, m, t, g: w[:, :, :-1],
            torch.zeros(1, 2, 1, 2, 2),
            window=5,
            context=1,
            overlap=1,
            length=6,
        )


# ----------------------------------------------------------------------------- seeding


def test_member_seed_is_stable_and_distinct():
    # A fixed value: the seed must not change across processes, machines or versions.
    assert (
        member_seed(0, 0, 0, 0)
        == int.from_bytes(__import__("hashlib").sha256(b"0,0,0,0").digest()[:8], "big") % 2**63
    )
    seeds = {member_seed(s, t, st, k) for s in (0, 1) for t in (0, 1, 2) for st in (0, 4) for k in range(4)}
    assert len(seeds) == 2 * 3 * 2 * 4
    assert all(0 <= s < 2**63 for s in seeds)

    a = member_generators(3, 1, 0, 4)
    b = member_generators(3, 1, 0, [2, 3])
    assert torch.equal(torch.randn(5, generator=a[2]), torch.randn(5, generator=b[0]))
    assert torch.equal(torch.randn(5, generator=a[3]), torch.randn(5, generator=b[1]))


@pytest.mark.parametrize(("members", "max_batch"), [(1, 1), (5, 2), (16, 16), (16, 5), (3, 10), (7, 1)])
def test_split_members_covers_each_member_once(members, max_batch):
    blocks = split_members(members, max_batch)
    flat = [k for block in blocks for k in block]
    assert flat == list(range(members))
    assert all(1 <= len(block) <= max_batch for block in blocks)
    assert len(blocks) == math.ceil(members / max_batch)


def test_split_members_validation():
    with pytest.raises(ValueError, match="member"):
        split_members(0, 2)
    with pytest.raises(ValueError, match="max_batch"):
        split_members(4, 0)


def noise_step(window, mask, theta, generator):
    """A network-free stochastic step: noise (one stream per row) plus the context mean."""

    noise = torch.stack([torch.randn(window.shape[1:], generator=g) for g in generator])
    known = mask[:, None, :, None, None]
    mean = (window * known).sum(2, keepdim=True) / known.sum(2, keepdim=True)
    return torch.where(known, window, mean + noise)


def test_member_streams_are_batch_independent_exactly():
    initial = torch.randn(1, 2, 2, 3, 3)
    kw = {"window": 4, "context": 2, "overlap": 1, "length": 11}
    full = ensemble_rollout(noise_step, initial, members=5, seed=7, trajectory=3, start=4, **kw)
    split = ensemble_rollout(noise_step, initial, members=5, seed=7, trajectory=3, start=4, max_batch=2, **kw)
    assert torch.equal(full, split)
    for k in range(5):
        alone = rollout(noise_step, initial, generator=member_generators(7, 3, 4, [k]), **kw)
        assert torch.equal(alone[0], full[k])
    assert not torch.equal(full[0], full[1])
    # A different (trajectory, start) gives different noise.
    other = ensemble_rollout(noise_step, initial, members=5, seed=7, trajectory=3, start=0, **kw)
    assert not torch.equal(other, full)


# ------------------------------------------------------------------- real tiny emulators


def _denoiser(channels, labels):
    torch.manual_seed(0)
    return ElucidatedDenoiser(build_backbone("smoke", in_channels=channels), label_features=labels)


def _solver(channels, labels):
    torch.manual_seed(1)
    return NeuralSolver(build_backbone("smoke", in_channels=channels), label_features=labels)


@pytest.mark.parametrize("kind", ["diffusion", "solver"])
def test_emulator_rollouts_shapes_and_member_independence(kind):
    channels, labels, members = 3, 2, 3
    model = _denoiser(channels, labels) if kind == "diffusion" else _solver(channels, labels)
    model.train()  # the adapters must evaluate in eval mode and restore the mode
    step = diffusion_step(model, steps=4) if kind == "diffusion" else solver_step(model)

    g = torch.Generator().manual_seed(0)
    initial = torch.randn(1, channels, 2, 4, 4, generator=g)
    theta = torch.randn(1, labels, generator=g)
    kw = {"window": 4, "context": 2, "overlap": 2, "length": 8}
    seeds = {"seed": 11, "trajectory": 2, "start": 0}

    full = ensemble_rollout(step, initial, theta, members=members, **seeds, **kw)
    assert full.shape == (members, channels, 8, 4, 4)
    assert torch.isfinite(full).all()
    assert torch.equal(full[:, :, :2], initial.expand(members, -1, -1, -1, -1))
    assert model.training

    for k in range(members):
        gens = member_generators(seeds["seed"], seeds["trajectory"], seeds["start"], [k])
        alone = rollout(step, initial, theta, generator=gens, **kw)
        # Same noise bit for bit; the network's arithmetic may round differently with the
        # batch size (BLAS blocking), hence a float32 round-off tolerance.
        torch.testing.assert_close(alone[0], full[k], rtol=1e-5, atol=1e-5)

    split = ensemble_rollout(step, initial, theta, members=members, max_batch=2, **seeds, **kw)
    torch.testing.assert_close(split, full, rtol=1e-5, atol=1e-5)

    spread = (full[0, :, 2:] - full[1, :, 2:]).abs().max()
    if kind == "diffusion":
        # Members differ by far more than the tolerance above (the test can fail).
        assert spread > 1e-2
        again = ensemble_rollout(step, initial, theta, members=members, **seeds, **kw)
        assert torch.equal(again, full)
    else:
        assert spread == 0  # deterministic: all members coincide


def test_diffusion_step_with_single_generator_and_global_rng():
    model = _denoiser(2, 0)
    step = diffusion_step(model, model.schedule, sampler="euler", steps=2)
    window = torch.zeros(2, 2, 3, 2, 2)
    mask = torch.tensor([[True, False, False]] * 2)
    a = step(window, mask, None, torch.Generator().manual_seed(5))
    b = step(window, mask, None, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a[:, :, :1], window[:, :, :1])
    torch.manual_seed(0)
    assert step(window, mask, None, None).shape == window.shape
    with pytest.raises(ValueError, match="generators"):
        step(window, mask, None, member_generators(0, 0, 0, 3))


# ---------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 100])
def test_decode_in_chunks_equals_decoding_at_once(chunk):
    torch.manual_seed(0)
    ae = build_autoencoder("smoke", pixel_channels=3, latent_channels=4)
    ae.train()
    z = torch.randn(2, 4, 7, 4, 4)

    x = decode_in_chunks(ae, z, chunk=chunk)
    assert x.shape == (2, 3, 7, 8, 8)
    assert ae.training

    ae.eval()
    with torch.no_grad():
        at_once = ae.decode(z.movedim(2, 1).flatten(0, 1)).unflatten(0, (2, 7)).movedim(1, 2)
        per_state = torch.stack([ae.decode(z[:, :, t]) for t in range(7)], dim=2)
    torch.testing.assert_close(x, at_once, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x, per_state, rtol=1e-5, atol=1e-6)
    # Time order is kept (a transposition bug would mix states).
    assert not torch.allclose(x[:, :, 0], x[:, :, 1])

    with pytest.raises(ValueError, match="chunk"):
        decode_in_chunks(ae, z, chunk=0)


def test_ensemble_rollout_takes_one_trajectory():
    kw = {
        "members": 2,
        "seed": 0,
        "trajectory": 0,
        "start": 0,
        "window": 3,
        "context": 1,
        "overlap": 1,
        "length": 4,
    }
    with pytest.raises(ValueError, match="one trajectory"):
        ensemble_rollout(noise_step, torch.zeros(2, 2, 1, 2, 2), **kw)
    with pytest.raises(ValueError, match="one trajectory"):
        ensemble_rollout(noise_step, torch.zeros(1, 2, 1, 2, 2), torch.zeros(3), **kw)
    assert ensemble_rollout(noise_step, torch.zeros(1, 2, 1, 2, 2), **kw).shape == (2, 2, 4, 2, 2)


@pytest.mark.parametrize(
    ("start", "context", "stride", "origin"),
    [
        (32, 1, 4, 8),  # Rayleigh–Bénard's start 32 at Δ = 4: the initial state is strided state 8
        (32, 3, 4, 6),  # ... with context states 24, 28, 32
        (4, 3, 1, 2),  # turbulence_gravity_cooling: steps 2, 3, 4
        (0, 3, 4, 0),  # Euler from the first state: the context begins there
        (4, 3, 4, 0),  # not enough states before step 4: moved forward to the first state
    ],
)
def test_every_context_predicts_from_the_same_initial_state(start, context, stride, origin):
    assert rollout_origin(start, context, stride) == origin
    leads = lead_times(10, context, stride)
    if start >= (context - 1) * stride:  # the last context state is the start state
        assert (origin + context - 1) * stride == start and leads[context - 1] == 0


def test_a_start_off_the_strided_grid_is_refused():
    with pytest.raises(ValueError, match="not a multiple of the stride 4"):
        rollout_origin(6, 1, 4)
