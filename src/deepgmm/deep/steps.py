"""The NLL steps of a deep fit on its whole (fitted) grid, the read-out at full resolution, and the
read-out check that keeps a grid fit's steps only while they lower the read-out's NLL.

A fit on a coarser grid (``fit_scale_ > 1``) takes its steps on the NLL of block means, but what it
returns is the read-out at full resolution: the interpolated soft labels as per-pixel weights, the
M-step (and the read-out EM) on the window's pixels. The two NLLs need not fall together (a block
mean of a thin structure is a partial volume, a mode of its own on the grid: docs/deep.md, "Why the
deep fit degrades on brain volumes"). :class:`ReadoutCheck` reads the network out every ``every``
steps, keeps the network with the lowest read-out NLL and stops the steps at the first check that
does not lower it by more than ``tol``.

Shapes: the grid's image ``x`` ``(1, C, *grid)``; the window ``full_x`` ``(1, C, *window)``, its mask
``full_m`` and pixel weights ``full_w`` ``(1, *window)``; logits ``(1, K, *window)``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from ..progress import Progress
from .grid import upsample
from .losses import DeepMixtureLoss, LossOutput
from .readout import readout_em

__all__ = ["ReadOut", "FullReadout", "ReadoutCheck", "whole_steps", "StepsResult"]

logger = logging.getLogger(__name__)


class ReadOut(NamedTuple):
    """A network read out at full resolution: ``logits`` ``(1, K, *window)``, the loss ``out`` on the
    window with them, the mixture's ``means`` ``(K, C)``, ``covariances`` and soft counts ``nk`` ``(K,)``
    (after the read-out EM, if any) and the mean NLL of the window's pixels at those parameters."""

    logits: Tensor
    out: LossOutput
    means: Tensor
    covariances: Tensor
    nk: Tensor
    nll: float

    @classmethod
    def of_loss(cls, logits: Tensor, out: LossOutput) -> "ReadOut":
        """The read-out without EM iterations: the loss's own M-step and NLL."""
        fit = out.fit
        return cls(logits, out, fit.means[0], fit.covariances[0], fit.nk[0], float(out.nll[0]))


@dataclass
class FullReadout:
    """Reads a network fitted on the grid ``x`` at block size ``scale`` out on the window: its logits
    interpolated to the window, ``loss`` (the full resolution's regularisers) on ``full_x`` over
    ``full_m`` with pixel weights ``full_w``, then ``iterations`` read-out EM iterations
    (:func:`deepgmm.deep.readout.readout_em`; none at ``scale`` 1)."""

    x: Tensor
    full_x: Tensor
    full_m: Tensor
    full_w: Tensor | None
    loss: DeepMixtureLoss
    scale: int
    iterations: int

    def __call__(self, net: nn.Module) -> ReadOut:
        with torch.no_grad():
            logits = upsample(net(self.x), self.scale, tuple(self.full_x.shape[2:]))
            out = self.loss(self.full_x, logits, self.full_m, weight=self.full_w)
        read = ReadOut.of_loss(logits, out)
        if self.iterations == 0:
            return read
        loss = self.loss
        means, covariances, nk, nll = readout_em(
            logits[0], self.full_m[0] > 0, self.full_x[0], read.means, read.covariances,
            None if self.full_w is None else self.full_w[0], iterations=self.iterations,
            covariance_type=loss.covariance_type, reg_covar=loss.reg_covar, mixture=loss.mixture)
        return ReadOut(logits, out, means, covariances, nk, nll)


class ReadoutCheck:
    """Every ``every`` NLL steps from step ``start`` on, ``read`` the network ``net`` out; keep the
    network (its weights and its :class:`ReadOut`) with the lowest read-out NLL, from the one of step
    ``start`` on; at the first check whose NLL is not below the kept one's by more than ``tol`` (the
    steps' own convergence threshold), put the kept weights back and stop the steps. ``start`` 0 (a
    distilled start, read out at once) or later (a random start, no network worth keeping yet).

    ``checks`` lists ``(step, nll)`` of every read-out; ``kept_step`` is the step of the kept network.
    """

    def __init__(self, net: nn.Module, read: Callable[[nn.Module], ReadOut], every: int, tol: float = 0.0,
                 start: int = 0) -> None:
        if every < 1:
            raise ValueError(f"ReadoutCheck's every must be >= 1, got {every}")
        if start < 0:
            raise ValueError(f"ReadoutCheck's start must be >= 0, got {start}")
        self.net, self.read, self.every, self.tol, self.start = net, read, int(every), float(tol), int(start)
        self.checks: list[tuple[int, float]] = []
        self.best: ReadOut | None = None
        self.kept_step = self.start
        self._state: dict[str, Tensor] | None = None
        if self.start == 0:
            self._check(0)

    def _check(self, step: int) -> bool:
        """Read the network out at ``step``; True when it lowered the kept read-out NLL by more than ``tol``."""
        read = self.read(self.net)
        self.checks.append((step, read.nll))
        if self.best is not None and not read.nll < self.best.nll - self.tol:
            return False
        self.best, self.kept_step = read, step
        self._state = copy.deepcopy(self.net.state_dict())
        return True

    def after_step(self, step: int) -> bool:
        """Called after NLL step ``step`` (from 1); True: stop the steps (the kept network is back in place)."""
        if step < self.start or (step - self.start) % self.every or self._check(step):
            return False
        self._restore(step)
        return True

    def finish(self, step: int) -> ReadOut:
        """The read-out of the kept network once the steps ended at ``step`` (read out here unless the
        last step was checked; the better of it and the best so far, whose weights are put back)."""
        if not self.checks or self.checks[-1][0] != step:
            self._check(step)
        self._restore(step)
        return self.best

    def _restore(self, step: int) -> None:
        """Put the kept network's weights back in place of those of ``step``."""
        if self.kept_step != step:
            self.net.load_state_dict(self._state)
        logger.info("read-out check: kept the network of step %d of %d (read-out NLL %.5f)", self.kept_step, step,
                    self.best.nll)


class StepsResult(NamedTuple):
    """The grid's NLL at every step taken, the steps taken, whether a stopping rule (``tol`` or the
    check) ended them before ``max_steps``, and the read-out of the kept network when a
    :class:`ReadoutCheck` ran (else None)."""

    history: list[float]
    n_iter: int
    converged: bool
    read: ReadOut | None


def whole_steps(net: nn.Module, opt: object, step_loss: Callable[[], LossOutput], *, max_steps: int, tol: float,
                min_steps: int, grad_clip: float, bar: Progress, check: ReadoutCheck | None = None,
                nll_name: str = "nll") -> StepsResult:
    """Up to ``max_steps`` AdamW steps on ``step_loss()`` (the loss of the network's current output),
    stopping when the NLL changes by less than ``tol`` (after ``max(min_steps, 2)`` steps) or when
    ``check`` stops them. ``nll_name``: the step's NLL as the progress shows it (e.g. "grid nll", where
    it is not the NLL the fit reports)."""
    history: list[float] = []
    converged = False
    for step in range(1, max_steps + 1):
        out = step_loss()
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        nll = float(out.nll.detach()[0])
        if not math.isfinite(nll):
            raise ValueError(f"the deep fit diverged: NLL {nll} at step {step}; lower lr or raise reg_covar")
        history.append(nll)
        bar.step(**{nll_name: nll})
        if check is not None and check.after_step(step):
            return StepsResult(history, step, True, check.best)
        if step >= max(min_steps, 2) and abs(history[-2] - nll) < tol:
            converged = True
            break
    read = None if check is None else check.finish(len(history))
    return StepsResult(history, len(history), converged, read)
