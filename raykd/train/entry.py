"""What a Ray Train worker of a raykd run calls: the training loop, imported there.

A run's trainer holds this function, not ``raykd.train.loop.train_worker`` itself, so that whoever
builds the trainer (a search's trial actor, the driver) does not import the loop's torch and mmdet
only to refer to it; the worker imports them as it starts training."""

from __future__ import annotations

from typing import Any


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    from raykd.train.loop import train_worker as train

    return train(config)
