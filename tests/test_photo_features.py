"""segment(features=...): a photograph's features (colour in L*a*b* + position) as the default for 8-bit RGB.

The reference is the path ``deepgmm bsds`` takes (``photo_features`` fitted with ``normalize="none"``),
written out here by hand; "auto" must pick it for uint8 RGB and nothing else.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from deepgmm import segment
from deepgmm.cli import main
from deepgmm.preprocess import PHOTO_POSITION_WEIGHT, PHOTO_SMOOTH_FRACTION, photo_features


def _photo(seed: int = 0, shape: tuple[int, int] = (40, 56)) -> np.ndarray:
    """``(3, H, W)`` uint8: a reddish sky band, a green field and a blue disc, with noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rows, cols = np.mgrid[:h, :w]
    colours = np.array([[200, 120, 110], [60, 150, 70], [40, 60, 190]], float)
    cls = np.where(rows < h // 3, 0, 1)
    cls[(rows - 2 * h // 3) ** 2 + (cols - w // 2) ** 2 < (h // 5) ** 2] = 2
    img = colours[cls].transpose(2, 0, 1) + rng.normal(0, 12, (3, h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_auto_fits_a_photographs_features_as_deepgmm_bsds_does():
    rgb = _photo()
    seg = segment(rgb, method="gmm", n_components=3)
    ref = segment(photo_features(rgb, "lab", PHOTO_POSITION_WEIGHT), method="gmm", n_components=3, normalize="none")
    np.testing.assert_array_equal(seg.labels, ref.labels)
    assert seg.nll == ref.nll
    rec = seg.settings["features"]
    assert rec == {"kind": "photo", "colour_space": "lab", "position_weight": PHOTO_POSITION_WEIGHT,
                   "channels": ["L*", "a*", "b*", "row", "column"]}
    assert seg.settings["normalize"] == "none" and seg.settings["colour_space"] == "lab"
    assert seg.means.shape == (3, 5)  # the five feature units
    explicit = segment(rgb, method="gmm", n_components=3, features="photo")
    np.testing.assert_array_equal(explicit.labels, seg.labels)


def test_svgmm_width_defaults_to_a_fraction_of_the_shorter_side_and_a_given_one_wins():
    rgb = _photo(1, (30, 44))
    seg = segment(rgb, method="svgmm", n_components=3)
    assert seg.settings["smooth_sigma"] == round(PHOTO_SMOOTH_FRACTION * 30, 2)
    ref = segment(photo_features(rgb, "lab", PHOTO_POSITION_WEIGHT), method="svgmm", n_components=3,
                  normalize="none", smooth_sigma=round(PHOTO_SMOOTH_FRACTION * 30, 2))
    np.testing.assert_array_equal(seg.labels, ref.labels)
    assert segment(rgb, method="svgmm", n_components=3, smooth_sigma=2.5).settings["smooth_sigma"] == 2.5


def test_other_images_keep_their_channels():
    rgb = _photo(2)
    as_float = segment(rgb.astype(np.float32), method="gmm", n_components=3)
    channels = segment(rgb, method="gmm", n_components=3, features="channels")
    np.testing.assert_array_equal(as_float.labels, channels.labels)
    assert as_float.settings["features"] == {"kind": "channels"}
    assert as_float.settings["normalize"] == "mask" and as_float.settings["colour_space"] == "rgb"
    assert as_float.means.shape == (3, 3)
    grey = segment(rgb[:1], method="gmm", n_components=3)  # uint8, one channel
    volume = segment(np.stack([rgb] * 4, axis=1), method="gmm", n_components=3)  # uint8 RGB, 3D
    assert grey.settings["features"]["kind"] == volume.settings["features"]["kind"] == "channels"
    lab = segment(rgb, method="gmm", n_components=3, features="channels", colour_space="lab")
    assert lab.settings["colour_space"] == "lab" and lab.settings["normalize"] == "mask"


def test_photo_features_in_rgb_and_a_given_normalisation():
    rgb = _photo(3)
    seg = segment(rgb, method="gmm", n_components=3, colour_space="rgb", normalize="image")
    assert seg.settings["features"]["channels"] == ["R", "G", "B", "row", "column"]
    ref = segment(photo_features(rgb, "rgb", PHOTO_POSITION_WEIGHT), method="gmm", n_components=3, normalize="image")
    np.testing.assert_array_equal(seg.labels, ref.labels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(features="pixels"), "features"),
    (dict(features="photo", image=np.zeros((4, 8, 8), np.uint8)), "RGB photograph"),
    (dict(features="photo", image=np.zeros((3, 4, 8, 8), np.uint8)), "RGB photograph"),
    (dict(bias_field=2), "bias_field"),
    (dict(mu_prior=np.zeros((3, 3))), "prior_units='normalized'"),
])
def test_photo_errors(kwargs, match):
    image = kwargs.pop("image", _photo(4))
    with pytest.raises(ValueError, match=match):
        segment(image, method="gmm", n_components=3, **kwargs)


def test_cli_takes_a_jpeg_for_a_photograph_and_a_flag_turns_it_off(tmp_path, capsys):
    rgb = _photo(5)
    path = tmp_path / "photo.png"
    PILImage.fromarray(rgb.transpose(1, 2, 0)).save(path)
    assert main(["segment", str(path), "--method", "gmm", "-k", "3", "--out", str(tmp_path / "a")]) == 0
    assert "photograph's features (L*, a*, b*, row, column)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["settings"]["features"]["kind"] == "photo" and summary["options_given"] == {}
    assert main(["segment", str(path), "--method", "gmm", "-k", "3", "--features", "channels",
                 "--out", str(tmp_path / "b")]) == 0
    assert "photograph" not in capsys.readouterr().out
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["settings"]["features"] == {"kind": "channels"}
    np.save(tmp_path / "photo.npy", rgb.astype(np.float32))  # not an image file: channels
    assert main(["segment", str(tmp_path / "photo.npy"), "--method", "gmm", "-k", "3", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["settings"]["features"] == {"kind": "channels"}
