"""Speed of cohort training and of prediction with the trained network, on MyoPS 2020 (not a test).

Measures, on the 79 paper slices (160 x 160 x 3, the paper's protocol) and with the load average printed:

1. prediction throughput of the default training network (slices per wall-clock second, and per
   CPU second of the process, which the other jobs of a shared machine disturb less) through
   ``TrainedModel.predict_many`` (normalisation, windowing around the mask, network, soft labels,
   labels and the NLL of every slice included), with the mask given; and without a mask
   (the whole 160 x 160 slice) for reference; and with the mask and ``readout="posterior"``
   (one E-step more per slice), with its cost as a ratio;
2. the EM SVGMM's time per slice (``deepgmm.segment(method="svgmm")``) on the same slices, in the
   same run, and the ratio;
3. seconds per training epoch on the 20 MyoPS training patients (all kept slices of patients
   101-125 except 109, 114, 117, 120, 122).

Medians over repeats. Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_train.py [--threads 2] [--model MODEL_DIR]
        [--repeats 5] [--epochs 3] [--em-slices 20] [--json OUT.json]

Without ``--model`` the default network is built with its initial weights: its speed does not
depend on the weights. Skips (exit 0) when the MyoPS data are absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import default_data


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(default_data()), help="MyoPS 2020 root folder")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly; default 2)")
    ap.add_argument("--model", help="trained model folder (default: the default network, initial weights)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="prediction batch (default: the library's)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs to time (0: skip)")
    ap.add_argument("--em-slices", type=int, default=20, help="slices for the EM timing (0: skip)")
    ap.add_argument("--compare-pooling", action="store_true",
                    help="also time prediction with torch's max_pool in place of the inference pooling")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if not (Path(args.data) / "train25").is_dir():
        print(f"MyoPS 2020 data not found in {args.data}; skipping")
        return 0

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from deepgmm.datasets import myops
    from deepgmm.segmentation import segment
    from deepgmm.training import MyoPSDataset, TrainConfig, TrainedModel, load_model, train

    print(f"torch {torch.__version__}, {args.threads} thread(s), load average at start: {load()}")
    slices = myops.paper_slices(args.data)
    images = [s.image for s in slices]
    masks = [s.mask for s in slices]
    if args.model:
        model = load_model(args.model)
    else:
        cfg = TrainConfig(method="deepsvg", channels=list(myops.CHANNELS), normalize="image", crop_size=[128, 128])
        cfg.finalize()
        model = TrainedModel(cfg, cfg.build_network().state_dict(), source="default network (initial weights)")
    print(f"model: {model!r}, network {model.config.network['features']}")
    results: dict[str, object] = {"threads": args.threads, "slices": len(slices), "model": model.source,
                                  "features": model.config.network["features"]}

    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}

    def rate(with_mask: bool) -> tuple[float, float]:
        """Median slices per wall-clock second, and per CPU second of this process (all its threads)."""
        model.predict_many(images[:4], masks[:4] if with_mask else None)  # warm-up
        wall, cpu = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            model.predict_many(images, masks if with_mask else None, **batch)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return len(images) / statistics.median(wall), len(images) / statistics.median(cpu)

    r_mask, c_mask = rate(True)
    r_full, c_full = rate(False)
    print(f"prediction, mask given (window around it): {r_mask:7.1f} slices/s wall clock "
          f"({1000 / r_mask:.2f} ms per slice), {c_mask:7.1f} slices per CPU second")
    print(f"prediction, no mask (whole 160x160 slice): {r_full:7.1f} slices/s wall clock, "
          f"{c_full:7.1f} slices per CPU second")
    results.update(predict_slices_per_s=r_mask, predict_slices_per_cpu_s=c_mask,
                   predict_slices_per_s_no_mask=r_full, predict_slices_per_cpu_s_no_mask=c_full,
                   predict_ms_per_slice=1000 / r_mask)
    model.readout = "posterior"
    try:
        r_post, _ = rate(True)
    finally:
        model.readout = "soft_labels"
    print(f"prediction, mask given, posterior read-out: {r_post:7.1f} slices/s wall clock "
          f"({1000 / r_post:.2f} ms per slice; {r_mask / r_post:.2f}x the soft labels' time)")
    results.update(predict_slices_per_s_posterior=r_post)

    if args.compare_pooling:  # the same run with the U-Net's inference pooling replaced by max_pool
        import torch.nn.functional as F

        from deepgmm.deep import unet

        fast = unet._max_pool_2
        unet._max_pool_2 = lambda x, kernel: (F.max_pool2d if x.ndim == 4 else F.max_pool3d)(x, kernel)
        try:
            r_pool, _ = rate(True)
        finally:
            unet._max_pool_2 = fast
        print(f"prediction, mask given, with max_pool: {r_pool:7.1f} slices/s wall clock; "
              f"the inference pooling is {r_mask / r_pool:.2f}x faster")
        results.update(predict_slices_per_s_max_pool=r_pool)

    if args.em_slices:
        idx = np.linspace(0, len(slices) - 1, min(args.em_slices, len(slices))).round().astype(int)
        em_times, em_cpu = [], []
        for i in idx:
            t0, c0 = time.perf_counter(), time.process_time()
            segment(images[i], masks[i], method="svgmm", n_components=4)
            em_times.append(time.perf_counter() - t0)
            em_cpu.append(time.process_time() - c0)
        em, emc = statistics.median(em_times), statistics.median(em_cpu)
        print(f"EM SVGMM: {1000 * em:.1f} ms per slice wall clock, {1000 * emc:.1f} ms CPU (median of {len(idx)} "
              f"slices); the trained network is {em * r_mask:.1f}x faster per slice ({emc * c_mask:.1f}x in CPU time)")
        results.update(em_svgmm_ms_per_slice=1000 * em, em_svgmm_cpu_ms_per_slice=1000 * emc,
                       speedup_vs_em=em * r_mask, speedup_vs_em_cpu=emc * c_mask)

    if args.epochs:
        ds = MyoPSDataset(args.data, "train", normalize="image", crop_size=[128, 128])
        cfg = TrainConfig(method="deepsvg", epochs=args.epochs, tol=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            res = train(cfg, ds, Path(tmp) / "model")
        secs = [r["seconds"] for r in res.history]
        print(f"training: {statistics.median(secs):.2f} s per epoch (median of {len(secs)}; {len(ds)} slices of "
              f"{len(ds.cases)} patients, batch 4, {res.history[0]['samples']} samples per epoch)")
        results.update(train_seconds_per_epoch=statistics.median(secs), train_slices=len(ds),
                       train_epoch_seconds=secs)
    print(f"load average at the end: {load()}")
    results["load_average_end"] = load()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
