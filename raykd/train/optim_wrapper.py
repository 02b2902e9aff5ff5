"""The optimisation half of a training step, without Ray: optimizers and their parameter groups,
the LR schedule's factor, AMP loss scaling, gradient clipping and stepping (mmengine's
``OptimWrapper`` is the model).

One step, in this order (every run's numbers depend on it)::

    wrapper.set_lr_factor(factor)   # before the forward
    ...forward, loss...
    wrapper.update_params(loss)     # zero_grad, (scaled) backward, unscale + clip, step, scaler update
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from raykd.config.experiment import Optim

OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}  # built in this order


class HasParamGroups(Protocol):
    def param_groups(self, base: dict[str, float]) -> list[dict[str, Any]]: ...


def build_optimizers(student: nn.Module, method: HasParamGroups, optim: Optim) -> list[torch.optim.Optimizer]:
    """The student's trainable parameters in one group of the experiment's optimizer, then the
    method's own groups (``method.param_groups``), each in the optimizer its ``"optimizer"`` key
    names (default: the experiment's); one optimizer per kind in use, SGD before AdamW."""
    base = {"lr": optim.lr, "weight_decay": optim.weight_decay}
    if optim.optimizer == "sgd":
        base["momentum"] = optim.momentum
    groups: dict[str, list] = {kind: [] for kind in OPTIMIZERS}
    groups[optim.optimizer].append({"params": [p for p in student.parameters() if p.requires_grad], **base})
    for group in method.param_groups(base):
        group = dict(group)
        kind = group.pop("optimizer", optim.optimizer)
        if kind == "adamw":
            group.pop("momentum", None)
        else:
            group.setdefault("momentum", optim.momentum)
        groups[kind].append(group)
    return [OPTIMIZERS[kind](g) for kind, g in groups.items() if g]


def clip_gradients(optimizer: torch.optim.Optimizer, default: float | None) -> None:
    """Clip one optimizer's gradient norm: a param group carrying its own ``clip_grad`` (a method
    module with its own recipe, e.g. ICD's decoder) alone, the other groups together at ``default``.
    Optimizers are clipped apart, so one's large gradients never shrink another's."""
    shared = [p for g in optimizer.param_groups if "clip_grad" not in g for p in g["params"]]
    if default and shared:
        torch.nn.utils.clip_grad_norm_(shared, default)
    for group in optimizer.param_groups:
        if "clip_grad" in group:
            torch.nn.utils.clip_grad_norm_(group["params"], group["clip_grad"])


class OptimWrapper:
    """The optimizers of one training stage and what a step does with them.

    ``fp16``: scale the loss with a ``GradScaler`` on ``device`` (autocast in float16 needs it; bfloat16
    and full precision do not). Its state (scale, growth tracker) is checkpointed with the optimizers,
    as mmengine's ``AmpOptimWrapper`` saves its ``loss_scaler``: a resumed run keeps its loss scale.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], grad_clip: float | None, fp16: bool = False,
                 device: str = "cuda"):
        self.optimizers = list(optimizers)
        self.grad_clip = grad_clip
        # The configured LRs, which every step scales: taken before any checkpoint is loaded (a
        # checkpoint's groups hold the LRs of its last step, already scaled).
        self.base_lrs = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers]
        self.scaler = torch.amp.GradScaler(device, enabled=fp16)

    @classmethod
    def build(cls, student: nn.Module, method: HasParamGroups, optim: Optim, fp16: bool = False) -> OptimWrapper:
        return cls(build_optimizers(student, method, optim), optim.grad_clip, fp16)

    @property
    def clipping(self) -> bool:
        return bool(self.grad_clip) or any("clip_grad" in g for opt in self.optimizers for g in opt.param_groups)

    def set_lr_factor(self, factor: float) -> None:
        """Every group's LR becomes its configured LR times ``factor`` (the schedule at this step)."""
        for opt, lrs in zip(self.optimizers, self.base_lrs, strict=True):
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr * factor

    def update_params(self, loss: torch.Tensor) -> None:
        """Backward ``loss`` and step every optimizer: gradients are zeroed first, unscaled (AMP)
        and clipped per optimizer (``clip_gradients``) before the steps."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clipping:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
                clip_gradients(opt, self.grad_clip)
        for opt in self.optimizers:
            self.scaler.step(opt)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """One state dict per optimizer and the loss scaler's (a checkpoint's ``optimizers``; plain
        numbers, so it loads with ``weights_only=True``)."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers], "loss_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        # A list: a checkpoint written before the loss scaler was saved (its scaler starts afresh).
        states, scaler = (state, None) if isinstance(state, list) else (state["optimizers"], state["loss_scaler"])
        for opt, opt_state in zip(self.optimizers, states, strict=True):
            opt.load_state_dict(opt_state)
        if scaler:  # a disabled scaler saves {}
            self.scaler.load_state_dict(scaler)
