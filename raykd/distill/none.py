"""Student-only training: the baseline every KD number is compared with."""

from __future__ import annotations

from torch import Tensor

from raykd.distill.base import Distiller, KDStep


class NoDistillation(Distiller, name="none"):
    uses_teacher = False

    def losses(self, step: KDStep) -> dict[str, Tensor]:
        return {}
