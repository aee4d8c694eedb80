"""Per-image deep mixtures: :class:`DeepG` and :class:`DeepSVG` (the paper's Algorithm 3).

A fresh, seeded U-Net is fitted to one image: every step runs the network, computes the
closed-form M-step from its soft labels inside the graph and takes one AdamW step on the
mixture NLL (plus regularisers). Fitting stops when the NLL changes by less than ``tol``
in a step (after ``min_steps``), or after ``max_steps``.

``init="em"`` first fits the EM mixture of the same kind and distils its posteriors into
the network for ``pretrain_steps`` steps (soft cross-entropy), so the NLL phase starts in
the EM solution's basin instead of at random labels.

``fit_scale`` fits the network on a coarser grid for large images and volumes: the image (and
the EM start) is averaged over blocks of ``s`` pixels per axis inside the mask, every step runs
there, and the read-out happens at full resolution: the network's logits are interpolated back
to the image's grid, the M-step is taken there from them and the soft labels are the posteriors
``p_nk ~ w_nk N(x_n | mu_k, Sigma_k)`` of the full-resolution pixels with the interpolated soft
labels ``w`` as their per-pixel prior. ``fit_scale="auto"`` (default) is :func:`auto_fit_scale`:
volumes on a grid of at most :data:`FIT_VOXELS` voxels; 2D windows of up to :data:`FULL_PIXELS_2D`
pixels as they are, larger ones on a grid of at most :data:`FIT_PIXELS_2D` pixels. A fit on a coarser
grid stops after at most :data:`SCALED_MAX_STEPS` NLL steps unless ``max_steps`` is given.

``patch_size`` fits at full resolution on random patches instead (:mod:`deepgmm.deep.patches`): each
distillation and NLL step runs the network on one patch, its instance norms normalising with
statistics kept over the patches (the window's, not the patch's); the NLL step's M-step covers the
whole window (the patch's soft labels live, the other pixels' as last seen), and the read-out runs the
network tile by tile over the window. Such a fit takes :data:`PATCH_MAX_STEPS` NLL steps unless
``max_steps`` is given.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import mixture as em
from .._em_inputs import weight_map
from .._params import ParamsMixin, not_fitted
from .._validation import check_auto_or_int, check_choice, check_float, check_int, resolve_device
from ..choices import DEEP_INITS, FIT_LOSSES, PRECISIONS
from ..likelihood import COVARIANCE_TYPES
from ..mixture import EM_IMAGE_DEFAULTS
from ..preprocess import box_slices
from ..progress import Progress
from ..smoothing import as_sigmas, wants_smoothing
from .grid import block_means, uncrop, upsample
from .losses import DeepMixtureLoss
from .patches import (
    PatchSampler,
    patch_steps,
    refresh_statistics,
    start_cache,
    tile_progress,
    tiled_logits,
    updating_statistics,
    use_window_statistics,
)
from .readout import read_out
from .scale import (
    FIT_PIXELS_2D,
    FIT_VOXELS,
    FULL_PIXELS_2D,
    MAX_STEPS,
    PATCH_MAX_STEPS,
    SCALED_MAX_STEPS,
    auto_fit_scale,
    auto_readout_check,
    auto_readout_em,
)
from .optim import AdamW
from .precision import resolve_precision
from .regularizers import MuPrior, Regularizer, SmoothedPosterior, auto_smooth_sigma, build_regularizers
from .steps import FullReadout, ReadOut, ReadoutCheck, whole_steps
from .unet import UNet, UNetConfig, network_config

__all__ = ["DeepGMM", "DeepG", "DeepSVG", "DEEP_INITS", "FIT_VOXELS", "FIT_PIXELS_2D", "FULL_PIXELS_2D",
           "MAX_STEPS", "SCALED_MAX_STEPS", "PATCH_MAX_STEPS", "FIT_LOSSES", "auto_fit_scale"]

logger = logging.getLogger(__name__)

class DeepGMM(ParamsMixin):
    """Deep Gaussian mixture fitted to one image (use :class:`DeepG` or :class:`DeepSVG`).

    A per-image (transductive) model: ``fit(image, mask)`` trains a fresh network on that image
    and stores what it finds there in ``labels_`` / ``probabilities_`` (``fit_predict`` returns
    ``labels_``); ``predict(image, mask)`` / ``predict_proba(image, mask)`` apply the fitted
    network to an image, which they require, read out as the fit does. Its results are label
    *images*: 0 outside the mask, 1..K inside (as :func:`deepgmm.segment`), unlike the 0..K-1
    labels of the pixel-array estimators in :mod:`deepgmm.mixture`.

    Parameters
    ----------
    n_components : number of classes K
    covariance_type : "diag" or "full"; None (default): the method's default, "full" for deepSVG and
        "diag" for deepG (docs/deep.md: full covariances lift deepSVG on MyoPS)
    network : "fast" (default), "paper", "tiny", a dict of :class:`UNetConfig` settings or a config
    lr, weight_decay, grad_clip : AdamW learning rate, weight decay, gradient-norm clip
    tol, min_steps, max_steps : stop when ``|NLL change| < tol`` after ``min_steps``; at most ``max_steps``
        NLL steps (None, the default: :data:`MAX_STEPS` at full resolution, :data:`SCALED_MAX_STEPS` on a
        coarser grid)
    reg_covar : variance floor added in the M-step (default 0.3, in the units of z-scored channels)
    tv : weight of the total-variation term on the soft labels; None: the method's default, 0 (on
        MyoPS it hurts deepG, and adds nothing to deepSVG's smoothed-posterior term: docs/deep.md)
    smooth, smooth_sigma : weight and width (pixels, or one per axis) of the ``smoothed_posterior``
        term, which pulls the soft labels towards posteriors smoothed by a Gaussian (the smoothed
        SVGMM's weight update); the posteriors are taken with the soft labels as per-pixel prior
        (for deepSVG these are its mixing weights; for deepG, ``prior="labels"`` instead of its
        global weights, which made the small classes collapse). smooth None: the method's
        default, 1 for both (docs/deep.md). smooth_sigma "auto" (default): 8 pixels on 2D images,
        4 voxels on volumes (:func:`deepgmm.deep.regularizers.auto_smooth_sigma`; resolved in
        ``smooth_sigma_``). For a volume of thick slices give the slice axis its own width, e.g.
        ``(0, 4, 4)``
    balance : weight of the ``balance`` term against vanishing classes; None: the method's
        default, 1 for deepG (it keeps the smoothed-posterior term from emptying small classes)
        and 0 for deepSVG
    regularizers : further loss terms (see :mod:`deepgmm.deep.regularizers`)
    mu_prior, lam : shortcut for the ``mu_prior`` regulariser: ``(K, C)`` class means (array or file)
    init : "em" (distil the EM posteriors first) or "random" (the paper)
    init_smooth_sigma : with ``init="em"``, a positive value (pixels, or one per axis) starts both deep
        methods from the smoothed SVGMM (:class:`deepgmm.mixture.SpatiallyVariantGMM` with this
        ``smooth_sigma``) instead of the plain EM mixture of the same kind; 0 (default): plain EM
    pretrain_steps, pretrain_lr : the distillation phase of ``init="em"``
    crop_margin : fit on the mask's bounding box grown by this many pixels (None: the whole image).
        The loss only sees the mask, so this saves time without changing what is modelled.
    fit_scale : "auto" (default) or an integer ``s >= 1``: fit the network on the (cropped) image
        averaged over blocks of ``s`` pixels per axis inside the mask and read out at full resolution
        (the module's docstring). 1: every step at full resolution. "auto": :func:`auto_fit_scale` (a
        volume: the smallest ``s`` whose grid has at most :data:`FIT_VOXELS` voxels; a 2D window of up to
        160x160 pixels: 1; a larger one: the smallest ``s`` whose grid has at most 128x128 pixels)
    fit_loss : with ``fit_scale > 1``, what the NLL steps score: "grid" (default), the mixture of the
        grid's block means; "full", the mixture of the window's pixels under the interpolated logits
        (the read-out's mixture: the network still runs on the grid, the loss and its gradient at full
        resolution). Block means of thin structures are partial volumes, a mode of their own that a
        class can drift to on the grid (docs/deep.md, "Why the deep fit degrades on brain volumes")
    patch_size : None (default) or an integer >= 8: fit at full resolution with every step on one random
        patch of this many pixels per axis (the module's docstring): the network's instance norms with the
        window's statistics, the M-step over the whole window, the read-out tile by tile; the NLL steps
        run ``max_steps`` (None: :data:`PATCH_MAX_STEPS`), with no ``tol`` test. Memory and time grow with
        the patch, not the window (docs/deep.md, "Volumes on patches"). Not with ``fit_scale > 1``
    readout_em : with ``fit_scale > 1``, EM iterations of the read-out at full resolution: the
        interpolated soft labels stay the per-pixel weights, the means and covariances are re-estimated
        from the posteriors instead of from the (blurred) soft labels; 0: one M-step from the soft
        labels. "auto" (default): :data:`READOUT_EM_VOLUME` for a volume on a coarser grid, 0 in 2D
        (:func:`deepgmm.deep.scale.auto_readout_em`; resolved in ``readout_em_``)
    readout_check : with ``fit_scale > 1``, every how many NLL steps the network is read out at full
        resolution (read-out EM included) to keep the steps only while they lower the read-out's NLL
        by more than ``tol``: the network of the lowest one, from the distilled start on (step 0; from
        a random start, step ``min_steps`` on), is kept and the steps stop at the first check that does
        not lower it (:class:`deepgmm.deep.steps.ReadoutCheck`); 0: no check. "auto" (default):
        :data:`READOUT_CHECK_VOLUME` for a volume on a coarser grid, 0 in 2D
        (:func:`deepgmm.deep.scale.auto_readout_check`; resolved in ``readout_check_``)
    precision : the network's arithmetic (:mod:`deepgmm.deep.precision`): "auto" (default: bfloat16
        under autocast on a CPU with native bfloat16 instructions, else float32), "float32" or
        "bfloat16". The likelihood, M-step and losses stay in the image's dtype
    random_state : seed of the network's weights and of the EM start
    device : "cpu", "cuda" or "auto"
    progress : show a progress bar (steps, NLL) on stderr; without one, the fit's progress is logged
        (INFO, at most one line every few seconds: :class:`deepgmm.progress.Progress`)

    Attributes
    ----------
    network_ : the fitted :class:`UNet`
    probabilities_ : ndarray ``(K, *spatial)`` float32 soft labels of the fitted image (zero outside the mask)
    labels_ : ndarray ``(*spatial)`` uint8 (int32 for K >= 255) labels of the fitted image: 0 outside
        the mask, 1..K inside (the argmax of ``probabilities_`` plus one)
    means_, covariances_ : ``(K, C)``, ``(K, C)`` or ``(K, C, C)``; covariance_type_ : the one fitted
    weights_ : ``(K,)`` class proportions over the mask
    nll_ : final NLL (at full resolution; with ``readout_em``, at the read-out's parameters);
        nll_history_ : NLL at every step (on the fitted grid); loss_ : the loss of the last read-out
        before ``readout_em``;
    n_iter_, fit_seconds_; converged_ : whether the ``tol`` rule or the read-out check ended the steps
    fit_scale_ : the block size ``s`` the network was fitted at (1: full resolution)
    readout_em_ : the read-out's EM iterations the fit ran (``readout_em`` resolved; 0 at full resolution)
    readout_check_ : ``readout_check`` resolved (0: none ran); readout_checks_ : ``(step, NLL)`` of each
        check; kept_step_ : the step whose network was kept (``n_iter_`` without a check)
    smooth_sigma_ : the smoothed-posterior term's width (``smooth_sigma`` resolved, full-resolution pixels)
    patch_size_ : the patch ``(*p)`` of a fit on patches (prediction runs tile by tile at it), else None
    precision_ : the network's arithmetic in the fit, "float32" or "bfloat16"
    """

    _input_tags = {"two_d_array": False, "three_d_array": True}  # one image (C, *spatial), not (N, C) rows
    _mixture = "svgmm"
    _default_tv = 0.0
    _default_smooth = 1.0
    _default_balance = 0.0
    _smooth_prior = "mixture"  # for deepSVG the mixture's weights are its soft labels
    _default_covariance = "full"

    def __init__(
        self,
        *,
        n_components: int = 4,
        covariance_type: str | None = None,
        network: str | dict[str, Any] | UNetConfig = "fast",
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        grad_clip: float = 12.0,
        tol: float = 1e-3,
        min_steps: int = 10,
        max_steps: int | None = None,
        reg_covar: float = 0.3,
        tv: float | None = None,
        smooth: float | None = None,
        smooth_sigma: float | Sequence[float] | str = "auto",
        balance: float | None = None,
        regularizers: Sequence[Any] | None = None,
        mu_prior: Any = None,
        lam: float = 1.0,
        init: str = "em",
        init_smooth_sigma: float | Sequence[float] = 0.0,
        pretrain_steps: int = 30,
        pretrain_lr: float = 3e-3,
        crop_margin: int | None = 16,
        fit_scale: int | str = "auto",
        fit_loss: str = "grid",
        readout_em: int | str = "auto",
        readout_check: int | str = "auto",
        patch_size: int | None = None,
        precision: str = "auto",
        random_state: int | None = 0,
        device: str | torch.device | None = "cpu",
        progress: bool = False,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.network = network
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.tol = tol
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.reg_covar = reg_covar
        self.tv = tv
        self.smooth = smooth
        self.smooth_sigma = smooth_sigma
        self.balance = balance
        self.regularizers = regularizers
        self.mu_prior = mu_prior
        self.lam = lam
        self.init = init
        self.init_smooth_sigma = init_smooth_sigma
        self.pretrain_steps = pretrain_steps
        self.pretrain_lr = pretrain_lr
        self.crop_margin = crop_margin
        self.fit_scale = fit_scale
        self.fit_loss = fit_loss
        self.readout_em = readout_em
        self.readout_check = readout_check
        self.patch_size = patch_size
        self.precision = precision
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def _validate(self, spatial_dims: int) -> list[Regularizer]:
        check_int("n_components", self.n_components, minimum=1)
        if self.covariance_type is not None:
            check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        check_float("lr", self.lr, minimum=0.0, strict=True)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("grad_clip", self.grad_clip, minimum=0.0, strict=True)
        check_float("tol", self.tol, minimum=0.0)
        check_int("min_steps", self.min_steps, minimum=0)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, minimum=0)
        check_float("reg_covar", self.reg_covar, minimum=0.0)
        check_float("lam", self.lam, minimum=0.0)
        if self.tv is not None:
            check_float("tv", self.tv, minimum=0.0)
        check_choice("init", self.init, DEEP_INITS)
        self._init_sigmas_given()
        check_int("pretrain_steps", self.pretrain_steps, minimum=0)
        check_float("pretrain_lr", self.pretrain_lr, minimum=0.0, strict=True)
        if self.crop_margin is not None:
            check_int("crop_margin", self.crop_margin, minimum=0)
        check_auto_or_int("fit_scale", self.fit_scale, minimum=1)
        if self.patch_size is not None:
            check_int("patch_size", self.patch_size, minimum=8)
            if not isinstance(self.fit_scale, str) and int(self.fit_scale) > 1:
                raise ValueError(f"patch_size={self.patch_size} fits at full resolution; it cannot be combined with "
                                 f"fit_scale={self.fit_scale} (use fit_scale 1 or auto, or no patches)")
        check_choice("fit_loss", self.fit_loss, FIT_LOSSES)
        check_auto_or_int("readout_em", self.readout_em, minimum=0)
        check_auto_or_int("readout_check", self.readout_check, minimum=0)
        check_choice("precision", self.precision, PRECISIONS)
        if self.random_state is not None:
            check_int("random_state", self.random_state, minimum=0)
        if self.smooth is not None:
            check_float("smooth", self.smooth, minimum=0.0)
        if self.balance is not None:
            check_float("balance", self.balance, minimum=0.0)
        tv = self._default_tv if self.tv is None else self.tv
        smooth = self._default_smooth if self.smooth is None else self.smooth
        balance = self._default_balance if self.balance is None else self.balance
        sigma = auto_smooth_sigma(spatial_dims, self.smooth_sigma)
        return build_regularizers(self.regularizers, self.mu_prior, self.lam, tv, smooth, sigma, balance,
                                  self._smooth_prior)

    def _init_sigmas_given(self) -> bool:
        """Whether ``init_smooth_sigma`` asks for smoothing (validated; the number of axes is checked
        once the image is known)."""
        return wants_smoothing("init_smooth_sigma", self.init_smooth_sigma)

    # ------------------------------------------------------------------ fitting
    def fit(self, image: Any, mask: Any = None, sample_weight: Any = None) -> "DeepGMM":
        """Fit to one image ``(C, *spatial)`` (2D or 3D) over ``mask`` ``(*spatial)`` (default: all pixels).

        ``sample_weight`` ``(*spatial)`` >= 0, optional: pixel n counts ``sample_weight[n]`` times in
        the EM start, the distillation, the M-step and the NLL (on a coarser grid, a block counts
        its mean weight); the regularisers and the read-out still cover every pixel of the mask."""
        t0 = time.perf_counter()
        img = _image_tensor(image)
        regs = self._validate(img.ndim - 1)
        self.smooth_sigma_ = auto_smooth_sigma(img.ndim - 1, self.smooth_sigma)
        self.covariance_type_ = self.covariance_type or self._default_covariance
        dev = resolve_device(self.device)
        C, spatial = img.shape[0], tuple(img.shape[1:])
        region = torch.ones(spatial, dtype=torch.bool) if mask is None else _mask_tensor(mask, spatial)
        n_region = int(region.sum())
        if n_region < self.n_components:
            raise ValueError(f"mask selects {n_region} pixel(s), fewer than n_components={self.n_components}")
        for r in regs:
            if isinstance(r, MuPrior):
                r.check(self.n_components, C)
            elif isinstance(r, SmoothedPosterior):
                r.check(len(spatial))
        full_region = region
        weight = None if sample_weight is None else _weight_tensor(sample_weight, spatial, region)
        window = box_slices(region, self.crop_margin)
        img, region = img[(slice(None),) + window], region[window]
        weight = None if weight is None else weight[window]
        patch, scale = self._resolve_patch(tuple(img.shape[1:])), self._resolve_scale(tuple(img.shape[1:]))
        img_fit, region_fit = self._downsample(img, region, scale)
        weight_fit = weight if weight is None or scale == 1 else block_means(weight[None], region, scale)[0][0]
        regs_fit = self._scaled_regularizers(regs, scale)  # regs itself at scale 1
        spatial = tuple(img_fit.shape[1:])
        if patch is not None:
            logger.info("%s: fitting the network on random %s patches of the %s window, read out tile by tile",
                        type(self).__name__, "x".join(map(str, patch)), "x".join(map(str, spatial)))
        elif scale > 1:
            logger.info("%s: fitting the network on a %s grid (fit_scale %d) of the %s window, read out at full "
                        "resolution", type(self).__name__, "x".join(map(str, spatial)), scale,
                        "x".join(map(str, img.shape[1:])))
        cfg = network_config(self.network, spatial_dims=len(spatial), in_channels=C, out_channels=self.n_components)
        seed = self.random_state if self.random_state is not None else int(np.random.SeedSequence().generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = UNet(cfg)
        net.check_input((1, C) + (spatial if patch is None else patch))
        net = net.to(dev)
        if patch is not None:
            use_window_statistics(net)
        net.compute_dtype = resolve_precision(self.precision, dev)
        self.precision_ = net.precision
        logger.info("%s: the network computes in %s (precision=%r)", type(self).__name__, self.precision_,
                    self.precision)
        x = img_fit.to(dev).unsqueeze(0)  # (1, C, *spatial) on the fitted grid
        m = region_fit.to(dev).unsqueeze(0).to(x.dtype)  # (1, *spatial)
        w = None if weight is None else weight_fit.to(dev).unsqueeze(0).to(x.dtype)  # (1, *spatial)
        mw = m if w is None else m * w  # each pixel's count in the M-step and the NLL

        def sampler(stream: int) -> PatchSampler | None:  # the distillation's patches: 0; the NLL steps': 1
            return None if patch is None else PatchSampler(region, patch, torch.Generator().manual_seed(seed + stream))
        loss_fn = DeepMixtureLoss(mixture=self._mixture, covariance_type=self.covariance_type_,
                                  reg_covar=self.reg_covar, regularizers=regs_fit)

        max_steps = self._resolve_max_steps(scale, patch)
        self.readout_em_ = auto_readout_em(len(spatial), scale, self.readout_em)  # the iterations run
        bar = Progress(self.pretrain_steps * (self.init == "em") + max_steps, type(self).__name__, logger,
                       bar=bool(self.progress), final=None, leave=False)
        with bar:  # the bar closed, or the last line logged, also on an error
            if self.init == "em":
                prior = next((r.mu_data.numpy() for r in regs if isinstance(r, MuPrior)), None)
                target = self._em_posteriors(img, region, seed, prior, weight)  # (1, K, *window)
                target = self._target_to_fit(target, region, scale).to(dev)  # (1, K, *spatial)
                self._distil(net, x, mw, target, bar, sampler(0))

            full_x = img.to(dev).unsqueeze(0) if scale > 1 else x  # (1, C, *window)
            full_m = region.to(dev).unsqueeze(0).to(x.dtype) if scale > 1 else m
            full_w = w if scale == 1 or w is None else weight.to(dev).unsqueeze(0).to(x.dtype)
            read_loss = loss_fn if scale == 1 else DeepMixtureLoss(  # the full resolution's regularisers
                mixture=self._mixture, covariance_type=self.covariance_type_, reg_covar=self.reg_covar,
                regularizers=regs)
            opt = AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            patches = sampler(1)
            if patches is not None:
                refresh_statistics(net, x, patches)
                with self._tiles(spatial, patch, "soft labels of the window") as tiles_done:
                    cache = start_cache(net, x, mw[0], patch, self.n_components, self.covariance_type_, self.reg_covar,
                                        on_tile=tiles_done.step)
                history = patch_steps(net, x, mw, patches, cache, loss_fn, opt, steps=max_steps,
                                      grad_clip=self.grad_clip, on_step=lambda v: bar.step(nll=v))
                n_iter, converged = len(history), False
            else:
                read = FullReadout(x, full_x, full_m, full_w, read_loss, scale, self.readout_em_)
                every = auto_readout_check(len(spatial), scale, self.readout_check)
                distilled = self.init == "em" and self.pretrain_steps > 0  # else step 0 is a random network
                check = ReadoutCheck(net, read, every, self.tol, 0 if distilled else self.min_steps) if every else None
                if scale > 1 and self.fit_loss == "full":  # the loss on the window's pixels
                    def step_loss() -> Any:
                        return read_loss(full_x, upsample(net(x), scale, tuple(full_x.shape[2:])), full_m,
                                         weight=full_w)
                else:
                    def step_loss() -> Any:
                        return loss_fn(x, net(x), m, weight=w)
                history, n_iter, converged, kept = whole_steps(
                    net, opt, step_loss, max_steps=max_steps, tol=self.tol, min_steps=self.min_steps,
                    grad_clip=self.grad_clip, bar=bar, check=check,
                    nll_name="grid nll" if scale > 1 and self.fit_loss != "full" else "nll")

        if patches is not None:
            refresh_statistics(net, x, patches)
            with torch.no_grad(), self._tiles(spatial, patch, "read-out") as tiles_done:
                logits = tiled_logits(net, x, patch, self.n_components, on_tile=tiles_done.step)  # (1, K, *window)
                final = ReadOut.of_loss(logits, read_loss(x, logits, m, weight=w))
            check = None
        else:
            final = kept if kept is not None else read(net)  # (1, K, *window) logits
        self.readout_check_ = 0 if check is None else check.every
        self.readout_checks_ = [] if check is None else list(check.checks)
        self.kept_step_ = n_iter if check is None else check.kept_step
        self.network_ = net.eval()
        self.network_config_ = cfg
        self.fit_scale_ = scale
        self.patch_size_ = patch
        self._set_results(final, region, history, n_iter, converged, regs, full_x)
        self.probabilities_, self.labels_ = uncrop(self.probabilities_, self.labels_, window,
                                                    tuple(full_region.shape))
        self.window_ = window
        self.fit_seconds_ = time.perf_counter() - t0
        note = f" (the network of step {self.kept_step_} kept by the read-out check)" if check is not None else ""
        logger.info("%s: NLL %.5f after %d steps%s in %.2f s", type(self).__name__, self.nll_, n_iter, note,
                    self.fit_seconds_)
        return self

    def _tiles(self, shape: tuple[int, ...], size: tuple[int, ...], what: str) -> Progress:
        """The progress of a pass over the tiles of a window of ``shape`` (a fit on patches)."""
        return tile_progress(shape, size, f"{type(self).__name__} {what}", logger, bar=bool(self.progress))

    def _resolve_patch(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The patch ``(*p)`` of a window of spatial ``shape`` (``patch_size`` on each axis, at most the
        window's), or None (``patch_size=None``) for steps on the whole (fitted) grid."""
        if self.patch_size is None:
            return None
        return tuple(min(int(self.patch_size), int(n)) for n in shape)

    def _resolve_scale(self, shape: tuple[int, ...]) -> int:
        """The block size ``s`` for a window of spatial ``shape``: ``fit_scale`` or the automatic one; 1 on
        patches (``patch_size``)."""
        if self.patch_size is not None:
            return 1
        if isinstance(self.fit_scale, str):
            return auto_fit_scale(shape)
        return int(self.fit_scale)

    def _resolve_max_steps(self, scale: int, patch: tuple[int, ...] | None = None) -> int:
        """The most NLL steps of a fit at block size ``scale`` (or on patches): ``max_steps`` or its default."""
        if self.max_steps is not None:
            return int(self.max_steps)
        if patch is not None:
            return PATCH_MAX_STEPS
        return MAX_STEPS if scale == 1 else SCALED_MAX_STEPS

    def _downsample(self, img: Tensor, region: Tensor, scale: int) -> tuple[Tensor, Tensor]:
        """``img`` ``(C, *S)`` and ``region`` ``(*S)`` on the grid of blocks of ``scale`` pixels per axis:
        ``(C, *ceil(S / scale))`` and its mask (blocks at least half inside ``region``). A block's value
        is the mean of its pixels inside ``region``, or of all its pixels where it has none there."""
        if scale == 1:
            return img, region
        img_low, frac = block_means(img, region, scale)
        region_low = frac >= 0.5
        if int(region_low.sum()) < self.n_components:
            raise ValueError(f"fit_scale={scale} leaves {int(region_low.sum())} pixel(s) of the mask on the fitted "
                             f"grid, fewer than n_components={self.n_components}; use a smaller fit_scale (1: full "
                             "resolution)")
        return img_low, region_low

    def _target_to_fit(self, target: Tensor, region: Tensor, scale: int) -> Tensor:
        """EM soft labels ``(1, K, *S)`` (zero outside ``region``) as block means on the fitted grid."""
        if scale == 1:
            return target
        low, _ = block_means(target[0], region, scale)
        return low.unsqueeze(0)

    def _scaled_regularizers(self, regs: list[Regularizer], scale: int) -> list[Regularizer]:
        """``regs`` for the fitted grid: the smoothed-posterior term's width divided by ``scale``."""
        if scale == 1:
            return regs
        out: list[Regularizer] = []
        for r in regs:
            if isinstance(r, SmoothedPosterior):
                sigma = tuple(v / scale for v in r.sigma) if np.ndim(r.sigma) else r.sigma / scale
                r = SmoothedPosterior(r.lam, sigma, r.prior)
            out.append(r)
        return out

    def _em_posteriors(self, img: Tensor, region: Tensor, seed: int, prior: np.ndarray | None,
                       weight: Tensor | None) -> Tensor:
        """EM soft labels ``(1, K, *spatial)`` for the warm start (prior order if ``mu_prior``; each
        pixel of ``region`` counting ``weight`` ``(*spatial)`` times, if given)."""
        smooth = self._init_sigmas_given()
        method = "svgmm" if self._mixture == "svgmm" or smooth else "gmm"
        settings = dict(EM_IMAGE_DEFAULTS[method])
        settings.update(n_components=self.n_components, covariance_type=self.covariance_type_,
                        reg_covar=self.reg_covar, random_state=seed)
        if prior is not None:  # start at the prior's means: the classes come out in its order
            settings.update(init="means", means_init=prior, n_init=1)
        X = img[:, region].T.double()
        sw = None if weight is None else weight[region].double().numpy()
        if smooth:
            try:
                sigmas = as_sigmas(self.init_smooth_sigma, region.ndim)
            except ValueError as exc:  # a wrong number of axes
                raise ValueError(f"init_smooth_sigma: {exc}") from None
            est = em.SpatiallyVariantGMM(smooth_sigma=sigmas, **settings).fit(X, mask=region, sample_weight=sw)
        else:
            cls = em.SpatiallyVariantGMM if method == "svgmm" else em.GaussianMixture
            est = cls(**settings).fit(X, sample_weight=sw)
        # the fitted pixels' probabilities (the SVGMM's per-pixel ones exist for them only)
        proba = torch.as_tensor(est.probabilities_ if est._spatial else est.predict_proba(X),
                                dtype=img.dtype)  # (N, K)
        target = torch.zeros((self.n_components,) + tuple(region.shape), dtype=img.dtype)
        target[:, region] = proba.T
        self.em_model_ = est
        return target.unsqueeze(0)

    def _distil(self, net: UNet, x: Tensor, m: Tensor, target: Tensor, bar: Progress,
                patches: PatchSampler | None = None) -> None:
        """Soft cross-entropy to ``target`` ``(1, K, *spatial)`` over the mask ``m`` ``(1, *spatial)``; with
        ``patches``, each step on one of its random patches."""
        if self.pretrain_steps == 0:
            return
        opt = AdamW(net.parameters(), lr=self.pretrain_lr, weight_decay=self.weight_decay)
        x_all, m_all, t_all = x, m, target
        for _ in range(self.pretrain_steps):
            if patches is not None:
                sl = (slice(None), slice(None)) + patches()
                x, m, target = x_all[sl], m_all[(slice(None),) + sl[2:]], t_all[sl]
            denom = m.sum().clamp_min(torch.finfo(m.dtype).tiny)
            with updating_statistics(net) if patches is not None else contextlib.nullcontext():
                logp = torch.log_softmax(net(x), dim=1)
            loss = -((target * logp).sum(1) * m).sum() / denom
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            opt.step()
            bar.step(distil=loss.detach())  # a tensor: read only for a line or the bar

    def _read_out(self, logits: Tensor, region: Tensor, x: Tensor | None = None, means: Tensor | None = None,
                  covariances: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`deepgmm.deep.readout.read_out` with this estimator's covariance type."""
        return read_out(logits, region, self.covariance_type_, x, means, covariances)

    def _set_results(self, read: ReadOut, region: Tensor, history: list[float], n_iter: int, converged: bool,
                     regs: list[Regularizer], x: Tensor) -> None:
        """The fit's attributes from the kept network's read-out ``read`` on the window ``x`` ``(1, C, *window)``."""
        logits, means, covariances, nk = read.logits[0], read.means, read.covariances, read.nk
        given = (x[0], means, covariances) if self.fit_scale_ > 1 else ()
        self.probabilities_, self.labels_ = self._read_out(logits, region, *given)
        self.means_ = means.cpu().numpy()
        self.covariances_ = covariances.cpu().numpy()
        self.weights_ = (nk / nk.sum()).cpu().numpy()
        self.nll_ = read.nll
        self.loss_ = float(read.out.total)
        self.nll_history_ = history
        self.n_iter_ = n_iter
        self.converged_ = converged
        self.regularizers_ = [r.config() for r in regs]

    # ------------------------------------------------------------------ prediction
    def _is_fitted(self) -> bool:
        return hasattr(self, "network_")

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise not_fitted(f"this {type(self).__name__} is not fitted yet; call fit(image, mask) first")

    def fit_predict(self, image: Any, mask: Any = None) -> np.ndarray:
        """Fit to ``image`` ``(C, *spatial)`` over ``mask`` and return ``labels_`` ``(*spatial)``
        (0 outside the mask, 1..K inside)."""
        return self.fit(image, mask).labels_

    def _apply(self, image: Any, mask: Any, caller: str) -> tuple[np.ndarray, np.ndarray]:
        """The fitted network on ``image``, read out as the fit does: on the mask's bounding box grown
        by ``crop_margin``, soft labels zero and labels 0 outside the mask."""
        self._check_fitted()
        if image is None:
            raise ValueError(f"{type(self).__name__}.{caller} needs an image: {caller}(image, mask). The results "
                             "on the fitted image are labels_ and probabilities_ (fit_predict returns labels_)")
        img = _image_tensor(image)
        C, spatial = img.shape[0], tuple(img.shape[1:])
        cfg = self.network_config_
        if C != cfg.in_channels or len(spatial) != cfg.spatial_dims:
            raise ValueError(f"image has shape {tuple(img.shape)} but this {type(self).__name__} was fitted on "
                             f"{cfg.in_channels} channel(s) of a {cfg.spatial_dims}D image")
        region = torch.ones(spatial, dtype=torch.bool) if mask is None else _mask_tensor(mask, spatial)
        if not bool(region.any()):
            raise ValueError("mask is empty: it selects no pixel of the image")
        window = box_slices(region, self.crop_margin)
        full = img[(slice(None),) + window]  # (C, *window)
        scale = getattr(self, "fit_scale_", 1)
        low, _ = self._downsample(full, region[window], scale)
        x = low.unsqueeze(0)  # (1, C, *grid)
        self.network_.check_input(tuple(x.shape))
        dev = next(self.network_.parameters()).device
        patch = getattr(self, "patch_size_", None)
        with torch.no_grad():
            if patch is None:
                logits = upsample(self.network_(x.to(dev)), scale, tuple(full.shape[1:]))[0]
            else:  # tile by tile, as the fit read out
                size = tuple(min(p, int(n)) for p, n in zip(patch, full.shape[1:]))
                with self._tiles(tuple(full.shape[1:]), size, "predict") as tiles_done:
                    logits = tiled_logits(self.network_, x.to(dev), size, cfg.out_channels, on_tile=tiles_done.step)[0]
        given = ()
        if scale > 1:
            given = (full.to(dev), torch.as_tensor(self.means_), torch.as_tensor(self.covariances_))
        probs, labels = self._read_out(logits, region[window], *given)
        return uncrop(probs, labels, window, spatial)

    def predict_proba(self, image: Any, mask: Any = None) -> np.ndarray:
        """Soft labels ``(K, *spatial)`` float32 of the fitted network applied to ``image``
        ``(C, *spatial)`` (prepared as the fitted image was, e.g. z-scored), zero outside ``mask``
        ``(*spatial)`` (default: all pixels). On the fitted image and mask this is ``probabilities_``
        (for a network with batch norm or dropout up to the train/eval mode: the fit's read-out
        ran in train mode, prediction runs in eval mode)."""
        return self._apply(image, mask, "predict_proba")[0]

    def predict(self, image: Any, mask: Any = None) -> np.ndarray:
        """Labels ``(*spatial)`` of the fitted network applied to ``image`` ``(C, *spatial)``:
        0 outside ``mask`` (default: all pixels), 1..K inside; the dtype of ``labels_``."""
        return self._apply(image, mask, "predict")[1]


class DeepG(DeepGMM):
    """deepG: the network's soft labels define a GMM with ``pi_k = mean_n w_nk``.

    By default its loss adds the smoothed-posterior term with the soft labels as the posteriors'
    prior (``prior="labels"``) and a balance term of weight 1 (docs/deep.md, "deepG's spatial term").
    """

    _mixture = "gmm"
    _default_balance = 1.0
    _smooth_prior = "labels"
    _default_covariance = "diag"


class DeepSVG(DeepGMM):
    """deepSVG: the network's soft labels are the per-pixel mixing weights ``pi_nk = w_nk``.

    The estimator fits exactly ``n_components`` classes. ``segment(method="deepsvg")`` by default
    fits one more and drops the smallest (its ``spare_classes`` option, docs/deep.md).
    """

    _mixture = "svgmm"


def _image_tensor(image: Any) -> Tensor:
    t = image.detach().cpu() if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(image)))
    if t.ndim not in (3, 4):
        raise ValueError(f"image must have shape (C, H, W) or (C, D, H, W), got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("image contains NaN or Inf values; mask or fix them first")
    return t


def _mask_tensor(mask: Any, spatial: tuple[int, ...]) -> Tensor:
    m = mask.detach().cpu() if isinstance(mask, Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
    if tuple(m.shape) != spatial:
        raise ValueError(f"mask must have the image's spatial shape {spatial}, got {tuple(m.shape)}")
    return m != 0


def _weight_tensor(weight: Any, spatial: tuple[int, ...], region: Tensor) -> Tensor:
    """``sample_weight`` as float32 ``(*spatial)``, checked (finite, >= 0, not all zero in ``region``) and
    scaled to sum to the number of ``region``'s pixels."""
    w = weight_map(weight, spatial)
    total = float(w[region].sum())
    if not total > 0:
        raise ValueError("sample_weight is zero on every pixel of the mask: nothing to fit")
    return (w * (int(region.sum()) / total)).to(torch.float32)  # only the relative weights matter
