"""Where a deepSVG fit of one IBSR volume spends its time and memory, phase by phase.

    python benchmarks/profile_volume.py --subject 1 --steps 2 --pretrain 2 [--fit-scale 1]

The volume is cropped to its brain mask's box as ``deepgmm.experiments.brain`` does and fitted
with the brain settings (z-score over the mask, K=3 plus deepSVG's one spare class). The script
runs the phases of :meth:`deepgmm.deep.estimator.DeepGMM.fit` one by one with the estimator's own
pieces (EM start, distillation steps, NLL steps split into the network's forward pass, the M-step
and NLL, the smoothed-posterior term, the backward pass and the optimiser; the read-out; the spare
class), for a few steps only: the per-step costs are what matter. Per phase it prints the seconds
(median over the steps) and the peak resident memory while it ran (sampled every 5 ms, so the
short peaks of a phase are caught only approximately), plus the bytes autograd keeps for the
backward pass (the network's activations and the loss's own). ``--top N`` adds torch.profiler's
N most expensive operators of one NLL step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Peak RSS since the last :meth:`reset`, sampled in a thread."""

    def __init__(self, every: float = 0.005) -> None:
        self.every, self.peak, self._stop = every, _rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.every)

    def reset(self) -> None:
        self.peak = _rss()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


ROWS: dict[str, list[tuple[float, int]]] = {}


@contextmanager
def phase(name: str, sampler: Sampler):
    sampler.reset()
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    ROWS.setdefault(name, []).append((dt, max(sampler.peak, _rss())))


