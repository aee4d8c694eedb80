"""``deepgmm.io``: reading every format, stacking channels, atomic writers, OutputDir, and every error path."""

import gzip
import json
import os
import re
import shutil
import signal
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from deepgmm import io as dio
from deepgmm.io import files as dfiles
from deepgmm.io import formats as dformats
from deepgmm.io import (
    MARKER,
    Image,
    OutputDir,
    load_image,
    load_labels,
    load_mask,
    save_json,
    save_labels,
    save_probabilities,
)

AFFINE = np.array([[1.5, 0.0, 0.0, 10.0], [0.0, 2.0, 0.0, -5.0], [0.0, 0.0, 3.0, 2.0], [0, 0, 0, 1]])


def rng(seed=0):
    return np.random.default_rng(seed)


def write_nifti(path, data, affine=AFFINE, descrip=b"deepgmm test"):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header["descrip"] = descrip
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def hidden_leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- NIfTI
def test_nifti_3d_round_trip_keeps_affine_and_header(tmp_path):
    vol = rng().normal(size=(7, 6, 5)).astype(np.float32)
    write_nifti(tmp_path / "t1.nii.gz", vol)
    img = load_image(tmp_path / "t1.nii.gz")
    assert isinstance(img, Image) and img.kind == "nifti"
    assert img.data.shape == (1, 7, 6, 5) and img.data.dtype == np.float32
    assert img.spatial_shape == (7, 6, 5) and img.spatial_shape_on_disk == (7, 6, 5) and img.ndim == 3
    np.testing.assert_array_equal(img.data[0], vol)
    np.testing.assert_allclose(img.affine, AFFINE)

    labels = (rng(1).random((7, 6, 5)) * 4).astype(np.int64)
    save_labels(tmp_path / "labels.nii.gz", labels, like=img)
    out = nib.load(tmp_path / "labels.nii.gz")
    assert out.shape == (7, 6, 5) and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, AFFINE)
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"deepgmm test"
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert out.header.get_zooms() == pytest.approx((1.5, 2.0, 3.0))
    assert out.header.get_sform(coded=True)[1] == img.header.get_sform(coded=True)[1]
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), labels)

    probs = rng(2).dirichlet(np.ones(3), size=(7, 6, 5)).astype(np.float32)
    probs = np.moveaxis(probs, -1, 0)  # (K, X, Y, Z)
    save_probabilities(tmp_path / "p.nii.gz", probs, like=img)
    p = nib.load(tmp_path / "p.nii.gz")
    assert p.shape == (7, 6, 5, 3) and p.get_data_dtype() == np.float32
    np.testing.assert_allclose(p.affine, AFFINE)
    np.testing.assert_array_equal(np.asanyarray(p.dataobj), np.moveaxis(probs, 0, -1))
    # reading the probabilities back gives (K, *spatial)
    back = load_image(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(back.data, probs)


def test_nifti_2d_slice_stored_as_xy1_is_squeezed_and_restored(tmp_path):
    sl = rng().normal(size=(9, 8, 1)).astype(np.float32)
    write_nifti(tmp_path / "slice.nii", sl)
    img = load_image(str(tmp_path / "slice.nii"))
    assert img.data.shape == (1, 9, 8) and img.spatial_shape_on_disk == (9, 8, 1) and img.ndim == 2
    np.testing.assert_array_equal(img.data[0], sl[..., 0])

    labels = np.arange(72).reshape(9, 8) % 3 + 1
    save_labels(tmp_path / "l.nii.gz", labels, like=img)
    out = nib.load(tmp_path / "l.nii.gz")
    assert out.shape == (9, 8, 1)
    np.testing.assert_allclose(out.affine, AFFINE)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj)[..., 0], labels)
    lab, aff = load_labels(tmp_path / "l.nii.gz")
    assert lab.shape == (9, 8) and lab.dtype == np.int64
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_allclose(aff, AFFINE)

    probs = np.stack([labels == k for k in (1, 2, 3)]).astype(np.float32)
    save_probabilities(tmp_path / "p.nii.gz", probs, like=img)
    assert nib.load(tmp_path / "p.nii.gz").shape == (9, 8, 1, 3)
    np.testing.assert_array_equal(load_image(tmp_path / "p.nii.gz").data, probs)


