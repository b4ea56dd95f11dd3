"""The training items' conditions, kept with a generator to replace an unseen input's condition at
inference.

A cross-modal generator is trained on the conditions of the training players only. An unseen
player's condition can lie far from all of them (for I2S on the ``default`` stand-in: a median
distance of 8.7 to the nearest training feature, against 0.51 between training items) and nearer
another class's players than its own, and the generator's map does not carry over that far. A
:class:`ConditionBank` holds the training conditions (and classes) so that inference can use
training conditions instead:

* ``'nearest'``: the mean of the ``k`` nearest training conditions (Euclidean; ``k=1`` = the
  nearest item's), a retrieval step before the generator;
* ``'class_mean'``: the mean training condition of the class the encoder's head predicts (the
  generator then follows the encoder's classification, not the input's feature).

``'own'`` (the paper) leaves the condition as it is.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

InferenceCondition = Literal["own", "nearest", "class_mean"]
INFERENCE_CONDITIONS: tuple[str, ...] = get_args(InferenceCondition)


class ConditionBank(nn.Module):
    """``(M, dim)`` training conditions and their ``(M,)`` classes, as buffers (so they travel
    with the model's ``state_dict`` and checkpoints). Empty until :meth:`fill`.

    A checkpoint's bank may hold any number of items: loading resizes the buffers to it, and a
    state dict without a bank (older checkpoints) leaves it empty.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("conditions", torch.zeros(0, dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.conditions.shape[0])

    @torch.no_grad()
    def fill(self, conditions: Tensor, labels: Tensor) -> None:
        """Replace the bank with ``conditions`` ``(M, dim)`` and their classes ``labels`` ``(M,)``."""
        if conditions.ndim != 2 or conditions.shape[1] != self.conditions.shape[1]:
            raise ValueError(f"conditions must be (M, {self.conditions.shape[1]}), got {tuple(conditions.shape)}")
        if labels.shape != conditions.shape[:1]:
            raise ValueError(f"{conditions.shape[0]} conditions but labels of shape {tuple(labels.shape)}")
        self.conditions = conditions.detach().to(self.conditions.device, self.conditions.dtype).clone()
        self.labels = labels.detach().to(self.labels.device, torch.long).clone()

    def nearest_mean(self, cond: Tensor, k: int = 1) -> Tensor:
        """The mean of the ``k`` nearest bank conditions of each row of ``cond`` ``(N, dim)``."""
        self._check_filled()
        self._check_conditions(cond)
        k = max(1, min(int(k), len(self)))
        # distances and means in float32 at least (cdist has no half/bfloat16 kernels), cast back after
        work = torch.promote_types(cond.dtype, torch.float32)
        bank = self.conditions.to(cond.device, work)
        index = torch.cdist(cond.to(work), bank).topk(k, dim=1, largest=False).indices
        return bank[index].mean(dim=1).to(cond.dtype)

    def class_means(self) -> tuple[Tensor, Tensor]:
        """``(means (C, dim), present (C,) bool)`` over the classes ``0 .. max label``; a class with
        no item in the bank has a zero row and ``present`` False."""
        self._check_filled()
        n = int(self.labels.max()) + 1
        sums = torch.zeros(n, self.conditions.shape[1], dtype=self.conditions.dtype, device=self.conditions.device)
        sums.index_add_(0, self.labels, self.conditions)
        counts = torch.bincount(self.labels, minlength=n)
        return sums / counts.clamp(min=1)[:, None].to(sums.dtype), counts > 0

    def snap(self, cond: Tensor, mode: str, predicted: Tensor | None = None, k: int = 1) -> Tensor:
        """``cond`` replaced as ``mode`` says (see the module docstring).

        ``cond`` ``(N, dim)`` in any float dtype (half and bfloat16 too: the distances are computed in
        float32), returned in its own dtype. ``predicted`` ``(N,)`` integer: the encoder's predicted
        classes (not its logits), needed by ``'class_mean'``; a row
        whose predicted class has no item in the bank gets its nearest bank condition instead.
        """
        if mode == "own":
            return cond
        if mode == "nearest":
            return self.nearest_mean(cond, k)
        if mode != "class_mean":
            raise ValueError(f"inference condition must be one of {INFERENCE_CONDITIONS}, got {mode!r}")
        if predicted is None:
            raise ValueError("inference condition 'class_mean' needs the encoder's predicted classes")
        self._check_conditions(cond)
        integer = not (predicted.dtype.is_floating_point or predicted.dtype.is_complex or predicted.dtype == torch.bool)
        if predicted.shape != cond.shape[:1] or not integer:
            raise ValueError(f"predicted must be the ({cond.shape[0]},) class indices (an integer tensor, e.g. the "
                             f"logits' argmax(1)) of the {cond.shape[0]} conditions, got shape {tuple(predicted.shape)} "
                             f"of {predicted.dtype}")  # fmt: skip
        if len(predicted) and int(predicted.min()) < 0:
            raise ValueError(f"predicted class indices must be >= 0, got {int(predicted.min())}")
        means, present = self.class_means()
        means, present = means.to(cond.device, cond.dtype), present.to(cond.device)
        predicted = predicted.to(cond.device).long()
        known = (predicted < len(present)) & present[predicted.clamp(max=len(present) - 1)]
        out = self.nearest_mean(cond, 1)
        out[known] = means[predicted[known]]
        return out

    def _check_conditions(self, cond: Tensor) -> None:
        dim = self.conditions.shape[1]
        if cond.ndim != 2 or cond.shape[1] != dim:
            raise ValueError(f"conditions must be (N, {dim}) to match the bank, got {tuple(cond.shape)}")

    def _check_filled(self) -> None:
        if len(self) == 0:
            raise RuntimeError(
                "the condition bank is empty: it is filled from the training split when the model is fitted "
                "(older checkpoints have none; `cmav evaluate` fills it from --root's train split)"
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # fmt: skip
        # the bank's size is the training split's, unknown when the module is built
        absent = []
        for name in ("conditions", "labels"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
            else:
                absent.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for key in absent:  # a checkpoint from before the bank existed: it stays empty, not an error
            if key in missing_keys:
                missing_keys.remove(key)


__all__ = ["INFERENCE_CONDITIONS", "ConditionBank", "InferenceCondition"]
