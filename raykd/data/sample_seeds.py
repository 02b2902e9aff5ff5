"""Loader processes that draw the same random transforms whatever happened before.

A DataLoader's worker processes seed themselves once, when they start, from a number the loader draws
from the parent's torch stream; with ``persistent_workers`` they then keep their streams from epoch to
epoch. A run resumed from an epoch checkpoint starts new workers, so its later epochs would flip and
crop other images than the run that was not interrupted. Here every sample's random transforms are
seeded from (run seed, epoch, image index) instead: the sampler hands each index to the worker with its
epoch, and the dataset seeds Python's, NumPy's and torch's CPU streams before running the pipeline. A
sample's augmentation then depends on nothing else: not on resumes, nor on which worker loads it.

In-process loading (no worker processes, the demo's) keeps drawing from the run's own streams, which
the run's checkpoints restore (``raykd.train.rng``): seeding there would change the demo's numbers.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch (NumPy's SeedSequence mixes the three, so nearby
    triples give unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochTaggedSampler(DistributedSampler):
    """``DistributedSampler`` whose indices travel as ``(epoch, index)`` (the epoch of ``set_epoch``)."""

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in super().__iter__())


class SeededSamples(Dataset):
    """``dataset[(epoch, index)]``: ``dataset[index]`` with every random stream seeded by
    ``sample_seed(seed, epoch, index)`` first. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s)
        # The CPU generator alone: a loader process draws nothing on a GPU, and torch.manual_seed, which
        # also visits every device kind, costs ~94 µs a sample (the demo's pipeline takes ~0.7 ms an image).
        torch.default_generator.manual_seed(s)
        return self.dataset[index]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.dataset, name)