def test_true_2d_nifti_probabilities_are_4d(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((5, 4), np.float32))
    img = load_image(tmp_path / "a.nii.gz")
    assert img.data.shape == (1, 5, 4) and img.spatial_shape_on_disk == (5, 4)
    save_probabilities(tmp_path / "p.nii.gz", np.full((2, 5, 4), 0.5, np.float32), like=img)
    assert nib.load(tmp_path / "p.nii.gz").shape == (5, 4, 1, 2)
    save_labels(tmp_path / "l.nii.gz", np.ones((5, 4), int), like=img)
    assert nib.load(tmp_path / "l.nii.gz").shape == (5, 4)


@pytest.mark.parametrize("shape_on_disk", [(6, 5, 4, 3), (6, 5, 4, 1, 3)])
def test_multichannel_nifti(tmp_path, shape_on_disk):
    arr = rng().normal(size=shape_on_disk).astype(np.float32)
    write_nifti(tmp_path / "m.nii.gz", arr)
    img = load_image(tmp_path / "m.nii.gz")
    assert img.data.shape == (3, 6, 5, 4) and img.spatial_shape_on_disk == (6, 5, 4)
    flat = arr.reshape(6, 5, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(img.data[c], flat[..., c])


def test_multichannel_nifti_slice_is_2d(tmp_path):
    arr = rng().normal(size=(6, 5, 1, 2)).astype(np.float32)
    write_nifti(tmp_path / "m.nii.gz", arr)
    img = load_image(tmp_path / "m.nii.gz")
    assert img.data.shape == (2, 6, 5) and img.spatial_shape_on_disk == (6, 5, 1)
    np.testing.assert_array_equal(img.data[1], arr[:, :, 0, 1])


def test_nifti_bad_5d_shape_is_an_error(tmp_path):
    write_nifti(tmp_path / "bad.nii.gz", np.zeros((4, 4, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"bad\.nii\.gz.*shape \(4, 4, 3, 2, 2\)"):
        load_image(tmp_path / "bad.nii.gz")


def test_integer_nifti_with_scaling_reads_as_float(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "i.nii")
    out = load_image(tmp_path / "i.nii")
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(out.data[0], raw * 0.5 + 10.0)
    assert load_image(tmp_path / "i.nii", dtype=np.float64).data.dtype == np.float64
    with pytest.raises(ValueError, match="dtype"):
        load_image(tmp_path / "i.nii", dtype=np.int32)


@pytest.mark.parametrize("values, dtype", [((0, 255), np.uint8), ((0, 300), np.int16), ((-2, 5), np.int16),
                                            ((0, 70000), np.int32)])
def test_label_dtype_follows_the_values(tmp_path, values, dtype):
    lab = np.zeros((4, 4), np.int64)
    lab[0, 0], lab[1, 1] = values
    save_labels(tmp_path / "l.nii.gz", lab)
    out = nib.load(tmp_path / "l.nii.gz")
    assert out.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), lab)
    np.testing.assert_allclose(out.affine, np.eye(4))  # no like: identity
    np.testing.assert_array_equal(load_labels(tmp_path / "l.nii.gz")[0], lab)


# ----------------------------------------------------------------------------- PNG, TIFF, JPEG, NPY
def test_png_grey_rgb_rgba_la(tmp_path):
    r = rng()
    grey = (r.random((6, 7)) * 255).astype(np.uint8)
    rgb = (r.random((6, 7, 3)) * 255).astype(np.uint8)
    rgba = np.dstack([rgb, np.full((6, 7), 7, np.uint8)])
    PILImage.fromarray(grey).save(tmp_path / "g.png")
    PILImage.fromarray(rgb).save(tmp_path / "rgb.png")
    PILImage.fromarray(rgba).save(tmp_path / "rgba.png")
    PILImage.fromarray(np.dstack([grey, grey // 2])).save(tmp_path / "la.png")

    g = load_image(tmp_path / "g.png")
    assert g.kind == "png" and g.data.shape == (1, 6, 7) and g.affine is None and g.header is None
    np.testing.assert_array_equal(g.data[0], grey)
    for name in ("rgb.png", "rgba.png"):
        im = load_image(tmp_path / name)
        assert im.data.shape == (3, 6, 7), name  # alpha dropped
        np.testing.assert_array_equal(im.data, np.moveaxis(rgb, -1, 0))
    la = load_image(tmp_path / "la.png")
    assert la.data.shape == (1, 6, 7)
    np.testing.assert_array_equal(la.data[0], grey)


def test_tiff_uint16_float_rgb_and_multipage(tmp_path):
    r = rng()
    u16 = (r.random((5, 6)) * 60000).astype(np.uint16)
    f32 = r.normal(size=(5, 6)).astype(np.float32)
    rgb = (r.random((5, 6, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(u16).save(tmp_path / "u.tif")
    PILImage.fromarray(f32).save(tmp_path / "f.tiff")
    PILImage.fromarray(rgb).save(tmp_path / "rgb.tif")
    pages = [PILImage.fromarray(f32 + k) for k in range(4)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])

    np.testing.assert_array_equal(load_image(tmp_path / "u.tif").data[0], u16.astype(np.float32))
    f = load_image(tmp_path / "f.tiff")
    assert f.kind == "tiff"
    np.testing.assert_array_equal(f.data[0], f32)
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.tif").data, np.moveaxis(rgb, -1, 0))
    st = load_image(tmp_path / "stack.tif")
    assert st.data.shape == (1, 4, 5, 6) and st.ndim == 3
    np.testing.assert_allclose(st.data[0, 3], f32 + 3)


def test_jpeg_rgb_and_grey(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    PILImage.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    PILImage.fromarray(rgb[..., 0]).save(tmp_path / "b.jpeg", quality=95)
    a = load_image(tmp_path / "a.jpg")
    assert a.kind == "jpeg" and a.data.shape == (3, 16, 16)
    np.testing.assert_allclose(a.data.mean((1, 2)), [200, 0, 0], atol=3)  # lossy
    assert load_image(tmp_path / "b.jpeg").data.shape == (1, 16, 16)


@pytest.mark.parametrize("shape, expected", [((5, 6), (1, 5, 6)), ((2, 5, 6), (2, 5, 6)),
                                             ((3, 4, 5, 6), (3, 4, 5, 6))])
def test_npy_layouts(tmp_path, shape, expected):
    arr = rng().normal(size=shape)
    np.save(tmp_path / "a.npy", arr)
    img = load_image(tmp_path / "a.npy")
    assert img.kind == "npy" and img.data.shape == expected and img.data.dtype == np.float32
    np.testing.assert_allclose(img.data.reshape(arr.shape), arr, rtol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (1, 2, 3, 4, 5)])
def test_npy_bad_ndim(tmp_path, shape):
    np.save(tmp_path / "a.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=r"a\.npy has shape"):
        load_image(tmp_path / "a.npy")


def test_npy_object_and_complex_are_rejected(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((3, 3), np.complex64))
    with pytest.raises(ValueError, match=r"c\.npy.*complex"):
        load_image(tmp_path / "c.npy")
    np.save(tmp_path / "o.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy"):
        load_image(tmp_path / "o.npy")


# ----------------------------------------------------------------------------- stacking
def test_channels_are_stacked_in_the_order_given(tmp_path):
    a = np.full((4, 5, 1), 1.0, np.float32)
    b = np.full((4, 5, 1), 2.0, np.float32)
    multi = np.stack([np.full((4, 5, 1), 3.0), np.full((4, 5, 1), 4.0)], -1).astype(np.float32)
    write_nifti(tmp_path / "a.nii.gz", a)
    write_nifti(tmp_path / "b.nii.gz", b)
    write_nifti(tmp_path / "m.nii.gz", multi)
    img = load_image([tmp_path / "b.nii.gz", tmp_path / "m.nii.gz", tmp_path / "a.nii.gz"])
    assert img.data.shape == (4, 4, 5)
    np.testing.assert_array_equal(img.data[:, 0, 0], [2, 3, 4, 1])
    assert img.paths == (tmp_path / "b.nii.gz", tmp_path / "m.nii.gz", tmp_path / "a.nii.gz")


def test_mixed_formats_with_equal_shapes(tmp_path):
    np.save(tmp_path / "a.npy", np.full((4, 5), 7.0))
    write_nifti(tmp_path / "b.nii.gz", np.ones((4, 5, 1), np.float32))
    img = load_image([tmp_path / "a.npy", tmp_path / "b.nii.gz"])
    assert img.data.shape == (2, 4, 5) and img.kind == "nifti"
    np.testing.assert_allclose(img.affine, AFFINE)  # from the first NIfTI
    assert img.spatial_shape_on_disk == (4, 5, 1)
    np.testing.assert_array_equal(img.data[:, 0, 0], [7, 1])


def test_affines_within_tolerance_are_accepted(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((3, 3, 2), np.float32))
    write_nifti(tmp_path / "b.nii.gz", np.ones((3, 3, 2), np.float32), affine=AFFINE + 1e-7)
    assert load_image([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]).n_channels == 2


# ----------------------------------------------------------------------------- read errors
def test_missing_file(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((3, 3, 2), np.float32))
    with pytest.raises(FileNotFoundError, match=r"nope\.nii\.gz"):
        load_image([tmp_path / "a.nii.gz", tmp_path / "nope.nii.gz"])


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "d.nii").mkdir()
    with pytest.raises(ValueError, match=r"d\.nii is a folder"):
        load_image(tmp_path / "d.nii")


def test_no_paths():
    with pytest.raises(ValueError, match="no image file"):
        load_image([])


@pytest.mark.parametrize("name", ["a.mha", "a.txt", "noext", "a.npy.gz"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type .*" + re.escape(name)):
        load_image(tmp_path / name)


def _truncate(path, frac=0.5):
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * frac)])


def corrupt_files(tmp_path):
    """(name, maker) of broken files of every format."""
    vol = rng().normal(size=(16, 16, 8)).astype(np.float32)
    write_nifti(tmp_path / "trunc.nii.gz", vol)
    _truncate(tmp_path / "trunc.nii.gz")
    write_nifti(tmp_path / "trunc.nii", vol)
    _truncate(tmp_path / "trunc.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti" * 20)
    (tmp_path / "gzjunk.nii.gz").write_bytes(gzip.compress(b"x" * 600))
    (tmp_path / "junk.nii").write_bytes(b"not a nifti" * 40)
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    PILImage.fromarray((rng().random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "trunc.png")
    _truncate(tmp_path / "trunc.png")
    (tmp_path / "junk.png").write_bytes(b"garbage" * 10)
    PILImage.fromarray(rng().normal(size=(32, 32)).astype(np.float32)).save(tmp_path / "trunc.tif")
    _truncate(tmp_path / "trunc.tif")
    PILImage.fromarray((rng().random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp_path / "trunc.jpg")
    _truncate(tmp_path / "trunc.jpg")
    np.save(tmp_path / "trunc.npy", rng().normal(size=(4, 8, 8)))
    _truncate(tmp_path / "trunc.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk" * 30)
    (tmp_path / "empty.npy").write_bytes(b"")
    return ["trunc.nii.gz", "trunc.nii", "junk.nii.gz", "gzjunk.nii.gz", "junk.nii", "empty.nii.gz",
            "trunc.png", "junk.png", "trunc.tif", "trunc.jpg", "trunc.npy", "junk.npy", "empty.npy"]


def test_corrupt_and_truncated_files_give_one_line_value_errors(tmp_path):
    for name in corrupt_files(tmp_path):
        with pytest.raises(ValueError) as info:
            load_image(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, (name, msg)
        assert info.value.__cause__ is None and info.value.__suppress_context__, name


def test_nifti_header_claiming_more_data_than_the_file(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE), tmp_path / "h.nii")
    raw = bytearray((tmp_path / "h.nii").read_bytes())
    raw[40:48] = np.array([3, 30000, 30000, 30000], "<i2").tobytes()  # dim[0..3]
    (tmp_path / "h.nii").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"h\.nii: header says shape \(30000, 30000, 30000\)"):
        load_image(tmp_path / "h.nii")


def test_different_shapes_name_both_files(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((4, 5, 3), np.float32))
    write_nifti(tmp_path / "b.nii.gz", np.ones((4, 6, 3), np.float32))
    with pytest.raises(ValueError) as info:
        load_image([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    msg = str(info.value)
    assert "a.nii.gz" in msg and "b.nii.gz" in msg and "(4, 5, 3)" in msg and "(4, 6, 3)" in msg


def test_different_shapes_across_formats(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 5)))
    PILImage.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"a\.npy has \(4, 5\) but .*b\.png has \(5, 4\)"):
        load_image([tmp_path / "a.npy", tmp_path / "b.png"])


def test_different_affines_name_both_files(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.ones((3, 3, 2), np.float32))
    other = AFFINE.copy()
    other[0, 3] += 1.0
    write_nifti(tmp_path / "b.nii.gz", np.ones((3, 3, 2), np.float32), affine=other)
    with pytest.raises(ValueError, match=r"different affines: .*a\.nii\.gz.*b\.nii\.gz"):
        load_image([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])


# ----------------------------------------------------------------------------- masks and labels
def test_load_mask(tmp_path):
    m = np.zeros((6, 5, 1), np.uint8)
    m[1:4, 1:3] = 3
    write_nifti(tmp_path / "m.nii.gz", m)
    write_nifti(tmp_path / "i.nii.gz", np.ones((6, 5, 1), np.float32))
    img = load_image(tmp_path / "i.nii.gz")
    mask = load_mask(tmp_path / "m.nii.gz", img.spatial_shape, like=img)
    assert mask.dtype == bool and mask.shape == (6, 5)
    np.testing.assert_array_equal(mask, m[..., 0] != 0)


def test_mask_errors(tmp_path):
    write_nifti(tmp_path / "i.nii.gz", np.ones((6, 5, 1), np.float32))
    img = load_image(tmp_path / "i.nii.gz")
    write_nifti(tmp_path / "shape.nii.gz", np.ones((6, 4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"shape\.nii\.gz has shape \(6, 4\) but the image has spatial shape \(6, 5\)"):
        load_mask(tmp_path / "shape.nii.gz", img.spatial_shape, like=img)
    write_nifti(tmp_path / "empty.nii.gz", np.zeros((6, 5, 1), np.uint8))
    with pytest.raises(ValueError, match=r"empty\.nii\.gz is empty"):
        load_mask(tmp_path / "empty.nii.gz", img.spatial_shape, like=img)
    nan = np.ones((6, 5, 1), np.float32)
    nan[0, 0] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan)
    with pytest.raises(ValueError, match=r"nan\.nii\.gz contains NaN"):
        load_mask(tmp_path / "nan.nii.gz", img.spatial_shape, like=img)
    other = AFFINE.copy()
    other[1, 1] = 2.5
    write_nifti(tmp_path / "aff.nii.gz", np.ones((6, 5, 1), np.uint8), affine=other)
    with pytest.raises(ValueError, match=r"aff\.nii\.gz has affine"):
        load_mask(tmp_path / "aff.nii.gz", img.spatial_shape, like=img)
    assert load_mask(tmp_path / "aff.nii.gz", img.spatial_shape).all()  # no image to compare with
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_mask(tmp_path / "missing.png", (6, 5))


def test_rgb_mask(tmp_path):
    grey = np.zeros((4, 4), np.uint8)
    grey[1, 1] = 255
    PILImage.fromarray(np.dstack([grey] * 3)).save(tmp_path / "same.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "same.png", (4, 4)), grey > 0)
    PILImage.fromarray(np.dstack([grey, grey, 255 - grey])).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour\.png has 3 different channels"):
        load_mask(tmp_path / "colour.png", (4, 4))


def test_load_labels_checks_integers(tmp_path):
    write_nifti(tmp_path / "ok.nii.gz", np.array([[0.0, 500.0], [200.0, 1220.0]], np.float32))
    lab, aff = load_labels(tmp_path / "ok.nii.gz")
    np.testing.assert_array_equal(lab, [[0, 500], [200, 1220]])
    assert lab.dtype == np.int64 and aff is not None
    write_nifti(tmp_path / "frac.nii.gz", np.array([[0.0, 1.5], [2.0, 3.0]], np.float32))
    with pytest.raises(ValueError, match=r"frac\.nii\.gz holds non-integer values \(e\.g\. 1\.5\)"):
        load_labels(tmp_path / "frac.nii.gz")
    write_nifti(tmp_path / "nan.nii.gz", np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match=r"nan\.nii\.gz contains NaN"):
        load_labels(tmp_path / "nan.nii.gz")


def test_palette_png_labels_are_indices(tmp_path):
    idx = np.array([[0, 1], [2, 3]], np.uint8)
    im = PILImage.fromarray(idx, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    im.save(tmp_path / "p.png")
    lab, aff = load_labels(tmp_path / "p.png")
    assert aff is None
    np.testing.assert_array_equal(lab, idx)
    # as an image, a palette PNG is its colours
    assert load_image(tmp_path / "p.png").data.shape == (3, 2, 2)


# ----------------------------------------------------------------------------- writers
def test_png_and_npy_label_round_trip(tmp_path):
    lab = (np.arange(30).reshape(5, 6) % 5).astype(np.int64)
    save_labels(tmp_path / "l.png", lab)
    with PILImage.open(tmp_path / "l.png") as im:
        assert im.mode == "L"
    np.testing.assert_array_equal(load_labels(tmp_path / "l.png")[0], lab)
    save_labels(tmp_path / "l.npy", lab)
    out = np.load(tmp_path / "l.npy")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, lab)
    probs = rng().random((3, 5, 6)).astype(np.float32)
    save_probabilities(tmp_path / "p.npy", probs)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), probs)


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"PNG output .*l\.png needs a 2D label map"):
        save_labels(tmp_path / "l.png", np.ones((2, 3, 4), int))
    with pytest.raises(ValueError, match=r"l\.png holds labels 0\.\.255"):
        save_labels(tmp_path / "l.png", np.full((3, 3), 300))
    with pytest.raises(ValueError, match=r"cannot write labels to .*l\.tif"):
        save_labels(tmp_path / "l.tif", np.ones((3, 3), int))
    with pytest.raises(ValueError, match="must be integers"):
        save_labels(tmp_path / "l.nii.gz", np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="2D or 3D"):
        save_labels(tmp_path / "l.nii.gz", np.ones(3, int))
    with pytest.raises(ValueError, match=r"cannot write probabilities to .*p\.png"):
        save_probabilities(tmp_path / "p.png", np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match=r"\(K, \*spatial\)"):
        save_probabilities(tmp_path / "p.npy", np.ones((3, 3)))
    write_nifti(tmp_path / "i.nii.gz", np.ones((4, 4, 2), np.float32))
    img = load_image(tmp_path / "i.nii.gz")
    with pytest.raises(ValueError, match=r"spatial shape \(4, 4\) but the image has \(4, 4, 2\)"):
        save_labels(tmp_path / "l.nii.gz", np.ones((4, 4), int), like=img)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_labels(tmp_path / "nofolder" / "l.npy", np.ones((2, 2), int))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.nii.gz"]  # nothing half-written


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "l.nii.gz"
    target.write_bytes(b"previous")

    def broken_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(dformats.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_labels(target, np.ones((3, 3), int))
    assert target.read_bytes() == b"previous"
    assert hidden_leftovers(tmp_path) == []


def test_save_json(tmp_path):
    obj = {"a": np.float32(1.5), "b": [float("nan"), float("inf"), 2], "c": np.arange(3), 4: (True, None),
           "p": tmp_path}
    save_json(tmp_path / "s.json", obj)
    text = (tmp_path / "s.json").read_text()

    def no_constants(name):
        raise AssertionError(f"invalid JSON constant {name}")

    back = json.loads(text, parse_constant=no_constants)
    assert back == {"a": 1.5, "b": [None, None, 2], "c": [0, 1, 2], "4": [True, None], "p": str(tmp_path)}
    with pytest.raises(ValueError, match="cannot write a value of type object"):
        save_json(tmp_path / "t.json", {"x": object()})
    assert not (tmp_path / "t.json").exists()
    assert hidden_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- OutputDir
def test_output_dir_success(tmp_path):
    target = tmp_path / "out"
    with OutputDir(target) as d:
        assert d.parent == tmp_path and d.name.startswith(".") and not target.exists()
        (d / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new" and (target / MARKER).is_file()
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_output_dir_failure_leaves_nothing(tmp_path, exc):
    target = tmp_path / "sub" / "deeper" / "out"
    with pytest.raises(type(exc)):
        with OutputDir(target):
            raise exc
    assert list(tmp_path.iterdir()) == []  # created parents removed too


def test_output_dir_existing_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(ValueError) as info:
        with OutputDir(target):
            pass
    assert str(info.value) == f"output folder {target} already exists; pass --overwrite to replace it"
    assert (target / "keep.txt").read_text() == "old"
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_output_dir_signal_during_the_swap_is_held_until_it_is_done(tmp_path, monkeypatch, sig):
    """A real signal sent while the previous output is being deleted: the deletion finishes, the new
    output is complete, nothing is left under a hidden name, and the signal is delivered afterwards."""

    class Delivered(Exception):
        pass

    def handler(signum, frame):
        raise Delivered(signum)

    target = tmp_path / "out"
    target.mkdir()
    (target / MARKER).write_text("deepgmm")
    (target / "old.txt").write_text("old")
    real_rmtree = shutil.rmtree
    sent = []

    def rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), sig)  # arrives in the middle of the swap
        sent.append(path)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(dfiles.shutil, "rmtree", rmtree)
    previous = signal.signal(sig, handler)
    try:
        with pytest.raises(Delivered):
            with OutputDir(target, overwrite=True) as d:
                (d / "new.txt").write_text("new")
    finally:
        signal.signal(sig, previous)
    assert sent, "the previous output was not deleted through shutil.rmtree"
    assert sorted(p.name for p in target.iterdir()) == sorted([MARKER, "new.txt"])
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_output_dir_signal_while_the_staging_folder_is_created_leaves_nothing(tmp_path, monkeypatch, sig):
    """A real signal right after the staging folder is made (before it was recorded, once a stress run hit
    this: __exit__ does not run when __enter__ raises): the signal is delivered and nothing is left behind,
    the created parents included. Found by tests/stress/test_stress_cli_signal.py."""

    class Delivered(Exception):
        pass

    def handler(signum, frame):
        raise Delivered(signum)

    real_token_hex = dfiles.secrets.token_hex

    def token_hex(n):
        os.kill(os.getpid(), sig)  # arrives while the staging folder is being created
        return real_token_hex(n)

    monkeypatch.setattr(dfiles.secrets, "token_hex", token_hex)
    previous = signal.signal(sig, handler)
    entered = []
    try:
        with pytest.raises(Delivered):
            with OutputDir(tmp_path / "sub" / "out"):
                entered.append(True)
    finally:
        signal.signal(sig, previous)
    assert entered == []
    assert list(tmp_path.iterdir()) == []


def test_output_dir_failure_while_the_staging_folder_is_created_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dfiles, "MARKER", "no-such-folder/marker")  # writing the marker fails
    with pytest.raises(FileNotFoundError):
        with OutputDir(tmp_path / "sub" / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def _can_exchange(folder):
    a, b = folder / ".probe-a", folder / ".probe-b"
    a.mkdir()
    b.mkdir()
    try:
        return dfiles._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.parametrize("exchange", [True, False])
def test_output_dir_overwrite_swaps(tmp_path, monkeypatch, exchange):
    atomic = exchange and _can_exchange(tmp_path)
    if not exchange:
        monkeypatch.setattr(dfiles, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    with OutputDir(target) as d:
        (d / "old.txt").write_text("old")
    old_listing = sorted([MARKER, "old.txt"])
    # failure during overwrite: old contents untouched
    with pytest.raises(RuntimeError):
        with OutputDir(target, overwrite=True) as d:
            (d / "new.txt").write_text("new")
            raise RuntimeError("fail")
    assert sorted(p.name for p in target.iterdir()) == old_listing
    # what the name holds right after every os.rename of the commit
    seen = []
    real_rename = os.rename

    def watching_rename(a, b):
        real_rename(a, b)
        seen.append(sorted(p.name for p in target.iterdir()) if os.path.exists(target) else None)

    monkeypatch.setattr(dfiles.os, "rename", watching_rename)
    with OutputDir(target, overwrite=True) as d:
        (d / "new.txt").write_text("new")
    new_listing = sorted([MARKER, "new.txt"])
    assert sorted(p.name for p in target.iterdir()) == new_listing
    assert hidden_leftovers(tmp_path) == []
    if atomic:
        assert seen == []  # one atomic swap: the name never lacks a complete folder
    else:
        assert seen == [None, new_listing]  # old renamed aside, then the complete new one renamed in


def test_output_dir_exchange_keeps_a_complete_folder_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "y").write_text("b")
    if not dfiles._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not available here")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]


def test_output_dir_refuses_foreign_folders_and_files(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match=r"refusing to replace .*home.*not written by deepgmm"):
        with OutputDir(foreign, overwrite=True):
            pass
    assert (foreign / "thesis.tex").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    with OutputDir(empty, overwrite=True) as d:
        (d / "a").write_text("1")
    assert (empty / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file exists and is not a folder"):
        with OutputDir(tmp_path / "file", overwrite=True):
            pass
    with pytest.raises(ValueError, match=r"is not a folder"):
        with OutputDir(tmp_path / "file" / "out"):
            pass
    with pytest.raises(ValueError, match="must name a new folder"):
        OutputDir(".").check()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_output_dir_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=r"ro is not writable"):
            with OutputDir(ro / "out"):
                pass
    finally:
        ro.chmod(0o755)


def test_output_dir_unwritable_parent_message(tmp_path, monkeypatch):
    """The same check, simulated (the tests may run as root, who can write anywhere)."""
    monkeypatch.setattr(dfiles.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError) as info:
        OutputDir(tmp_path / "out").check()
    assert str(info.value) == f"cannot create output folder {tmp_path / 'out'}: folder {tmp_path} is not writable"


def test_atomic_write_csv_unions_the_keys_in_order(tmp_path):
    path = dio.atomic_write_csv(tmp_path / "t.csv", [{"a": 1, "b": None}, {"c": "x", "a": 2.5}])
    assert path.read_text(encoding="utf-8") == "a,b,c\n1,,\n2.5,,x\n"
    assert hidden_leftovers(tmp_path) == []
