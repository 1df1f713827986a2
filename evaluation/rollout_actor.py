r"""The Ray Data rollout actor of the evaluation stage and the pipeline that runs it.

:func:`run_rollouts` sends the work items ``(trajectory, start state s, context c, member
block)`` through ``ray.data.from_items → map_batches(RolloutActor, ActorPoolStrategy)``. A
:class:`RolloutActor` loads the autoencoder, the emulator and the standardizer once; per
item it rolls out its block of members from the true states ``s .. s+c-1`` (encoded for
latent emulators), member ``k`` seeded by (seed, trajectory, s, k) whatever the split,
decodes in chunks, returns to physical units, and returns **sufficient statistics** of the
block (:class:`~lolaray.evaluation.ensemble_statistics.EnsembleStatistics`: :math:`K`,
:math:`\sum_k v_k`, :math:`\sum_k v_k^2`, :math:`\sum_k` member power spectra; and the
per-member SEMD / Wasserstein sums against the truth :math:`u = x` and the auto-encoded
truth :math:`u_{ae} = D(E(x))`), the block size and the rollout wall time (decoding
included, device synchronized, the actor's first rollout flagged as warm-up). When the
block is the whole ensemble the actor also scores it (fair CRPS, coverage, rank histogram:
:func:`~lolaray.evaluation.metrics.ensemble_scores`); otherwise it writes the block's
members to a scratch folder on the store, to be scored by a second pass
(:mod:`~lolaray.evaluation.split_ensemble`: those scores need all members at a point at
once, but no process holds more than a chunk). The "primary" item of each trajectory
(first start, first context, block of member 0) also returns the truth, :math:`u_{ae}`,
the autoencoder reconstruction error of every state of the trajectory (computed in the
actor) and, for the first trajectory, member 0's trajectory (snapshot figure) and the
first members (animation).
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import numpy as np
import ray.data
import torch

from lolaray.evaluation.distributions import sliced_emd, wasserstein_1d
from lolaray.evaluation.emulator_steps import (
    diffusion_step,
    guided_diffusion_step,
    observe_states,
    solver_step,
)
from lolaray.evaluation.ensemble_statistics import EnsembleStatistics
from lolaray.evaluation.metrics import VRMSE_EPS, ensemble_scores, vrmse
from lolaray.evaluation.rollout import decode_in_chunks, member_generators, member_seed, rollout
from lolaray.evaluation.split_ensemble import write_block
from lolaray.platform.data import DatasetInfo, WellWindows
from lolaray.platform.preprocessing import Standardizer
from lolaray.trainers.guidance import build_operator
from lolaray.trainers.snapshots import load_autoencoder, load_emulator

__all__ = ["ANIMATED_MEMBERS", "RolloutActor", "run_rollouts"]

#: Members shown in the animation (and returned by the actor for it).
ANIMATED_MEMBERS = 3


def _encode_states(
    model, states: torch.Tensor, chunk: int, known: torch.Tensor | None = None
) -> torch.Tensor:
    """``(C, L, *spatial)`` standardized states (and their known channels ``(K, L, *spatial)``)
    → latent states ``(C_lat + K, L, *latent)``."""
    rows = states.movedim(1, 0)  # (L, C, ...)
    given = [None] * len(rows) if known is None else known.movedim(1, 0)
    with torch.no_grad():
        z = torch.cat(
            [
                model.encode(rows[i : i + chunk], None if known is None else given[i : i + chunk])
                for i in range(0, rows.shape[0], chunk)
            ]
        )
    return z.movedim(0, 1)


class RolloutActor:
    """Ray Data actor: rolls out blocks of ensemble members and returns their statistics.

    Built once per actor with the artifact folders; called with batches of one work item
    (``trajectory``, ``context``, ``start`` and ``stop`` of the member block, ``primary``,
    ``snapshot``). Returns ``{"key": ..., "result": pickled dict of numpy arrays}``.
    """

    def __init__(
        self,
        *,
        emulator_dir: str,
        autoencoder_dir: str | None,
        info: DatasetInfo,
        standardizer: dict,
        seed: int,
        sampler: str,
        steps: int,
        chunk: int = 4,
        guidance: dict | None = None,
        vrmse_eps: float = VRMSE_EPS["lola"],
        scratch: str | None = None,
        scored_field: str | None = None,
        threads: int | None = None,
    ):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if threads is not None and self.device.type == "cpu":  # the study's schedule; else Ray's 1
            torch.set_num_threads(threads)
        self.emulator, self.config = load_emulator(emulator_dir)
        self.emulator.to(self.device)
        self.autoencoder = None
        if autoencoder_dir is not None:
            self.autoencoder, _ = load_autoencoder(autoencoder_dir)
            self.autoencoder.to(self.device)
        self.standardizer = Standardizer.from_dict(standardizer)
        self.windows = WellWindows(info, "test", length=None, standardizer=self.standardizer)
        self.field_names = list(info.field_names)
        # The emulators' states end with the known channels (given, never predicted).
        self.known_channels = info.n_known
        self.spatial_dims = info.n_spatial_dims
        self.seed, self.chunk = seed, chunk
        self.vrmse_eps = vrmse_eps
        self.guidance = guidance
        self.scratch = scratch  # where the blocks of a split ensemble go to be scored
        # The channel whose sliced EMD is taken (2-D only: the slices are of the plane).
        self.semd_channel = None
        if scored_field is not None and self.spatial_dims == 2:
            self.semd_channel = self.field_names.index(scored_field)
        # The first rollout of an actor pays for lazy initialisation (kernels, allocator,
        # compilation): its time is flagged as warm-up and left out of the time per state.
        self._warm = False
        self.sampler, self.steps = sampler, steps
        if self.config.kind == "diffusion":
            self.step = diffusion_step(self.emulator, sampler=sampler, steps=steps)
        else:
            self.step = solver_step(self.emulator)
        self._cache: tuple[int, dict] | None = None

    def _trajectory(self, index: int) -> dict:
        # Consecutive items usually share a trajectory: keep the last one.
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        item = self.windows[index]
        x = item["x"]  # (C, T, *spatial), standardized
        stride = self.config.stride
        strided = x[:, ::stride].contiguous()
        known = item.get("known")  # (K, T, *spatial), standardized
        known = None if known is None else known[:, ::stride].contiguous()
        data = {
            "x": x,
            "strided": strided,
            "theta": item["theta"],
            "known": known,
            "x_known": item.get("known"),
        }
        data["truth"] = self.standardizer.inverse(strided.double(), channel_dim=0)
        # What the pixel emulator rolls out: the states, and the known channels as their last ones.
        data["states"] = strided if known is None else torch.cat([strided, known])
        if self.autoencoder is not None:
            z = _encode_states(self.autoencoder, strided.to(self.device), self.chunk, _to(known, self.device))
            data["z"] = z
            u_ae = decode_in_chunks(self.autoencoder, z[None], self.chunk)[0].cpu()
            data["truth_ae"] = self.standardizer.inverse(u_ae.double(), channel_dim=0)
        self._cache = (index, data)
        return data

    def _reconstruction(self, x: torch.Tensor, known: torch.Tensor | None) -> np.ndarray:
        """VRMSE of D(E(x)) against x, physical units, every state: ``(T, C)``."""
        z = _encode_states(self.autoencoder, x.to(self.device), self.chunk, _to(known, self.device))
        x_ae = decode_in_chunks(self.autoencoder, z[None], self.chunk)[0].cpu()
        u = self.standardizer.inverse(x.double(), channel_dim=0).movedim(1, 0)
        v = self.standardizer.inverse(x_ae.double(), channel_dim=0).movedim(1, 0)
        return vrmse(v, u, spatial_dims=self.spatial_dims, eps=self.vrmse_eps).numpy()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _block(
        self, trajectory: int, origin: int, context: int, start: int, stop: int
    ) -> tuple[torch.Tensor, float]:
        """Members ``start..stop-1`` of the rollout whose first context state is state
        ``origin`` of the (strided) trajectory: physical fields ``(K, C, L - origin, *spatial)``
        float64, and the seconds taken (device synchronized, decoding included)."""
        data = self._trajectory(trajectory)
        length = data["strided"].shape[1] - origin
        block = range(start, stop)
        n = len(block)
        self._synchronize()
        began = time.perf_counter()
        # The true trajectory in the emulator's space: its first states are the context, and
        # its known channels (given, never predicted) are every state's.
        true = (
            data["z"][:, origin:]
            if self.autoencoder is not None
            else data["states"][:, origin:].to(self.device)
        )
        initial = true[:, :context]
        known = true[None, true.shape[0] - self.known_channels :] if self.known_channels else None
        theta = data["theta"].to(self.device)
        step = self.step if self.guidance is None else self._guided_step(trajectory, origin, data, n)
        states = rollout(
            step,
            initial.expand(n, *initial.shape).contiguous(),
            theta.expand(n, *theta.shape).contiguous(),
            window=self.config.window,
            context=context,
            overlap=context,
            length=length,
            generator=member_generators(self.seed, trajectory, origin, block, device="cpu"),
            known=None if known is None else known.expand(n, *known.shape[1:]),
        )
        if self.autoencoder is not None:
            states = decode_in_chunks(self.autoencoder, states, self.chunk)
        else:
            states = states[:, : len(self.field_names)]  # the known channels are not predictions
        self._synchronize()
        seconds = time.perf_counter() - began
        members = self.standardizer.inverse(states.double().cpu(), channel_dim=1)
        return members, seconds

    def _guided_step(self, trajectory: int, origin: int, data: dict, members: int):
        """The MMPS-guided step of one rollout: observations of its standardized truth from
        state ``origin`` on, with noise σ_y drawn once per (seed, trajectory, origin) — the
        same for every member (origin 0 draws the noise it always did)."""
        g = self.guidance
        strided = data["strided"][None, :, origin:].to(self.device)  # (1, C, L - origin, *spatial)
        operator = build_operator(g["operator"], g["factor"], strided.shape[3:])
        observations = observe_states(operator, strided)
        noise_seed = member_seed(self.seed, trajectory, origin, -1)  # member -1: the observation
        noise = torch.randn(
            observations.shape, generator=torch.Generator().manual_seed(noise_seed), dtype=observations.dtype
        )
        observations = observations + g["sigma_y"] * noise.to(observations.device)
        return guided_diffusion_step(
            self.emulator,
            observations.expand(members, *observations.shape[1:]),
            operator,
            decoder=self.autoencoder.decode if self.autoencoder is not None else self._pixel_decoder(),
            var_y=g["var_y"],
            iterations=g["iterations"],
            solver=g["solver"],
            sampler=self.sampler,
            steps=self.steps,
        )

    def _pixel_decoder(self):
        """What guidance observes of a pixel emulator's states: the predicted fields, without
        the known channels (``None``: the states themselves)."""
        channels = len(self.field_names)
        return (lambda states: states[:, :channels]) if self.known_channels else None

    def _stats(self, members: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
        """SEMD and Wasserstein sums of the members against one reference."""
        k = members.shape[0]
        out = {}
        # (K, C, L, ...) -> (K, L, C, ...): metrics take channels just before space.
        v, u = members.movedim(2, 1), truth.movedim(1, 0)
        out["wasserstein"] = (wasserstein_1d(v, u, spatial_dims=self.spatial_dims) * k).numpy()
        if self.semd_channel is not None:
            d = self.semd_channel
            out["semd"] = (sliced_emd(members[:, d], truth[d], seed=self.seed) * k).numpy()
        return out

    def evaluate_item(self, item: dict) -> dict[str, Any]:
        trajectory, context, origin = int(item["trajectory"]), int(item["context"]), int(item["origin"])
        start, stop = int(item["start"]), int(item["stop"])
        members, seconds = self._block(trajectory, origin, context, start, stop)
        warmup, self._warm = not self._warm, True
        data = self._trajectory(trajectory)
        truths = {"absolute": data["truth"][:, origin:]}
        if self.autoencoder is not None:
            truths["relative"] = data["truth_ae"][:, origin:]
        # Metrics take (..., C, *spatial): members (K, L, C, ...), truths (L, C, ...).
        by_lead = members.movedim(2, 1)
        result: dict[str, Any] = {
            "count": members.shape[0],
            "seconds": seconds,
            "warmup": warmup,
            "moments": EnsembleStatistics(spatial_dims=self.spatial_dims).add(by_lead).to_dict(),
        }
        for ref, truth in truths.items():
            result[ref] = self._stats(members, truth)
        if start == 0 and stop == int(item["members"]):
            # The whole ensemble is here: score it now; otherwise the block waits on the store.
            result["scores"] = {
                ref: _numpy(ensemble_scores(by_lead, truth.movedim(1, 0), spatial_dims=self.spatial_dims))
                for ref, truth in truths.items()
            }
        else:
            write_block(self.scratch, (trajectory, origin, context), start, by_lead.numpy())
        if item["primary"]:
            result["truth"] = data["truth"].numpy()
            if self.autoencoder is not None:
                result["truth_ae"] = data["truth_ae"].numpy()
                result["recon_vrmse"] = self._reconstruction(data["x"], data["x_known"])
        if item["snapshot"] and start == 0:
            result["member0"] = members[0].float().numpy()
            result["animated"] = members[:ANIMATED_MEMBERS].float().numpy()
        return result

    def __call__(self, batch: dict) -> dict:
        keys, results = [], []
        for i in range(len(batch["trajectory"])):
            item = {k: batch[k][i] for k in batch}
            keys.append(_item_key(item))
            results.append(pickle.dumps(self.evaluate_item(item)))
        return {"key": np.asarray(keys), "result": np.asarray(results, dtype=object)}


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in tensors.items()}


def _item_key(item: dict) -> str:
    """``"trajectory/origin/context/start"`` of a work item (``start``: its first member)."""
    return "/".join(str(int(item[k])) for k in ("trajectory", "origin", "context", "start"))


def run_rollouts(
    items: list[dict], actor_kwargs: dict, *, actors: int, actor_gpus: float | None
) -> dict[tuple[int, int, int, int], dict]:
    """Runs the work items through the actor pool; ``(trajectory, origin, context, start)`` → stats.

    ``actors=0`` runs them in this process instead, through the same :class:`RolloutActor`
    (one a study makes on one machine, where starting an actor -- a fresh Python importing
    torch -- would cost more than a small evaluation's rollouts, on the same cores anyway);
    the caller's torch threads are restored afterwards.
    """
    if actors == 0:
        return _rollouts_in_process(items, actor_kwargs)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        RolloutActor,
        fn_constructor_kwargs=actor_kwargs,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=actor_gpus or None,
        num_cpus=None if actor_gpus else 0.5,
    )
    out = {}
    for row in ds.take_all():
        out[tuple(int(s) for s in str(row["key"]).split("/"))] = pickle.loads(row["result"])
    if len(out) != len(items):
        raise RuntimeError(f"the rollout pipeline returned {len(out)} results for {len(items)} work items")
    return out


def _rollouts_in_process(items: list[dict], actor_kwargs: dict) -> dict[tuple[int, int, int, int], dict]:
    """:func:`run_rollouts` in this process: each item as the one row of a batch, as Ray Data
    hands it to an actor (``batch_size=1``, numpy format), so both paths run the same code."""
    caller_threads = torch.get_num_threads()
    try:
        actor = RolloutActor(**actor_kwargs)
        out = {}
        for item in items:
            row = actor({key: np.asarray([value]) for key, value in item.items()})
            out[tuple(int(s) for s in str(row["key"][0]).split("/"))] = pickle.loads(row["result"][0])
        return out
    finally:
        torch.set_num_threads(caller_threads)
