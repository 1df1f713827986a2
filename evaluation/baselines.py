r"""Baselines every study scores beside its models, on the same scored set.

A number in a study means little without what a trivial method scores on the same states:

* **Persistence** — the rollout's last context state (its initial state, lead 0) repeated
  at every lead time, :math:`\hat u_\ell = u_0`. An emulator that does not beat it has not
  learned the dynamics; on data whose states barely change it is a hard baseline, on
  fronts that move it is easy (:func:`persistence_vrmse`).
* **PCA of the latent's size** — the best linear code of as many numbers as the
  autoencoder's latent holds: the :math:`k` leading principal components of standardized
  train states, :math:`\hat x = \mu + V_k V_k^\top (x - \mu)`, in the standardized space the
  autoencoder reads (:class:`PCABasis`). An autoencoder no better than it gains nothing from
  being non-linear, and no finding about compression should rest on it.

Both are scored with the evaluation's own VRMSE (:func:`~lolaray.evaluation.metrics.vrmse`,
physical units, the field mean), per lead time, so they aggregate by horizon exactly as the
models do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lolaray.evaluation.metrics import aggregate_by_horizon, vrmse
from lolaray.platform.data import DatasetInfo, WellWindows

__all__ = [
    "PCA_FIT_STATES",
    "PCABasis",
    "fit_pca",
    "latent_numbers",
    "pca_baseline",
    "pca_vrmse",
    "persistence_vrmse",
    "train_states",
]

#: Train states the PCA baseline is fitted on, drawn evenly over the train trajectories: more
#: than the largest latent of a 32² demo holds (÷5: 1,024 numbers), and an eigendecomposition
#: of at most 4096² (~8 s on 2 cores).
PCA_FIT_STATES = 4096


def persistence_vrmse(truth: Tensor, leads: Tensor, *, spatial_dims: int, eps: float) -> Tensor:
    r"""VRMSE of persistence at each state of one rollout, field mean.

    :param truth: the true states in physical units ``(C, L, *spatial)``, one of which has lead 0.
    :param leads: ``(L,)`` lead times (:func:`~lolaray.evaluation.rollout.lead_times`).
    :param spatial_dims: trailing spatial axes.
    :param eps: the VRMSE's ε on the spatial variance.
    :returns: ``(L,)``: VRMSE of :math:`u_0` against each :math:`u_\ell` (0 at lead 0).
    :raises ValueError: no state has lead 0.
    """
    initial = (leads == 0).nonzero().flatten()
    if initial.numel() != 1:
        raise ValueError(f"persistence needs exactly one state of lead 0, got leads {leads.tolist()}")
    states = truth.movedim(1, 0).double()  # (L, C, *spatial)
    repeated = states[initial].expand_as(states)
    return vrmse(repeated, states, spatial_dims=spatial_dims, eps=eps).mean(-1)


@dataclass(frozen=True)
class PCABasis:
    r"""Principal components of standardized states, flattened: ``mean`` :math:`(D,)` and
    ``components`` :math:`(m, D)` (rows orthonormal, by decreasing variance)."""

    mean: Tensor
    components: Tensor

    def reconstruct(self, x: Tensor, k: int) -> Tensor:
        r""":math:`\mu + V_k V_k^\top (x - \mu)` of states ``(N, *state)``, same shape.

        :raises ValueError: ``k`` above the number of fitted components.
        """
        if not 1 <= k <= self.components.shape[0]:
            raise ValueError(
                f"PCA with {k} components: the basis holds {self.components.shape[0]} (fit it on more states)"
            )
        flat = x.reshape(x.shape[0], -1).double() - self.mean
        v = self.components[:k]
        return (self.mean + (flat @ v.T) @ v).reshape(x.shape)


def fit_pca(states: Tensor, *, components: int) -> PCABasis:
    """The leading ``components`` principal components of ``states`` ``(N, *state)``.

    The eigenvectors of the smaller of the two Gram matrices — :math:`X^\top X` (D × D) or
    :math:`X X^\top` (N × N) of the centred states — in float32, then orthonormalized in
    float64: an exact SVD of 4096 × 5120 takes ~100 s on 2 cores, this ~8 s.

    :raises ValueError: more components than states or dimensions.
    """
    flat = states.reshape(states.shape[0], -1).double()
    n, d = flat.shape
    if not 1 <= components <= min(n, d):
        raise ValueError(
            f"{components} principal components from {n} states of {d} numbers: at most {min(n, d)}"
        )
    mean = flat.mean(0)
    centred = flat - mean
    low = centred.float()
    if n >= d:
        _, vectors = torch.linalg.eigh(low.T @ low)  # ascending eigenvalues
        basis = vectors[:, -components:].flip(-1).double()  # (D, k)
    else:
        _, vectors = torch.linalg.eigh(low @ low.T)
        basis = centred.T @ vectors[:, -components:].flip(-1).double()  # (D, k), unnormalized
    q, r = torch.linalg.qr(basis)
    q = q * torch.sign(torch.diagonal(r))  # keep each component's direction
    return PCABasis(mean=mean, components=q.T.contiguous())


def train_states(windows, *, max_states: int, seed: int = 0) -> Tensor:
    """Up to ``max_states`` standardized states ``(N, C, *spatial)`` of a split, drawn evenly
    over its trajectories (``windows``: a :class:`~lolaray.platform.data.WellWindows` of whole
    trajectories, ``length=None``) with a fixed seed."""
    rng = np.random.default_rng(seed)
    n = len(windows)
    per_trajectory = max(1, max_states // max(n, 1))
    chosen = []
    for t in rng.permutation(n)[:max_states]:
        x = windows[int(t)]["x"]  # (C, T, *spatial)
        picks = rng.choice(x.shape[1], size=min(per_trajectory, x.shape[1]), replace=False)
        chosen.append(x[:, np.sort(picks)].movedim(1, 0))
    return torch.cat(chosen)[:max_states]


def pca_vrmse(basis: PCABasis, x: Tensor, k: int, standardizer, *, spatial_dims: int, eps: float) -> Tensor:
    """VRMSE of the ``k``-component PCA reconstruction of one trajectory, per state, field mean.

    :param x: standardized states ``(C, T, *spatial)`` (as the autoencoder reads them).
    :param standardizer: the :class:`~lolaray.platform.preprocessing.Standardizer` of ``x``;
        both sides are scored in physical units.
    :returns: ``(T,)``.
    """
    states = x.movedim(1, 0)  # (T, C, *spatial)
    recon = basis.reconstruct(states, k)
    u = standardizer.inverse(states.double(), channel_dim=1)
    v = standardizer.inverse(recon, channel_dim=1)
    return vrmse(v, u, spatial_dims=spatial_dims, eps=eps).mean(-1)


def latent_numbers(manifest: dict) -> int:
    """The numbers an autoencoder's latent state holds for the predicted fields — its latent
    shape less the known (conditioning) channels, which are given, not coded."""
    channels, *spatial = (int(v) for v in manifest["latent_shape"])
    return (channels - int(manifest.get("known_channels", 0) or 0)) * int(np.prod(spatial))


# (dataset fingerprint, standardizer statistics, components) -> basis: the evaluations of a
# trial share their autoencoder's size, so a trial process fits its basis once.
_BASES: dict[tuple, PCABasis] = {}


def pca_baseline(
    info: DatasetInfo,
    standardizer,
    trajectories: list[int],
    *,
    components: int,
    horizons,
    rate: float,
    eps: float,
    fit_states: int = PCA_FIT_STATES,
    seed: int = 0,
) -> tuple[list[dict], dict[str, float], int]:
    """PCA of ``components`` numbers, fitted on standardized train states, scored on the
    ``trajectories`` of the test split like the autoencoder's reconstruction (state ``i`` of a
    trajectory has lead ``i``).

    :param standardizer: the autoencoder's (states are standardized as it reads them).
    :param rate: the compression rate the rows are labelled with (the autoencoder's).
    :returns: per-trajectory rows (method ``"pca"``, ``vrmse/<horizon>``), the mean VRMSE by
        horizon, and the components used (fewer than asked only when the train split has
        fewer states).
    """
    train = WellWindows(info, "train", length=None, standardizer=standardizer)
    key = (info.fingerprint(), standardizer.to_dict().__repr__(), components, fit_states, seed)
    if key not in _BASES:
        states = train_states(train, max_states=fit_states, seed=seed)
        _BASES[key] = fit_pca(states, components=min(components, *states.reshape(len(states), -1).shape))
    basis = _BASES[key]
    k = basis.components.shape[0]
    test = WellWindows(info, "test", length=None, standardizer=standardizer)
    rows, by_horizon = [], {}
    for t in trajectories:
        per_state = pca_vrmse(basis, test[t]["x"], k, standardizer, spatial_dims=info.n_spatial_dims, eps=eps)
        row = {
            "method": "pca",
            "compression": rate,
            "reference": "absolute",
            "context": "all",
            "trajectory": t,
            "start": 0,
        }
        for label, value in aggregate_by_horizon(
            per_state, torch.arange(per_state.numel()), horizons
        ).items():
            row[f"vrmse/{label}"] = float(value)
            by_horizon.setdefault(label, []).append(float(value))
        rows.append(row)
    return rows, {label: float(np.nanmean(v)) for label, v in by_horizon.items()}, k
