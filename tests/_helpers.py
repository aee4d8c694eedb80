"""Test helpers shared by several test modules (``tests/`` is on ``sys.path`` under pytest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from deepgmm.cli import main

COHORT_MEANS = np.array([[0.0, 0.0, 0.0], [3.0, 0.5, 1.0], [0.5, 3.0, -1.0]])
"""(class, channel): background, class 1, class 2 of :func:`make_cohort` (first channels used)."""


def make_cohort(root: Path, n: int = 8, shape: tuple[int, int] = (32, 32), channels: Sequence[str] = ("A", "B"),
                seed: int = 0, mask: bool = True, affine: np.ndarray | None = None) -> Path:
    """``n`` cases ``root/caseNN/{channel}.nii.gz`` (+ ``mask.nii.gz``): two classes in the two halves
    of a rectangle (its top edge moves with the case), Gaussian noise of sd 0.5; images ``shape + (1,)``."""
    rng = np.random.default_rng(seed)
    means = COHORT_MEANS[:, : len(channels)]
    affine = np.eye(4) if affine is None else affine
    X, Y = shape
    for c in range(n):
        d = root / f"case{c:02d}"
        d.mkdir(parents=True)
        truth = np.zeros(shape, int)
        truth[3 + c % 3:X - 3, 3:Y // 2] = 1
        truth[3 + c % 3:X - 3, Y // 2:Y - 3] = 2
        img = means[truth].transpose(2, 0, 1) + rng.normal(0, 0.5, (len(channels),) + tuple(shape))
        for ch, a in zip(channels, img):
            nib.save(nib.Nifti1Image(a[..., None].astype(np.float32), affine), d / f"{ch}.nii.gz")
        if mask:
            nib.save(nib.Nifti1Image((truth > 0).astype(np.uint8)[..., None], affine), d / "mask.nii.gz")
    return root


def check_error(capsys: Any, argv: Sequence[Any], *fragments: str, code: int = 2) -> str:
    """Run ``main(argv)``; expect ``code`` and exactly one stderr line containing every fragment."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("deepgmm: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def rank_pid(launcher: int, rank: int) -> int | None:
    """PID of the worker of ``rank`` started by the torchrun process ``launcher`` (Linux /proc)."""
    import os

    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry)
    return None


def sklearn_twin(est: Any) -> Any:
    """A scikit-learn ``GaussianMixture`` carrying the fitted parameters of ``est`` (one of ours)."""
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    sk = GaussianMixture(n_components=est.n_components, covariance_type=est.covariance_type)
    sk.weights_, sk.means_, sk.covariances_ = est.weights_, est.means_, est.covariances_
    sk.precisions_cholesky_ = _compute_precision_cholesky(est.covariances_, est.covariance_type)
    sk.converged_, sk.n_features_in_ = True, est.n_features_in_
    return sk


def brain_phantom(shape: Sequence[int], radii: Sequence[float], intensities: Sequence[float], noise: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """T1 ``shape`` int16 and labels of nested ellipsoids: CSF (1) inside ``radii[0]``, GM (2) inside
    ``radii[1]``, WM (3) inside ``radii[2]``, background (0) outside; T1 = ``intensities[label]`` plus
    Gaussian noise of sd ``noise``."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    labels = np.zeros(tuple(shape), np.int16)
    for label, radius in enumerate(radii, start=1):
        labels[r < radius] = label
    t1 = np.asarray(intensities)[labels] + np.random.default_rng(seed).normal(0, noise, tuple(shape))
    return t1.astype(np.int16), labels


def count_segment_fits(monkeypatch) -> list:
    """Record every ``(method, *case key)`` the experiments runners fit in this process (the fits still run)."""
    from deepgmm.experiments import cases

    calls: list = []
    fit = cases.segment_fit

    def counting(dataset, case, method, seed, options):
        calls.append((method, *case.key))
        return fit(dataset, case, method, seed, options)

    monkeypatch.setattr(cases, "segment_fit", counting)
    return calls


def field_phantom(seed: int = 0, shape: Sequence[int] = (24, 28, 20), noise: float = 0.08):
    """Log-domain phantom with a known smooth field: three classes (a slab inside a ball inside the rest)
    of log-intensities 0, 0.6, 1.2, Gaussian noise, plus ``log_field``. Returns the values, the log-field
    and the truth (1..3), each of ``shape``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    truth = np.ones(tuple(shape), int)
    truth[z ** 2 + y ** 2 + x ** 2 < 0.5] = 2
    truth[np.abs(x) < 0.2] = 3
    log_field = 0.25 * x + 0.15 * y * z - 0.2 * x ** 2
    values = np.array([0.0, 0.0, 0.6, 1.2])[truth] + rng.normal(0, noise, tuple(shape))
    return values + log_field, log_field, truth


def two_region_image(shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(1, *shape)`` float32: two halves 3 standard deviations apart along the first axis, and a mask
    one pixel inside the border."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(1,) + tuple(shape)).astype(np.float32)
    img[0, : shape[0] // 2] += 3.0
    mask = np.zeros(tuple(shape), bool)
    mask[tuple(slice(1, n - 1) for n in shape)] = True
    return img, mask


def three_blobs(n: int, seed: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, C), z (n,))``: three Gaussian classes (std 1, 0.5, 1.5) at fixed centres, C <= 3 channels."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -1.0], [-3.0, 3.0, 2.0]])[:, :C]
    stds = np.array([1.0, 0.5, 1.5])
    z = rng.integers(0, 3, n)
    return centers[z] + stds[z, None] * rng.standard_normal((n, C)), z


TORCH_TEARDOWN_ABORT = "terminate called without an active exception"
"""What torch's C++ runtime prints when a process aborts in its teardown (see :func:`torchrun_deepgmm`)."""


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun_env(src: Path, cwd: Path) -> dict[str, str]:
    """The environment of a torchrun job of the tests: the parent's without its torchrun variables,
    ``src`` on the path, one thread per process, and ``cwd/torchrun-tmp`` as the temporary folder
    (torchrun's elastic agent leaves a ``torchelastic_*`` folder in it at every launch)."""
    import os

    scratch = Path(cwd) / "torchrun-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env.update(PYTHONPATH=str(src), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TMPDIR=str(scratch))
    return env


def torchrun_deepgmm(args: Sequence[Any], cwd: Path, src: Path, *, timeout: float) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 --standalone -m deepgmm ARGS`` in :func:`torchrun_env`.

    A job that fails only because a process aborted inside torch's C++ runtime
    (:data:`TORCH_TEARDOWN_ABORT`, SIGABRT: seen once in CI, in no run here) is run once more, its
    ``--out`` folder cleared first, with a warning: the tests check deepgmm's sharding, which that
    abort does not touch; a second failure fails the test as any other."""
    import shutil
    import warnings

    env = torchrun_env(src, cwd)
    argv = [str(a) for a in args]
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--standalone", "-m", "deepgmm",
           *argv]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if run.returncode != 0 and TORCH_TEARDOWN_ABORT in run.stderr and "--out" in argv:
        warnings.warn(f"torchrun job aborted in torch's runtime, run again: {run.stderr[-1500:]}", stacklevel=2)
        shutil.rmtree(Path(cwd) / argv[argv.index("--out") + 1], ignore_errors=True)
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return run
