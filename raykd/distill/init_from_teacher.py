"""Start a student from its teacher's weights where the two have the same shapes.

MGD's released mmdet code (yzd-v/MGD ``det/mmdet/distillation/distillers/detection_distiller.py``,
``DetectionDistiller.__init__`` with ``init_student=True``; MTPD's copy of that file keeps it) loads
every teacher checkpoint entry outside ``backbone.`` into the student with mmcv's non-strict
``load_state_dict``, which skips names the student lacks and tensors whose shapes differ: a student
with another backbone starts with the teacher's neck and heads.

Not reproduced: MTPD's distiller also maps a Cascade R-CNN teacher's first stage
(``roi_head.bbox_head.0.*``, class-agnostic box regression repeated for COCO's 80 classes) onto a
Mask R-CNN student's single head; here those names do not match and are left to the student's init.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, skip_prefixes: tuple[str, ...] = ("backbone.",)) -> list[str]:
    """Copy the teacher's parameters and buffers into the student where name and shape match, except
    those under ``skip_prefixes``. Returns the names copied (the rest keep the student's own init)."""
    target = student.state_dict()
    copied = []
    for name, value in teacher.state_dict().items():
        if name.startswith(skip_prefixes) or name not in target or target[name].shape != value.shape:
            continue
        target[name].copy_(value.to(target[name].device, target[name].dtype))
        copied.append(name)
    return copied
