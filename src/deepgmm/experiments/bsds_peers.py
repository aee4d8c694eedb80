"""Peer methods of natural-image segmentation, run by the BSDS500 runner next to deepgmm's methods.

Each peer has the signature of :func:`.cases.segment_fit` (data set, case, method, seed, options)
and returns a :class:`.cases.Fit` with labels 1..n on every pixel (no mask) and ``nll`` None. A
case's ``source`` is a :class:`deepgmm.experiments.bsds.Photograph` (its RGB pixels); K is the data
set's number of classes, the same as deepgmm's methods get.

- ``kmeans``: scikit-learn's ``KMeans`` (k-means++, ``n_init=1``, ``random_state=seed``) on the
  colour features deepgmm fits (the first three channels of the case's image: the data set's colour
  space, z-scored per channel);
- ``kmeans_xy``: the same on colour and position, the position as two more features of weight
  :data:`KMEANS_XY_WEIGHT` (:func:`deepgmm.preprocess.photo_features`: weight 1 gives a
  coordinate the spread of one z-scored colour channel);
- ``sklearn_gmm``: scikit-learn's ``GaussianMixture`` (full covariances, k-means start,
  ``random_state=seed``) on the same colour features;
- ``kim_kanezaki``: Kim & Kanezaki (2020) on the RGB image (:mod:`.kim_kanezaki`; torch only);
  its own number of labels (it stops at :data:`.kim_kanezaki.KK_SETTINGS` ``min_labels``), not K.

The scikit-learn peers need the extra ``peers`` (``pip install -e '.[peers]'``); :func:`unavailable`
tells the runner when it is missing, so that they are skipped.
"""

from __future__ import annotations

import importlib
import time
import warnings
from typing import Any, Callable, Mapping

import numpy as np

from ..choices import BSDS_PEER_METHODS
from ..preprocess import photo_features
from .cases import Case, DataSet, Fit
from .kim_kanezaki import KK_SETTINGS, kim_kanezaki

__all__ = ["BSDS_PEER_METHODS", "BSDS_PEER_FITS", "KMEANS_XY_WEIGHT", "unavailable", "kmeans_fit", "sklearn_gmm_fit",
           "kim_kanezaki_fit"]

KMEANS_XY_WEIGHT = 1.0
"""Weight of the position features of ``kmeans_xy`` (1: a coordinate spreads like one colour channel)."""
_PACKAGES = {"kmeans": "sklearn", "kmeans_xy": "sklearn", "sklearn_gmm": "sklearn"}
NOT_INSTALLED = "skipped: not installed (pip install -e '.[peers]')"


def unavailable(method: str) -> str | None:
    """Why the peer ``method`` cannot run here (its package is missing), or None."""
    module = _PACKAGES.get(method)
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except ImportError:
        return f"{NOT_INSTALLED}: no module {module!r}"
    return None


def _fit(labels: np.ndarray, seconds: float, settings: Mapping[str, Any], caught: list,
         iterations: int | None = None, converged: bool | None = None) -> Fit:
    msgs = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    return Fit(labels, None, float(seconds), iterations, converged, dict(settings), msgs)  # type: ignore[arg-type]


def _colour(case: Case) -> np.ndarray:
    """The colour features ``(H*W, 3)`` float64 of ``case`` (its image's first three channels)."""
    return np.asarray(case.image[:3], np.float64).reshape(3, -1).T


def kmeans_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """k-means on colour (``method="kmeans"``) or on colour and position (``"kmeans_xy"``)."""
    sklearn = importlib.import_module("sklearn")
    cluster = importlib.import_module("sklearn.cluster")
    k = dataset.n_classes
    xy = method == "kmeans_xy"
    settings = {"peer": "scikit-learn KMeans", "sklearn": sklearn.__version__, "n_clusters": k, "init": "k-means++",
                "n_init": 1, "features": "colour + position" if xy else "colour", **options}
    if xy:
        settings["position_weight"] = KMEANS_XY_WEIGHT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        h, w = case.image.shape[1:]
        if xy:
            pos = photo_features(case.source.rgb, position_weight=KMEANS_XY_WEIGHT)[3:]
            x = np.concatenate([_colour(case), pos.reshape(2, -1).T.astype(np.float64)], axis=1)
        else:
            x = _colour(case)
        km = cluster.KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed, **options)
        labels = km.fit_predict(x).reshape(h, w).astype(np.int64) + 1
        seconds = time.perf_counter() - t0
    return _fit(labels, seconds, settings, caught, int(km.n_iter_))


def sklearn_gmm_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """scikit-learn's ``GaussianMixture`` (full covariances) on the colour features."""
    sklearn = importlib.import_module("sklearn")
    mixture = importlib.import_module("sklearn.mixture")
    k = dataset.n_classes
    settings = {"peer": "scikit-learn GaussianMixture", "sklearn": sklearn.__version__, "n_components": k,
                "covariance_type": "full", "features": "colour", **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        h, w = case.image.shape[1:]
        x = _colour(case)
        gm = mixture.GaussianMixture(n_components=k, covariance_type="full", random_state=seed, **options)
        labels = gm.fit(x).predict(x).reshape(h, w).astype(np.int64) + 1
        seconds = time.perf_counter() - t0
    return _fit(labels, seconds, settings, caught, int(gm.n_iter_), bool(gm.converged_))


def kim_kanezaki_fit(dataset: DataSet, case: Case, method: str, seed: int, options: Mapping[str, Any]) -> Fit:
    """Kim & Kanezaki (2020) on the case's RGB image, settings :data:`KK_SETTINGS` updated by ``options``."""
    import torch

    settings = {"peer": "Kim & Kanezaki (2020), written from the paper", "torch": torch.__version__,
                **KK_SETTINGS, **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = kim_kanezaki(case.source.rgb, seed=seed, **options)
    return _fit(res.labels, res.seconds, settings, caught, res.n_iter, res.stopped)


BSDS_PEER_FITS: dict[str, Callable[..., Fit]] = {"kmeans": kmeans_fit, "kmeans_xy": kmeans_fit,
                                                 "sklearn_gmm": sklearn_gmm_fit, "kim_kanezaki": kim_kanezaki_fit}
"""The fit of each peer (the signature of :func:`.cases.segment_fit`)."""
