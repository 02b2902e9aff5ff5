"""Seeded subsets of a dataset's images, for search trials on big data (``fidelity.train_fraction``,
``fidelity.val_images``).

The choice depends only on the image ids and the seed, so every trial of a search (and a resumed
one) trains and validates on the same images, and their scores compare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TRAIN_STREAM, VAL_STREAM = 0, 1  # train and val draw from separate streams of the same seed


def subset_size(total: int, fraction: float) -> int:
    """Images a train fraction keeps: at least one."""
    return max(1, int(total * fraction))


def choose_ids(image_ids: Sequence[int], count: int, seed: int, stream: int) -> list[int]:
    """``count`` of ``image_ids`` (all if fewer), chosen by ``(seed, stream)`` alone, sorted."""
    ids = sorted(int(i) for i in image_ids)
    if count >= len(ids):
        return ids
    rng = np.random.default_rng([seed, stream])
    return sorted(int(i) for i in rng.choice(ids, size=count, replace=False))


def keep_images(dataset, count: int, seed: int, stream: int) -> list[int]:
    """Shrink an mmdet dataset in place to a seeded choice of ``count`` of its images; their ids."""
    ids = [int(dataset.get_data_info(i)["img_id"]) for i in range(len(dataset))]
    chosen = choose_ids(ids, count, seed, stream)
    wanted = set(chosen)
    dataset.get_subset_([i for i, img_id in enumerate(ids) if img_id in wanted])
    return chosen
