"""The pieces a distillation policy combines: transforms of FPN maps and distances between them.

Every function is pure and works on (N, C, H, W) maps, the student's already widened to the
teacher's channels. A policy's feature term for one level is ``distance(T(S), T(F_t))``:

Transforms ``T``:

- ``identity``: the map itself.
- ``channel_softmax`` (CWD, Shu et al. ICCV 2021, its channel distribution φ): per channel, a
  softmax over the H·W positions of ``x / τ``; every channel becomes a distribution over space.
- ``spatial_attention`` (attention transfer, Zagoruyko & Komodakis ICLR 2017, F^p_sum with p = 2):
  ``a = mean_c x_c²`` (N, 1, H, W), L2-normalised over space per image, ``Q = a / ‖a‖₂``: where
  the map is active, whatever its channel count (AT sums over channels; the mean differs by a
  constant that the normalisation removes).
- ``channel_standardize`` (PKD, Cao et al. NeurIPS 2022, the standardised features behind its
  Pearson-correlation loss): per channel, zero mean and unit standard deviation over the batch and
  the positions together, ``(x − μ_c) / (σ_c + 1e-6)`` with the unbiased σ, as the official ``norm``
  (mmdet ``models/losses/pkd_loss.py``, mmrazor ``PKDLoss``) computes it.

Distances (means over the elements, but for ``kl``, which sums over each distribution as CWD does):

- ``mse``: mean of ``(s − t)²`` over every element. PKD's loss is half of it
  (``F.mse_loss(norm(S), norm(T)) / 2``): PKD with ``loss_weight`` w is ``feat_weight`` w / 2 here.
- ``l1``: mean of ``|s − t|``.
- ``cosine``: per map (each image's channel, over its H·W positions), ``1 − cos(s, t)``, averaged
  over images and channels. Per map rather than per position so that one-channel maps
  (``spatial_attention``) still compare their spatial pattern (per position a one-channel cosine
  is only a sign).
- ``kl``: ``τ² · mean_{n,c} Σ_hw p_t log(p_t / p_s)``: KL(teacher ‖ student) between spatial
  distributions, summed over positions, averaged over channels and images, times τ² (CWD's loss, as
  mmrazor ``ChannelWiseDivergence``: ``Σ ... · τ² / (N·C)``). Every transform is made a distribution
  by a spatial softmax of its output over ``τ``; ``channel_softmax`` already is that softmax, so it is
  taken once (``channel_softmax`` + ``kl`` is CWD, and equals ``identity`` + ``kl``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TransformName = Literal["identity", "channel_softmax", "spatial_attention", "channel_standardize"]
DistanceName = Literal["mse", "l1", "kl", "cosine"]

# The official PKD norm's eps on the standard deviation.
PKD_EPS = 1e-6


def spatial_log_softmax(x: Tensor, tau: float) -> Tensor:
    """log softmax over the positions of each (image, channel) map of ``x / τ``: (N, C, H·W)."""
    return F.log_softmax(x.flatten(2) / tau, dim=-1)


def channel_softmax(x: Tensor, tau: float) -> Tensor:
    """CWD's per-channel spatial distribution, shaped like ``x``."""
    return spatial_log_softmax(x, tau).exp().view_as(x)


def spatial_attention(x: Tensor) -> Tensor:
    """AT's attention map ``mean_c x_c²`` L2-normalised over the positions: (N, 1, H, W)."""
    a = x.pow(2).mean(dim=1, keepdim=True)
    return F.normalize(a.flatten(1), dim=1).view_as(a)


def channel_standardize(x: Tensor) -> Tensor:
    """PKD's ``norm``: each channel standardised over batch and positions (unbiased σ + 1e-6)."""
    std, mean = torch.std_mean(x, dim=(0, 2, 3), keepdim=True, correction=1)
    return (x - mean) / (std + PKD_EPS)


def transform(name: TransformName, x: Tensor, tau: float) -> Tensor:
    if name == "channel_softmax":
        return channel_softmax(x, tau)
    if name == "spatial_attention":
        return spatial_attention(x)
    if name == "channel_standardize":
        return channel_standardize(x)
    return x


def cosine_distance(s: Tensor, t: Tensor) -> Tensor:
    """Mean over (image, channel) maps of ``1 − cos`` between the maps' H·W vectors."""
    return (1 - F.cosine_similarity(s.flatten(2), t.flatten(2), dim=-1)).mean()


def kl_divergence(log_p_s: Tensor, log_p_t: Tensor, tau: float) -> Tensor:
    """``τ² · mean_{n,c} Σ_hw p_t (log p_t − log p_s)`` for (N, C, H·W) log-distributions (CWD)."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * tau**2


def log_distribution(name: TransformName, x: Tensor, tau: float) -> Tensor:
    """What ``kl`` compares: the log of a spatial softmax over ``τ`` of the transformed map.

    ``channel_softmax`` is that softmax already; its log is taken from ``x`` directly, which is the
    same value without the underflow of ``log(softmax)``.
    """
    source = x if name == "channel_softmax" else transform(name, x, tau)
    return spatial_log_softmax(source, tau)


def feature_distance(student: Tensor, teacher: Tensor, name: TransformName, distance: DistanceName, tau: float) -> Tensor:
    """One level's ``distance(T(student), T(teacher))``, defined for every transform × distance."""
    if distance == "kl":
        return kl_divergence(log_distribution(name, student, tau), log_distribution(name, teacher, tau), tau)
    s, t = transform(name, student, tau), transform(name, teacher, tau)
    if distance == "mse":
        return F.mse_loss(s, t)
    if distance == "l1":
        return F.l1_loss(s, t)
    return cosine_distance(s, t)