@contextmanager
def saved_bytes(store: list[int]):
    """Count the bytes of the tensors autograd saves for the backward pass inside the block."""
    def pack(t: torch.Tensor) -> torch.Tensor:
        store.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("DEEPGMM_IBSR", str(Path(__file__).resolve().parents[2]
                                                                          / "shared" / "data" / "ibsr18")))
    p.add_argument("--subject", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="NLL steps to time (default 2)")
    p.add_argument("--pretrain", type=int, default=2, help="distillation steps to time (default 2)")
    p.add_argument("--fit-scale", type=int, default=1, help="the estimator's fit_scale (default 1: full resolution)")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="the network's arithmetic (the estimator's precision; default auto)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    p.add_argument("--top", type=int, default=0, help="also list the N costliest operators of one NLL step")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data, "IBSR_01").is_dir() and not any(Path(args.data).glob("IBSR_*")):
        print(f"IBSR data not found at {args.data}; pass --data or set DEEPGMM_IBSR", file=sys.stderr)
        return 2

    from deepgmm.deep.estimator import DeepSVG
    from deepgmm.deep.losses import DeepMixtureLoss
    from deepgmm.deep.optim import AdamW
    from deepgmm.deep.precision import resolve_precision
    from deepgmm.deep.regularizers import SmoothedPosterior
    from deepgmm.deep.unet import UNet, network_config
    from deepgmm.deep.steps import FullReadout
    from deepgmm.experiments.brain import load_ibsr
    from deepgmm.preprocess import box_slices
    from deepgmm.progress import Progress
    from deepgmm.segmentation.core import _normalize
    from deepgmm.segmentation.result import MethodFit
    from deepgmm.segmentation.spare import drop_spare_classes

    sampler = Sampler()
    base = _rss()
    with phase("load and crop the volume", sampler):
        case = load_ibsr(Path(args.data), [args.subject])[0]
        img, _ = _normalize(torch.from_numpy(case.image), torch.from_numpy(case.mask))
        region = torch.from_numpy(case.mask)
    K = 4  # K=3 plus a spare class and the 2D width of 8 (the defaults when docs/deep.md's profile was taken)
    est = DeepSVG(n_components=K, smooth_sigma=8.0, pretrain_steps=args.pretrain, max_steps=args.steps,
                  fit_scale=args.fit_scale)
    regs = est._validate(3)
    est.covariance_type_ = "full"
    window = box_slices(region, est.crop_margin)
    img_w, reg_w = img[(slice(None),) + window], region[window]
    scale = est._resolve_scale(tuple(img_w.shape[1:]))
    with phase("downsample the image (fit_scale)", sampler):
        img_fit, reg_fit = est._downsample(img_w, reg_w, scale)
    regs_fit = est._scaled_regularizers(regs, scale)
    spatial = tuple(img_fit.shape[1:])
    cfg = network_config(est.network, spatial_dims=3, in_channels=1, out_channels=K)
    torch.manual_seed(0)
    net = UNet(cfg)
    net.compute_dtype = resolve_precision(args.precision, torch.device("cpu"))
    x = img_fit.unsqueeze(0)
    m = reg_fit.unsqueeze(0).to(x.dtype)
    loss_fn = DeepMixtureLoss(mixture="svgmm", covariance_type="full", reg_covar=est.reg_covar, regularizers=regs_fit)
    read_loss = DeepMixtureLoss(mixture="svgmm", covariance_type="full", reg_covar=est.reg_covar, regularizers=regs)
    print(f"IBSR_{args.subject:02d}: window {tuple(img_w.shape[1:])} ({int(reg_w.sum())} voxels in the mask), "
          f"fitted at scale {scale}: {spatial}; torch threads {torch.get_num_threads()}; network in {net.precision}")

    with phase("EM start (SVGMM at full resolution)", sampler):
        target = est._em_posteriors(img_w, reg_w, 0, None, None)
    with phase("EM target to the fitted grid", sampler):
        target = est._target_to_fit(target, reg_w, scale)
    bar = Progress(args.pretrain, "profile", None, bar=False, final=None, leave=False)
    est.pretrain_steps = 1
    dist_saved: list[int] = []
    for i in range(args.pretrain):
        with phase("distillation step", sampler), (saved_bytes(dist_saved) if i == 0 else _null()):
            est._distil(net, x, m, target, bar)

    opt = AdamW(net.parameters(), lr=est.lr, weight_decay=est.weight_decay)
    net_saved: list[int] = []
    loss_saved: list[int] = []
    smooth = next(r for r in regs_fit if isinstance(r, SmoothedPosterior))
    for i in range(args.steps):
        with phase("NLL step: network forward", sampler), saved_bytes(net_saved if i == 0 else []):
            logits = net(x)
        with phase("NLL step: M-step, NLL and regularisers (forward)", sampler), \
                saved_bytes(loss_saved if i == 0 else []):
            out = loss_fn(x, logits, m)
        with phase("  of which the smoothed-posterior target (E-step + blur)", sampler):
            from deepgmm.deep.regularizers import RegContext
            ctx = RegContext(image=x, log_probs=torch.log_softmax(logits.detach(), 1), mask=m.unsqueeze(1),
                             means=out.fit.means.detach(), covariances=out.fit.covariances.detach(),
                             log_weights=torch.log_softmax(logits.detach(), 1).reshape(1, K, -1).transpose(1, 2))
            smooth.target(ctx)
        with phase("NLL step: backward (loss and network)", sampler):
            opt.zero_grad(set_to_none=True)
            out.total.backward()
        with phase("NLL step: clip and AdamW", sampler):
            torch.nn.utils.clip_grad_norm_(net.parameters(), est.grad_clip)
            opt.step()
        del out, logits

    if args.top:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = loss_fn(x, net(x), m)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
        del out
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))

    with phase("read-out (network, full-resolution M-step, soft labels)", sampler):
        full_x = img_w.unsqueeze(0)
        full_m = reg_w.unsqueeze(0).to(full_x.dtype)
        read = FullReadout(x, full_x, full_m, None, read_loss, scale, 0)(net)
        logits, out = read.logits, read.out
        given = (full_x[0], out.fit.means[0], out.fit.covariances[0]) if scale > 1 else ()
        probs, labels = est._read_out(logits[0], reg_w, *given)
    with phase("spare class (drop the smallest of K+1)", sampler):
        fit = MethodFit(probs[:, reg_w.numpy()].T, labels[reg_w.numpy()].astype(np.int64) - 1,
                        out.fit.means[0].numpy(), out.fit.covariances[0].numpy(),
                        (out.fit.nk[0] / out.fit.nk[0].sum()).numpy(), float(out.nll[0]), [], 0, False, None)
        drop_spare_classes(fit, 3, img_w[:, reg_w].T)
    sampler.close()

    print(f"\nresident memory before loading: {base / 2**30:.2f} GiB; peak RSS of the process "
          f"{max(pk for rows in ROWS.values() for _, pk in rows) / 2**30:.2f} GiB")
    print(f"{'phase':58s} {'seconds':>8s} {'peak RSS GiB':>13s}")
    for name, rows in ROWS.items():
        print(f"{name:58s} {statistics.median(t for t, _ in rows):8.2f} {max(pk for _, pk in rows) / 2**30:13.2f}")
    gib = 2**30
    print(f"\nsaved for backward: network {sum(net_saved) / gib:.2f} GiB, loss {sum(loss_saved) / gib:.2f} GiB, "
          f"distillation step (network + loss) {sum(dist_saved) / gib:.2f} GiB")
    return 0


@contextmanager
def _null():
    yield


if __name__ == "__main__":
    raise SystemExit(main())
