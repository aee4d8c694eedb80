"""IBSR18: where are the GM voxels that a brain run labels CSF? For each subject and method of a
``deepgmm brain ibsr`` output folder (its ``predictions/``, in the runner's cropped frame), the share of
truth-GM voxels labelled CSF that lie within 2 voxels of an unlabelled voxel (label 0: outside the
brain and the unlabelled sulcal CSF), against the share of all truth-GM voxels there. Nothing is
written.

    python benchmarks/brain_gm_csf_errors.py ../shared/data/ibsr18 ibsr_final/ 1,6,16 deepgmm_brain,deepgmm_brain4
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from deepgmm.experiments.brain import load_ibsr


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    subjects, methods = [int(v) for v in sys.argv[3].split(",")], sys.argv[4].split(",")
    for s in subjects:
        truth = load_ibsr(data, [s])[0].truth
        unlabelled = truth == 0
        near = ndimage.binary_dilation(unlabelled, iterations=2) & ~unlabelled
        gm = truth == 2
        for m in methods:
            pred = np.load(out / "predictions" / f"IBSR_{s:02d}_{m}.npy")
            wrong = gm & (pred == 1)
            print(f"IBSR_{s:02d} {m}: GM labelled CSF {int(wrong.sum())} voxels, {(wrong & near).sum() / wrong.sum():.3f} "
                  f"of them within 2 voxels of label 0 (all GM: {(gm & near).sum() / gm.sum():.3f})")


if __name__ == "__main__":
    main()
