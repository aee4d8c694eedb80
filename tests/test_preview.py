"""``deepgmm segment --preview`` and :mod:`deepgmm.experiments.preview`: the panels against loops over
the pixels, the figure for 2D, 3D and photographs, and the CLI's output and errors."""

import json

import numpy as np
import pytest
from PIL import Image

from _helpers import check_error, two_region_image
from deepgmm.cli import main
from deepgmm.experiments.preview import label_colours, preview_panels, save_preview


def test_label_colours_are_black_then_distinct():
    for k in (1, 4, 10, 11, 20, 25):
        cols = label_colours(k)
        assert cols.shape == (k + 1, 3) and np.all((cols >= 0) & (cols <= 1))
        assert np.array_equal(cols[0], [0, 0, 0])
        assert len({tuple(np.round(c, 6)) for c in cols}) == k + 1


def test_photo_panels_paint_each_label_in_its_mean_colour_with_black_boundaries():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 6, 7)).astype(np.float32)
    labels = np.ones((6, 7), np.uint8)
    labels[:, 4:] = 2
    labels[4:, :2] = 3
    left, right = preview_panels(rgb, labels, photo=True)
    np.testing.assert_allclose(left, np.moveaxis(rgb, 0, -1) / 255.0)
    for i in range(6):
        for j in range(7):
            edge = (i + 1 < 6 and labels[i + 1, j] != labels[i, j]) or (j + 1 < 7 and labels[i, j + 1] != labels[i, j])
            if edge:
                np.testing.assert_array_equal(right[i, j], 0.0)
            else:
                same = labels == labels[i, j]
                np.testing.assert_allclose(right[i, j], [rgb[c][same].mean() / 255.0 for c in range(3)])


def test_grey_panels_stretch_the_first_channel_and_tint_the_labels():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, 8, 9))
    mask = np.zeros((8, 9), bool)
    mask[2:7, 1:8] = True
    labels = np.where(mask, 1 + (np.arange(9)[None, :] > 4), 0).astype(np.uint8)
    left, right = preview_panels(img, labels, mask)
    lo, hi = np.percentile(img[0][mask], [1, 99])
    grey = np.clip((img[0] - lo) / (hi - lo), 0, 1)
    cols = label_colours(2)
    for i in range(8):
        for j in range(9):
            np.testing.assert_allclose(left[i, j], [grey[i, j]] * 3)
            want = 0.5 * grey[i, j] + (0.5 * cols[labels[i, j]] if labels[i, j] else 0.0)
            np.testing.assert_allclose(right[i, j], want * np.ones(3))


def test_given_levels_and_number_of_classes():
    img = np.linspace(-1.0, 3.0, 12).reshape(1, 3, 4)
    labels = np.ones((3, 4), np.uint8)
    left, right = preview_panels(img, labels, levels=(0.0, 2.0), n_classes=11)
    np.testing.assert_allclose(left[..., 0], np.clip(img[0] / 2.0, 0, 1))
    np.testing.assert_allclose(right[0, 0], 0.5 * left[0, 0] + 0.5 * label_colours(11)[1])
    assert not np.allclose(label_colours(11)[2], label_colours(2)[2])  # tab20 past 10 classes


@pytest.mark.parametrize("shape", [(30, 40), (20, 16, 12)])
def test_save_preview_writes_a_png(tmp_path, shape):
    img, mask = two_region_image(shape)
    labels = np.where(mask, 1 + (img[0] > img[0][mask].mean()), 0).astype(np.uint8)
    path = tmp_path / "p.png"
    save_preview(path, img, labels, mask, spacing=None if len(shape) == 2 else (1.0, 2.0, 1.0), title="t")
    arr = np.asarray(Image.open(path).convert("RGB"))
    assert arr.shape[0] > 100 and arr.shape[1] > 100 and arr.std() > 10  # drawn, not blank
    save_preview(tmp_path / "nomask.png", img, labels, n_classes=4)  # no mask: planes through the image's centre
    assert (tmp_path / "nomask.png").stat().st_size > 0


def test_cli_preview(tmp_path, capsys):
    import nibabel as nib

    img, mask = two_region_image((20, 16, 12))
    nib.save(nib.Nifti1Image(img[0].astype(np.float32), np.diag([1.0, 2.0, 1.0, 1.0])), tmp_path / "x.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.diag([1.0, 2.0, 1.0, 1.0])), tmp_path / "m.nii.gz")
    base = ["segment", str(tmp_path / "x.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "-k", "2", "--method", "gmm"]
    assert main(base + ["--preview", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "preview.png" in out
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["outputs"]["preview"] == "preview.png"
    assert Image.open(tmp_path / "a" / "preview.png").size[0] > 100
    assert main(base + ["--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / "preview.png").exists()
    assert "preview" not in json.loads((tmp_path / "b" / "summary.json").read_text())["outputs"]
    check_error(capsys, ["segment", "--data", str(tmp_path), "-k", "2", "--method", "gmm", "--preview", "--out",
                         str(tmp_path / "c")], "--preview")


def test_cli_preview_of_a_photograph(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[:, :25] = (200, 40, 40)
    rgb[:, 25:] = (40, 40, 200)
    rgb = np.clip(rgb + rng.integers(-10, 10, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    assert main(["segment", str(tmp_path / "photo.png"), "-k", "2", "--method", "gmm", "--preview", "--out",
                 str(tmp_path / "o")]) == 0
    capsys.readouterr()
    arr = np.asarray(Image.open(tmp_path / "o" / "preview.png").convert("RGB")).astype(int)
    reddish = (arr[..., 0] > 150) & (arr[..., 2] < 90)
    bluish = (arr[..., 2] > 150) & (arr[..., 0] < 90)
    assert reddish.sum() > 500 and bluish.sum() > 500  # the photograph and its regions in their own colours
