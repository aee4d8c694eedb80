"""Spatial widths in physical units: ``segment(spacing=...)`` and ``deepgmm segment``'s ``--sigma-units``."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from deepgmm import io as dio
from deepgmm import segment
from deepgmm.cli import main
from deepgmm.segmentation.core import _widths_to_voxels
from deepgmm.smoothing import as_spacing, widths_to_voxels


def volume(shape=(6, 8, 7), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 1.0, (1,) + shape)
    img[0, :, : shape[1] // 2] += 3.0
    return img


# ----------------------------------------------------------------------------- the conversion
def test_widths_to_voxels_hand_computation():
    assert widths_to_voxels(3.0, (1.5, 0.75, 1.0)) == (2.0, 4.0, 3.0)
    assert widths_to_voxels([0, 3, 6], (0.94, 1.5, 0.94)) == (0.0, 2.0, 6 / 0.94)
    assert widths_to_voxels(2, (0.5, 0.25)) == (4.0, 8.0)
    assert widths_to_voxels(0, (1, 2, 1)) == 0  # no smoothing stays no smoothing
    assert widths_to_voxels((0, 0, 0), (1, 2, 1)) == (0, 0, 0)
    assert widths_to_voxels(1.5, (1, 1)) == 1.5  # unit voxels: the widths as given
    assert widths_to_voxels([1.5, 1.5, 0], (1, 1)) == [1.5, 1.5, 0]  # checked by the estimator


def test_widths_to_voxels_in_settings():
    settings = {"smooth_sigma": 4, "init_smooth_sigma": (2, 4, 2), "tol": 1e-3,
                "regularizers": [{"name": "smoothed_posterior", "sigma": 2, "lam": 1.0}, "tv"]}
    out, given = _widths_to_voxels(settings, (1.0, 2.0, 0.5))
    assert out["smooth_sigma"] == (4.0, 2.0, 8.0)
    assert out["init_smooth_sigma"] == (2.0, 2.0, 4.0)
    assert out["regularizers"][0] == {"name": "smoothed_posterior", "sigma": (2.0, 1.0, 4.0), "lam": 1.0}
    assert out["regularizers"][1] == "tv" and out["tol"] == 1e-3
    assert given == {"smooth_sigma": 4, "init_smooth_sigma": (2, 4, 2), "regularizers": [2]}
    assert settings["smooth_sigma"] == 4  # the input is left as it was


@pytest.mark.parametrize("spacing, match", [
    ((1, 2), "one voxel size per spatial axis \\(3\\)"),
    ((1, 2, 1, 1), "one voxel size per spatial axis"),
    ((1, 0, 1), "positive finite"),
    ((1, -1, 1), "positive finite"),
    ((1, float("nan"), 1), "positive finite"),
    ((1, float("inf"), 1), "positive finite"),
    ("1,2,1", "one voxel size per spatial axis"),
    ((1, "a", 1), "one voxel size per spatial axis"),
    (2.0, "one voxel size per spatial axis"),
])
def test_bad_spacing_is_refused(spacing, match):
    with pytest.raises(ValueError, match=match):
        as_spacing(spacing, 3)
    with pytest.raises(ValueError, match="spacing"):
        segment(volume(), method="svgmm", n_components=2, spacing=spacing, smooth_sigma=2)


def test_bad_widths_with_spacing_are_refused():
    with pytest.raises(ValueError, match="smooth_sigma"):
        segment(volume(), method="svgmm", n_components=2, spacing=(1, 2, 1), smooth_sigma=(1, 2))
    with pytest.raises(ValueError, match="smooth_sigma"):
        segment(volume(), method="svgmm", n_components=2, spacing=(1, 2, 1), smooth_sigma=-1)


# ----------------------------------------------------------------------------- segment()
def test_spacing_equals_per_axis_voxel_sigmas_bit_for_bit():
    img = volume()
    a = segment(img, method="svgmm", n_components=2, spacing=(1, 2, 1), smooth_sigma=2)
    b = segment(img, method="svgmm", n_components=2, smooth_sigma=(2, 1, 2))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.means, b.means)
    assert a.nll == b.nll and a.n_iter == b.n_iter
    assert a.settings["smooth_sigma"] == [2.0, 1.0, 2.0]
    assert a.settings["spacing"] == [1.0, 2.0, 1.0]
    assert a.settings["widths_mm"] == {"smooth_sigma": 2}
    assert "spacing" not in b.settings and "widths_mm" not in b.settings


def test_spacing_none_is_unchanged_and_unit_spacing_is_pixels():
    img = volume()
    a = segment(img, method="svgmm", n_components=2, smooth_sigma=2)
    b = segment(img, method="svgmm", n_components=2, smooth_sigma=2, spacing=None)
    c = segment(img, method="svgmm", n_components=2, smooth_sigma=2, spacing=(1, 1, 1))
    for other in (b, c):
        np.testing.assert_array_equal(a.probabilities, other.probabilities)
        assert a.nll == other.nll
    assert a.settings["smooth_sigma"] == 2


def test_spacing_without_widths_changes_nothing():
    img = volume()
    a = segment(img, method="gmm", n_components=2)
    b = segment(img, method="gmm", n_components=2, spacing=(0.9, 1.5, 0.9))
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert b.settings["widths_mm"] == {} and b.settings["spacing"] == [0.9, 1.5, 0.9]


# ----------------------------------------------------------------------------- the command line
def _nifti_volume(path, affine):
    nib.save(nib.Nifti1Image(volume((8, 6, 7))[0].astype(np.float32), affine), path)


def test_cli_nifti_widths_in_mm(tmp_path, capsys):
    _nifti_volume(tmp_path / "vol.nii.gz", np.diag([1.0, 2.0, 1.0, 1.0]))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "vol.nii.gz"), "--method", "svgmm", "-k", "2", "--smooth-sigma", "2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["smooth_sigma"] == [2.0, 1.0, 2.0]
    assert summary["settings"]["spacing"] == [1.0, 2.0, 1.0]
    assert summary["inputs"]["voxel_sizes"] == [1.0, 2.0, 1.0] and summary["inputs"]["sigma_units"] == "mm"
    # the same as the widths in voxels per axis
    out2 = tmp_path / "out2"
    assert main(["segment", str(tmp_path / "vol.nii.gz"), "--method", "svgmm", "-k", "2", "--smooth-sigma", "2,1,2",
                 "--sigma-units", "voxels", "--out", str(out2)]) == 0
    summary2 = json.loads((out2 / "summary.json").read_text())
    assert summary2["settings"]["smooth_sigma"] == [2.0, 1.0, 2.0] and "spacing" not in summary2["settings"]
    assert summary2["inputs"]["sigma_units"] == "voxels"
    np.testing.assert_array_equal(dio.load_labels(out / "labels.nii.gz")[0], dio.load_labels(out2 / "labels.nii.gz")[0])
    # --sigma-units voxels: the width as given
    out3 = tmp_path / "out3"
    assert main(["segment", str(tmp_path / "vol.nii.gz"), "--method", "svgmm", "-k", "2", "--smooth-sigma", "2",
                 "--sigma-units", "voxels", "--out", str(out3)]) == 0
    assert json.loads((out3 / "summary.json").read_text())["settings"]["smooth_sigma"] == 2.0
    # no width given: nothing to convert, the settings as without voxel sizes
    out4 = tmp_path / "out4"
    assert main(["segment", str(tmp_path / "vol.nii.gz"), "--method", "svgmm", "-k", "2", "--out", str(out4)]) == 0
    summary4 = json.loads((out4 / "summary.json").read_text())
    assert "spacing" not in summary4["settings"] and summary4["inputs"]["sigma_units"] == "mm"


def test_cli_sigma_units_mm_refused_with_data(tmp_path, capsys):
    from _helpers import make_cohort

    make_cohort(tmp_path / "d", n=1)
    rc = main(["segment", "--data", str(tmp_path / "d"), "--method", "svgmm", "-k", "2", "--sigma-units", "mm",
               "--out", str(tmp_path / "o")])
    assert rc != 0 and "--sigma-units mm applies to IMG files" in capsys.readouterr().err


def test_cli_nifti_slice_voxel_sizes(tmp_path):
    nib.save(nib.Nifti1Image(volume((8, 6, 1))[0].astype(np.float32), np.diag([0.5, 2.0, 5.0, 1.0])),
             tmp_path / "slice.nii.gz")
    image = dio.load_image(tmp_path / "slice.nii.gz")
    assert image.ndim == 2 and image.voxel_sizes == (0.5, 2.0)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "slice.nii.gz"), "--method", "svgmm", "-k", "2", "--smooth-sigma", "1",
                 "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["settings"]["smooth_sigma"] == [2.0, 0.5]


def test_cli_png_widths_stay_in_pixels(tmp_path, capsys):
    grey = (np.clip(volume((1, 12, 10))[0, 0], -2, 5) * 30 + 60).astype(np.uint8)
    PILImage.fromarray(grey).save(tmp_path / "img.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "img.png"), "--method", "svgmm", "-k", "2", "--smooth-sigma", "2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["smooth_sigma"] == 2.0 and "spacing" not in summary["settings"]
    assert summary["inputs"]["voxel_sizes"] is None and summary["inputs"]["sigma_units"] == "voxels"
    capsys.readouterr()
    rc = main(["segment", str(tmp_path / "img.png"), "--method", "svgmm", "-k", "2", "--smooth-sigma", "2",
               "--sigma-units", "mm", "--out", str(tmp_path / "o2")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "--sigma-units mm needs the voxel sizes of a NIfTI header" in err and "img.png" in err
