"""IBSR18: does a partial-volume merge help ``deepgmm_brain4``? One fit per subject at the setting of
``deepgmm_brain4`` (SVGMM 1 mm, bias field degree 2, four Gaussians numbered by mean), then the
tissues from its posteriors ``p_1..p_4``: CSF ``p_1``, GM ``p_2 + (1 - f) p_3``, WM ``p_4 + f p_3``
for several ``f`` (``f = 0``: ``deepgmm_brain4``'s merge; the third Gaussian, the brighter of the two
GM ones, taken as a GM/WM mixture for ``f > 0``). Dice without matching, printed per subject and as
means over the subjects given. Data are read from the IBSR folder; nothing is written.

    OMP_NUM_THREADS=1 python benchmarks/brain_pv_merge.py ../shared/data/ibsr18 1,4,6,8,16
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from deepgmm import segment
from deepgmm.experiments.brain import BRAIN_TISSUE_SETTINGS, load_ibsr

FRACTIONS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75)


def main() -> None:
    torch.set_num_threads(1)
    data, subjects = Path(sys.argv[1]), [int(v) for v in sys.argv[2].split(",")]
    opts = {k: v for k, v in BRAIN_TISSUE_SETTINGS.items() if k != "gaussians_per_class"}
    assert tuple(BRAIN_TISSUE_SETTINGS["gaussians_per_class"]) == (1, 2, 1)
    scores = {}
    for s in subjects:
        case = load_ibsr(data, [s])[0]
        seg = segment(case.image, case.mask, n_components=4, order="mean", spacing=case.spacing, **opts)
        p, t = seg.probabilities[:, case.mask], case.truth[case.mask]
        for f in FRACTIONS:
            labels = np.stack([p[0], p[1] + (1 - f) * p[2], p[3] + f * p[2]]).argmax(0) + 1
            scores[s, f] = [2 * np.sum((labels == k) & (t == k)) / (np.sum(labels == k) + np.sum(t == k))
                            for k in (1, 2, 3)]
        print(s, {f: np.round(scores[s, f], 3).tolist() for f in FRACTIONS}, flush=True)
    for f in FRACTIONS:
        d = np.mean([scores[s, f] for s in subjects], axis=0)
        print(f"f={f}: CSF {d[0]:.3f} GM {d[1]:.3f} WM {d[2]:.3f} GM+WM {d[1:].mean():.3f} mean {d.mean():.3f}")


if __name__ == "__main__":
    main()
