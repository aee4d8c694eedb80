"""AdamW for the per-image deep fits, without ``torch.optim``'s import of the compiler stack.

Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` once per process, a cost a
one-image command feels (``benchmarks/bench_cli.py``, docs/robustness.md). :class:`AdamW` here is the
same algorithm (Loshchilov & Hutter: Adam with decoupled weight decay and bias correction), written as the same sequence of in-place tensor operations as
``torch.optim.AdamW(foreach=False)``, so that on the CPU both give bit-identical weights
(``tests/test_deep.py``). Training on a cohort (``deepgmm.training``) keeps ``torch.optim.AdamW``:
its state goes into resumable checkpoints and its learning rate follows a scheduler.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

__all__ = ["AdamW"]


class AdamW:
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)``: ``zero_grad()``, ``step()``.

    Per parameter ``p`` with gradient ``g`` at step ``t``::

        p <- p * (1 - lr * weight_decay)
        m <- m + (1 - beta1) (g - m);  v <- beta2 v + (1 - beta2) g^2
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Parameters without a gradient are skipped (their step count does not advance).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("AdamW got an empty parameter list")
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"AdamW's {name} must be >= 0, got {value}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW's betas must lie in [0, 1), got {betas}")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), (float(betas[0]), float(betas[1])), float(eps), \
            float(weight_decay)
        self.state: dict[int, tuple[Tensor, Tensor, list[int]]] = {}  # index -> (m, v, [t])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        lr, eps, wd = self.lr, self.eps, self.weight_decay
        beta1, beta2 = self.betas
        for i, p in enumerate(self.params):  # a few dozen weight tensors, not pixels
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("AdamW does not support sparse gradients")
            if i not in self.state:
                self.state[i] = (torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format), [0])
            m, v, t = self.state[i]
            t[0] += 1
            grad = p.grad
            if wd != 0:
                p.mul_(1 - lr * wd)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = float(t[0])
            step_size = lr / (1 - beta1 ** step)
            denom = (v.sqrt() / (1 - beta2 ** step) ** 0.5).add_(eps)
            p.addcdiv_(m, denom, value=-step_size)
