"""The deep methods' defaults that depend on the image's number of axes: on a volume no spare class
and a smoothed-posterior width of DEFAULT_SMOOTH_SIGMA_VOLUME voxels; on a 2D image deepSVG's spare
class and DEFAULT_SMOOTH_SIGMA pixels (docs/deep.md, "Defaults on volumes")."""

import json

import numpy as np
import pytest

from _helpers import check_error, two_region_image
from deepgmm import segment
from deepgmm.deep import DeepG, DeepSVG
from deepgmm.deep.regularizers import DEFAULT_SMOOTH_SIGMA, DEFAULT_SMOOTH_SIGMA_VOLUME, auto_smooth_sigma
from deepgmm.segmentation.spare import default_spare_classes, resolve_spare_classes

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(features=(8, 16), norm="instance")
FAST = dict(network=TINY, max_steps=4, min_steps=0, pretrain_steps=2)


def test_the_width_rule():
    assert (DEFAULT_SMOOTH_SIGMA, DEFAULT_SMOOTH_SIGMA_VOLUME) == (8.0, 4.0)
    assert auto_smooth_sigma(2) == 8.0 and auto_smooth_sigma(3) == 4.0 and auto_smooth_sigma(3, "auto") == 4.0
    assert auto_smooth_sigma(3, 6.0) == 6.0 and auto_smooth_sigma(2, (0.0, 3.0)) == (0.0, 3.0)  # given: as given
    assert DeepSVG().smooth_sigma == DeepG().smooth_sigma == "auto"
    with pytest.raises(ValueError, match="smooth_sigma must be 'auto'"):
        auto_smooth_sigma(3, "wide")


def test_the_spare_class_rule():
    assert default_spare_classes("deepsvg", 2) == 1 and default_spare_classes("deepsvg", 3) == 0
    assert all(default_spare_classes(m, d) == 0 for m in ("gmm", "svgmm", "deepg") for d in (2, 3))
    assert resolve_spare_classes(None, "deepsvg", {}, 3) == 0 and resolve_spare_classes(None, "deepsvg", {}) == 1
    assert resolve_spare_classes(2, "deepsvg", {}, 3) == 2  # a given number holds on volumes too
    assert resolve_spare_classes(None, "deepsvg", {"mu_prior": [[0.0], [1.0]]}, 2) == 0
    with pytest.raises(ValueError, match="spare_classes must be >= 0"):
        resolve_spare_classes(-1, "deepsvg", {}, 3)


@pytest.mark.parametrize("cls", [DeepSVG, DeepG])
def test_the_estimators_default_width_is_the_rules(cls):
    """The default fit is bit for bit the fit with the rule's width given: 4 on a volume, 8 in 2D;
    another width gives another fit, so the width reaches the loss. ``smooth_sigma_`` records it."""
    vol, vmask = two_region_image((20, 18, 16))
    a = cls(n_components=2, fit_scale=1, **FAST).fit(vol, vmask)
    b = cls(n_components=2, fit_scale=1, smooth_sigma=4.0, **FAST).fit(vol, vmask)
    c = cls(n_components=2, fit_scale=1, smooth_sigma=8.0, **FAST).fit(vol, vmask)
    np.testing.assert_array_equal(a.probabilities_, b.probabilities_)
    assert a.nll_history_ == b.nll_history_ and not np.array_equal(a.probabilities_, c.probabilities_)
    assert a.smooth_sigma_ == 4.0 and c.smooth_sigma_ == 8.0
    flat, fmask = two_region_image((40, 36))
    d = cls(n_components=2, fit_scale=1, **FAST).fit(flat, fmask)
    e = cls(n_components=2, fit_scale=1, smooth_sigma=8.0, **FAST).fit(flat, fmask)
    np.testing.assert_array_equal(d.probabilities_, e.probabilities_)
    assert d.smooth_sigma_ == 8.0
    with pytest.raises(ValueError, match="smooth_sigma must be 'auto'"):
        cls(n_components=2, smooth_sigma="wide", **FAST).fit(vol, vmask)


def test_segment_fits_a_volume_without_the_spare_class():
    vol, vmask = two_region_image((20, 18, 16))
    seg = segment(vol, vmask, method="deepsvg", n_components=2, **FAST)
    assert seg.settings["spare_classes"] == 0 and "dropped_classes" not in seg.settings
    assert seg.model.n_components == 2 and seg.settings["smooth_sigma_used"] == 4.0
    same = segment(vol, vmask, method="deepsvg", n_components=2, spare_classes=0, smooth_sigma=4.0, **FAST)
    np.testing.assert_array_equal(seg.probabilities, same.probabilities)
    given = segment(vol, vmask, method="deepsvg", n_components=2, spare_classes=1, **FAST)
    assert given.settings["spare_classes"] == 1 and given.model.n_components == 3
    assert len(given.settings["dropped_classes"]) == 1
    flat, fmask = two_region_image((40, 36))
    two_d = segment(flat, fmask, method="deepsvg", n_components=2, **FAST)
    assert two_d.settings["spare_classes"] == 1 and two_d.model.n_components == 3
    assert two_d.settings["smooth_sigma_used"] == 8.0


def test_the_default_width_stays_in_voxels_with_a_spacing():
    """With ``spacing`` a given width is in mm, the default's is the rule's in voxels."""
    vol, vmask = two_region_image((20, 18, 16))
    auto = segment(vol, vmask, method="deepsvg", n_components=2, spacing=(2.0, 1.0, 1.0), **FAST)
    assert auto.settings["smooth_sigma_used"] == 4.0 and "smooth_sigma" not in auto.settings.get("widths_mm", {})
    mm = segment(vol, vmask, method="deepsvg", n_components=2, spacing=(2.0, 1.0, 1.0), smooth_sigma=4.0, **FAST)
    assert mm.settings["smooth_sigma_used"] == [2.0, 4.0, 4.0] and mm.settings["widths_mm"]["smooth_sigma"] == 4.0


def test_the_cli_reports_the_volume_defaults(tmp_path, capsys):
    import nibabel as nib

    from deepgmm.cli import main

    vol, vmask = two_region_image((20, 18, 16))
    nib.save(nib.Nifti1Image(vol[0], np.diag([2.0, 1.0, 1.0, 1.0])), tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(vmask.astype(np.uint8), np.diag([2.0, 1.0, 1.0, 1.0])), tmp_path / "m.nii.gz")
    base = ["segment", str(tmp_path / "x.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "-k", "2",
            "--method", "deepsvg", "--network", "tiny", "--max-steps", "4", "--pretrain-steps", "2"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "a" / "summary.json").read_text())["settings"]
    assert settings["spare_classes"] == 0 and settings["smooth_sigma_used"] == 4.0
    assert main(base + ["--smooth-sigma", "4", "--spare-classes", "1", "--out", str(tmp_path / "b")]) == 0
    settings = json.loads((tmp_path / "b" / "summary.json").read_text())["settings"]
    assert settings["spare_classes"] == 1 and settings["smooth_sigma_used"] == [2.0, 4.0, 4.0]  # mm from the header
    check_error(capsys, base + ["--smooth-sigma", "wide", "--out", str(tmp_path / "c")], "--smooth-sigma")
