"""Peer methods of brain tissue segmentation, run by the fit runner next to deepgmm's methods.

Each peer is a function with the signature of :func:`.cases.segment_fit` (data set, case, method,
seed, options) returning a :class:`.cases.Fit`: labels 0 outside the mask and 1..K inside, the
classes numbered by their mean T1 (CSF < GM < WM), so that they are scored like deepgmm's
``order="mean"`` fits; ``nll`` is None (the peers' likelihoods are not comparable). The peers'
packages (the extra ``peers``: ``pip install -e '.[peers]'``) are imported inside the functions;
:func:`unavailable` tells the runner which ones are missing, so that it skips them.

- ``atropos``: ANTs Atropos (antspyx) with a k-means start and an MRF prior, on the T1 inside the
  brain mask, voxel sizes from the affine;
- ``atropos_n4``: N4 bias-field correction inside the mask, then the same Atropos;
- ``dipy_hmrf``: DIPY's ``TissueClassifierHMRF`` on the masked T1 with ``nclasses=3`` (DIPY adds
  a class for the zeroed background itself; in-mask voxels it takes go to the darkest tissue class);
- ``sklearn_gmm``: scikit-learn's ``GaussianMixture`` (full covariances) on the z-scored T1 inside
  the mask.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..choices import PEER_METHODS
from .cases import Case, DataSet, Fit

__all__ = ["PEER_METHODS", "PEER_PACKAGES", "PEER_FITS", "NOT_INSTALLED", "unavailable", "rank_by_mean",
           "atropos_fit", "dipy_hmrf_fit", "sklearn_gmm_fit", "scratch_tempdir"]

PEER_PACKAGES: dict[str, str] = {"atropos": "ants", "atropos_n4": "ants", "atropos_priors": "ants",
                                 "dipy_hmrf": "dipy", "sklearn_gmm": "sklearn"}
"""The module each peer imports."""
NOT_INSTALLED = "skipped: not installed (pip install -e '.[peers]')"
ATROPOS_SETTINGS: dict[str, Any] = {"i": "Kmeans[{k}]", "mrf_beta": 0.1, "c": "[5,0]", "priorweight": 0.25}
"""Atropos' brain settings; ``priorweight``: ``atropos_priors``' weight of the prior maps (ANTs'
default, and the best of 0.25 and 0.5 on IBSR18's training half with multi-atlas priors)."""
DIPY_SETTINGS: dict[str, Any] = {"beta": 0.1, "max_iter": 10}


def _import(module: str) -> Any:
    return importlib.import_module(module)


def unavailable(method: str) -> str | None:
    """Why the peer ``method`` cannot run here (its package is missing), or None (it can, or it is
    not a peer)."""
    module = PEER_PACKAGES.get(method)
    if module is None:
        return None
    try:
        _import(module)
    except ImportError:
        return f"{NOT_INSTALLED}: no module {module!r}"
    return None


def rank_by_mean(raw: np.ndarray, t1: np.ndarray, mask: np.ndarray, k: int, background: int | None = None) -> np.ndarray:
    """Labels 1..k inside ``mask`` (0 outside) from a peer's raw labels, numbered by their mean T1.
    ``background``: a raw label that is not a tissue class (its in-mask voxels go to label 1)."""
    values = [v for v in np.unique(raw[mask]) if v != background]
    means = np.array([t1[mask & (raw == v)].mean() for v in values])
    out = np.zeros(raw.shape, np.uint8)
    for rank, i in enumerate(np.argsort(means, kind="stable")):
        out[mask & (raw == values[i])] = min(rank + 1, k)
    if background is not None:
        out[mask & (raw == background)] = 1
    return out


def _parts(case: Case) -> tuple[np.ndarray, np.ndarray]:
    t1 = np.ascontiguousarray(case.image[0], dtype=np.float32)
    mask = np.ones(t1.shape, bool) if case.mask is None else np.asarray(case.mask, bool)
    return t1, mask


@contextlib.contextmanager
def scratch_tempdir() -> Iterator[str]:
    """A private temporary folder as :mod:`tempfile`'s default for the block, removed after it.

    antspyx writes to ``tempfile`` names and never removes them: ``atropos`` its probability maps
    (``antsr*prob0K.nii.gz``, K per fitted volume), ``registration`` its transforms (an affine, a warp
    field and its inverse per registration, which ``apply_transforms`` reads: keep it inside the block).
    The default is process-wide, so this is for one fit at a time in a process."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="deepgmm-ants-") as folder:
        tempfile.tempdir = folder
        try:
            yield folder
        finally:
            tempfile.tempdir = previous


def _fit(labels: np.ndarray, seconds: float, settings: Mapping[str, Any], caught: list) -> Fit:
    msgs = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    return Fit(labels, None, float(seconds), None, None, dict(settings), msgs)  # type: ignore[arg-type]


def atropos_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """ANTs Atropos on ``case``'s T1 in its mask: from k-means (``method="atropos_n4"``: after N4
    bias-field correction), or ``"atropos_priors"``: from the case's prior maps
    (``PriorProbabilityImages``, ``options["priors"]`` the folder, :mod:`.priors`; class k is map k)."""
    from .priors import case_priors, priors_folder

    ants = _import("ants")
    k = dataset.n_classes
    t1, mask = _parts(case)
    spacing = tuple(float(s) for s in (case.spacing or (1.0,) * t1.ndim))
    n4 = method == "atropos_n4"
    options = dict(options)
    priors = None
    if method == "atropos_priors":
        folder = priors_folder(method, options)
        options.pop("priors")
        priors = case_priors(folder, case, k)
        options.setdefault("priorweight", ATROPOS_SETTINGS["priorweight"])
    settings = {"peer": "ANTs Atropos", "antspyx": ants.__version__, "n4": n4, "spacing": "from the affine",
                "i": f"Kmeans[{k}]" if priors is None else f"PriorProbabilityImages[{k}] (the case's maps)",
                "m": f"[{ATROPOS_SETTINGS['mrf_beta']},{'x'.join(['1'] * t1.ndim)}]", "c": ATROPOS_SETTINGS["c"],
                **options}
    if priors is not None:
        settings["priors"] = str(folder)
    with warnings.catch_warnings(record=True) as caught, scratch_tempdir():
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        img = ants.from_numpy(t1, spacing=spacing)
        msk = ants.from_numpy(mask.astype(np.float32), spacing=spacing)
        if n4:
            img = ants.n4_bias_field_correction(img, mask=msk)
        if priors is None:
            res = ants.atropos(a=img, x=msk, i=settings["i"], m=settings["m"], c=settings["c"], **options)
            raw = np.asarray(res["segmentation"].numpy()).astype(np.int64)
            labels = rank_by_mean(raw, t1, mask, k)
        else:
            maps = [ants.from_numpy(np.ascontiguousarray(p), spacing=spacing) for p in priors]
            res = ants.atropos(a=img, x=msk, i=maps, m=settings["m"], c=settings["c"], **options)
            labels = np.where(mask, np.asarray(res["segmentation"].numpy()), 0).astype(np.uint8)
        seconds = time.perf_counter() - t0
    return _fit(labels, seconds, settings, caught)


def dipy_hmrf_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """DIPY's HMRF tissue classifier on the masked T1: ``nclasses=K`` (DIPY adds one class for the
    zeroed background itself, ``nclasses += 1`` in ``classify``), the darkest class is the background."""
    dipy = _import("dipy")
    tissue = _import("dipy.segment.tissue")
    k = dataset.n_classes
    t1, mask = _parts(case)
    beta = options.get("beta", DIPY_SETTINGS["beta"])
    max_iter = options.get("max_iter", DIPY_SETTINGS["max_iter"])
    settings = {"peer": "DIPY TissueClassifierHMRF", "dipy": dipy.__version__, "nclasses": k, "beta": beta,
                "max_iter": max_iter, "background": "the darkest class; its in-mask voxels go to CSF"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        masked = np.where(mask, t1, 0.0).astype(np.float64)
        _, final, _ = tissue.TissueClassifierHMRF(verbose=False).classify(masked, nclasses=k, beta=beta,
                                                                           max_iter=max_iter)
        final = np.asarray(final).astype(np.int64)
        if (final < 0).any():
            warnings.warn(f"DIPY's HMRF left {int((final < 0).sum())} voxel(s) unlabelled (-1): a class of zero "
                          "variance? they go to the darkest class", RuntimeWarning, stacklevel=1)
        values = np.unique(final)
        background = values[np.argmin([masked[final == v].mean() for v in values])]
        labels = rank_by_mean(final, t1, mask, k, background=int(background))
        seconds = time.perf_counter() - t0
    return _fit(labels, seconds, settings, caught)


def sklearn_gmm_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """scikit-learn's ``GaussianMixture`` (full covariances, ``random_state=seed``) on the z-scored
    T1 inside the mask."""
    sklearn = _import("sklearn")
    mixture = _import("sklearn.mixture")
    k = dataset.n_classes
    t1, mask = _parts(case)
    settings = {"peer": "scikit-learn GaussianMixture", "sklearn": sklearn.__version__, "n_components": k,
                "covariance_type": "full", "normalize": "mask", **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        x = t1[mask].astype(np.float64)
        x = ((x - x.mean()) / (x.std() or 1.0))[:, None]
        gm = mixture.GaussianMixture(n_components=k, covariance_type="full", random_state=seed, **options)
        raw = np.zeros(t1.shape, np.int64)
        raw[mask] = gm.fit(x).predict(x) + 1
        labels = rank_by_mean(raw, t1, mask, k)
        seconds = time.perf_counter() - t0
    return _fit(labels, seconds, settings, caught)


PEER_FITS: dict[str, Callable[..., Fit]] = {"atropos": atropos_fit, "atropos_n4": atropos_fit, "atropos_priors": atropos_fit,
                                            "dipy_hmrf": dipy_hmrf_fit, "sklearn_gmm": sklearn_gmm_fit}
"""The fit of each peer (the signature of :func:`.cases.segment_fit`)."""
