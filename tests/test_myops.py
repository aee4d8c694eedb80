"""Tests of deepgmm.datasets.myops: on the real MyoPS 2020 data (skipped when absent) and on
tiny synthetic folders with the MyoPS layout written here."""

from __future__ import annotations

import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepgmm.datasets import myops

DATA = Path(os.environ.get("DEEPGMM_MYOPS", Path(__file__).parents[1].parent / "shared/data/myops2020"))
needs_data = pytest.mark.skipif(
    not (DATA / "train25").is_dir(), reason=f"MyoPS 2020 data not found at {DATA} (set DEEPGMM_MYOPS)"
)


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def slices():
    return myops.paper_slices(DATA)


@needs_data
@pytest.mark.myops
def test_paper_protocol_gives_79_slices_from_25_patients(slices):
    assert len(slices) == 79
    cases = sorted({s.case for s in slices})
    assert cases == list(range(101, 126))
    assert set(myops.TEST_CASES) <= set(cases)
    keys = [(s.case, s.slice_index) for s in slices]
    assert keys == sorted(keys) and len(set(keys)) == 79


@needs_data
@pytest.mark.myops
def test_paper_slices_content(slices):
    for s in slices:
        assert s.image.shape == (3, 160, 160) and s.image.dtype == np.float32
        assert s.labels.shape == (160, 160)
        assert set(np.unique(s.labels).tolist()) == {0, 1, 2, 3, 4}
        np.testing.assert_array_equal(s.mask, s.labels > 0)
        np.testing.assert_allclose(s.image.mean(axis=(1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(s.image.std(axis=(1, 2)), 1.0, atol=1e-4)
        (x0, x1), (y0, y1) = s.crop
        assert x1 - x0 == 160 and y1 - y0 == 160 and x0 >= 0 and y0 >= 0


@needs_data
@pytest.mark.myops
def test_paper_slice_matches_raw_files(slices):
    """Recompute one slice from the NIfTI files directly (independent of the loader's code path)."""
    s = next(x for x in slices if x.case == 114)
    (x0, x1), (y0, y1) = s.crop
    gd = np.asarray(nib.load(DATA / "train25_myops_gd/myops_training_114_gd.nii.gz").dataobj)
    mid = gd[..., gd.shape[2] // 2]
    com = np.argwhere(np.isin(mid, [500, 200, 1220, 2221])).mean(0)
    assert (x0 + 80, y0 + 80) == tuple(int(np.floor(c + 0.5)) for c in com)
    for c, ch in enumerate(("DE", "T2", "C0")):
        raw = np.asarray(nib.load(DATA / f"train25/myops_training_114_{ch}.nii.gz").dataobj, dtype=np.float64)
        crop = raw[x0:x1, y0:y1, s.slice_index]
        np.testing.assert_allclose(s.image[c], (crop - crop.mean()) / crop.std(), atol=1e-4)
    codes = gd[x0:x1, y0:y1, s.slice_index]
    expected = np.select([codes == 500, codes == 200, codes == 1220, codes == 2221], [1, 2, 3, 4], 0)
    np.testing.assert_array_equal(s.labels, expected)


@needs_data
@pytest.mark.myops
def test_volumes_real_case():
    (vol,) = myops.volumes(DATA, cases=[111])
    assert vol.case == 111 and vol.image.shape == (3, 160, 160, 2)
    np.testing.assert_allclose(vol.image.reshape(3, -1).mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(vol.image.reshape(3, -1).std(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(vol.mask, vol.labels > 0)
    case = myops.load_case(DATA, 111)
    assert case.image.shape == (3, 489, 498, 2) and case.labels.shape == (489, 498, 2)
    (x0, _), (y0, _) = vol.crop
    # the cropped affine maps cropped voxel (0,0,0) to the world position of original voxel (x0,y0,0)
    np.testing.assert_allclose(vol.affine @ [0, 0, 0, 1], case.affine @ [x0, y0, 0, 1])


# ----------------------------------------------------------------------------- synthetic folders
SHAPE = (20, 18, 4)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _codes(shape=SHAPE) -> np.ndarray:
    """Label codes: slices 0 and 2 hold background + all four classes; slice 1 lacks scar;
    slice 3 holds only background and the right ventricle. Centre of mass of the middle slice
    (index 2) at (10, 9) for the default shape."""
    g = np.zeros(shape, dtype=np.int16)
    for z in (0, 1, 2):
        g[8:13, 7:12, z] = 200
        g[9:12, 8:11, z] = 500
        g[8, 7:12, z] = 1220
        g[12, 7:12, z] = 2221 if z != 1 else 200
    g[0:3, 0:3, :] = 600
    return g


def _image(case: int, channel: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(case * 10 + channel)
    return (100 * case + 10 * channel + rng.normal(0, 1, shape)).astype(np.float32)


def _write_case(root: Path, case: int, split: str = "train", *, skip=(), shape=SHAPE, label=None, affines=None) -> None:
    image_dir, label_dir, prefix = myops.SPLITS[split]
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    for c, ch in enumerate(myops.CHANNELS):
        if ch not in skip:
            aff = None if affines is None else affines.get(ch)
            _save(root / image_dir / f"{prefix}_{case:03d}_{ch}.nii.gz", _image(case, c, shape), aff)
    if label_dir:
        (root / label_dir).mkdir(parents=True, exist_ok=True)
        if "gd" not in skip:
            _save(root / label_dir / f"{prefix}_{case:03d}_gd.nii.gz", _codes(shape) if label is None else label)


@pytest.fixture
def root(tmp_path):
    for case in (12, 3, 7):
        _write_case(tmp_path, case)
    return tmp_path


def test_pairs_by_case_id_whatever_the_listing_order(root, monkeypatch):
    (root / "train25" / "notes.txt").write_text("not a MyoPS file")
    _save(root / "train25" / "myops_training_003_LGE.nii.gz", np.zeros(SHAPE, np.float32))  # unknown sequence
    real_iterdir = Path.iterdir

    def shuffled(self):
        items = list(real_iterdir(self))
        random.Random(len(items)).shuffle(items)
        return iter(items)

    monkeypatch.setattr(Path, "iterdir", shuffled)
    cases = myops.find_cases(root)
    assert list(cases) == [3, 7, 12]
    for cid, files in cases.items():
        assert files.case == cid and files.split == "train"
        assert all(f"_{cid:03d}_{ch}." in p.name for ch, p in files.images.items())
        assert f"_{cid:03d}_gd." in files.label.name
        case = myops.load_case(root, cid)
        assert case.image.shape == (3,) + SHAPE and case.image.dtype == np.float32
        for c in range(3):  # channel c of case cid is the array written for (cid, c)
            np.testing.assert_array_equal(case.image[c], _image(cid, c))
        expected = np.select([_codes() == v for v in (500, 200, 1220, 2221)], [1, 2, 3, 4], 0)
        np.testing.assert_array_equal(case.labels, expected)
        np.testing.assert_array_equal(case.affine, np.eye(4))


def test_missing_sequence_is_named(root):
    (root / "train25" / "myops_training_007_T2.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case 7 .*myops_training_007_T2"):
        myops.find_cases(root)
    assert list(myops.find_cases(root, skip_incomplete=True)) == [3, 12]
    with pytest.raises(ValueError, match=r"case 7 not found"):
        myops.load_case(root, 7)


def test_missing_label_file_is_named(root):
    (root / "train25_myops_gd" / "myops_training_012_gd.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case 12 .*myops_training_012_gd"):
        myops.find_cases(root)


def test_label_without_images_is_incomplete(root):
    _save(root / "train25_myops_gd" / "myops_training_099_gd.nii.gz", _codes())
    with pytest.raises(FileNotFoundError, match=r"case 99 .*myops_training_099_DE"):
        myops.find_cases(root)


def test_missing_root_and_subfolders(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root folder .*nowhere"):
        myops.find_cases(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"train25"):
        myops.find_cases(tmp_path)
    (tmp_path / "train25").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train25_myops_gd"):
        myops.find_cases(tmp_path)
    (tmp_path / "train25_myops_gd").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no complete MyoPS train case"):
        myops.find_cases(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"test20"):
        myops.find_cases(tmp_path, "test")
    with pytest.raises(ValueError, match=r"split must be one of"):
        myops.find_cases(tmp_path, "validation")


def test_duplicate_file_is_an_error(root):
    _save(root / "train25" / "myops_training_003_DE.nii", _image(3, 0))
    with pytest.raises(ValueError, match=r"case 3 has two DE files"):
        myops.find_cases(root)


def test_label_shape_mismatch_names_file(tmp_path):
    _write_case(tmp_path, 5, label=np.zeros((20, 17, 4), np.int16))
    with pytest.raises(ValueError, match=r"myops_training_005_gd\.nii\.gz: shape \(20, 17, 4\) differs"):
        myops.load_case(tmp_path, 5)


def test_sequence_shape_and_affine_mismatch_name_file(tmp_path):
    _write_case(tmp_path, 5)
    _save(tmp_path / "train25" / "myops_training_005_C0.nii.gz", np.zeros((20, 18, 3), np.float32))
    with pytest.raises(ValueError, match=r"myops_training_005_C0\.nii\.gz: shape"):
        myops.load_case(tmp_path, 5)
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    _write_case(tmp_path, 6, affines={"T2": shifted})
    with pytest.raises(ValueError, match=r"myops_training_006_T2\.nii\.gz: affine differs"):
        myops.load_case(tmp_path, 6)
    tiny = np.eye(4)
    tiny[0, 3] = 1e-5  # within tolerance
    _write_case(tmp_path, 8, affines={"T2": tiny})
    assert myops.load_case(tmp_path, 8).image.shape == (3,) + SHAPE


def test_unknown_label_codes_name_file_and_codes(tmp_path):
    bad = _codes()
    bad[0, 0, 0] = 300
    _write_case(tmp_path, 4, label=bad)
    with pytest.raises(ValueError, match=r"myops_training_004_gd\.nii\.gz: unknown label code\(s\) \[300\]; found \[0, 200, 300, 500, 600, 1220, 2221\]"):
        myops.load_case(tmp_path, 4)


def test_map_labels_against_loop():
    rng = np.random.default_rng(0)
    codes = rng.choice([0, 200, 500, 600, 1220, 2221], size=(7, 5, 3))
    ref = np.zeros(codes.shape, np.uint8)
    for idx in np.ndindex(codes.shape):
        ref[idx] = {0: 0, 600: 0, 500: 1, 200: 2, 1220: 3, 2221: 4}[int(codes[idx])]
    out = myops.map_labels(codes)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(myops.map_labels(codes.astype(np.float32)), ref)
    with pytest.raises(ValueError, match=r"non-integer"):
        myops.map_labels(np.array([0.0, 200.5]))
    with pytest.raises(ValueError, match=r"must be integers"):
        myops.map_labels(np.array(["a"]))


def test_load_case_argument_errors(root):
    with pytest.raises(ValueError, match=r"case_id is required"):
        myops.load_case(root)
    files = myops.find_cases(root)[3]
    with pytest.raises(ValueError, match=r"case_id=7 does not match"):
        myops.load_case(files, 7)
    assert myops.load_case(files).case == 3


def test_paper_slices_synthetic(root):
    out = myops.paper_slices(root, cases=[7, 3], crop_size=8)
    assert [(s.case, s.slice_index) for s in out] == [(7, 0), (7, 2), (3, 0), (3, 2)]
    raw = np.stack([_image(7, c) for c in range(3)])
    labels = myops.map_labels(_codes())
    for s in out[:2]:
        # centre of mass of the middle slice's labels is (10, 9) -> window [6, 14) x [5, 13)
        assert s.crop == ((6, 14), (5, 13))
        crop = raw[:, 6:14, 5:13, s.slice_index].astype(np.float64)
        ref = (crop - crop.mean(axis=(1, 2), keepdims=True)) / crop.std(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(s.image, ref, atol=1e-5)
        np.testing.assert_array_equal(s.labels, labels[6:14, 5:13, s.slice_index])
        np.testing.assert_array_equal(s.mask, s.labels > 0)
    with pytest.raises(ValueError, match=r"case\(s\) \[42\] not found"):
        myops.paper_slices(root, cases=[42])
    with pytest.raises(ValueError, match=r"crop_size must be a positive integer"):
        myops.paper_slices(root, crop_size=0)


def test_crop_window_shifts_inside_and_pads_small_images():
    assert myops.crop_window((10.0, 9.0), (20, 18), 8) == ((6, 14), (5, 13))
    assert myops.crop_window((10.5, 9.49), (20, 18), 8) == ((7, 15), (5, 13))
    assert myops.crop_window((1.0, 17.0), (20, 18), 8) == ((0, 8), (10, 18))  # shifted, not shrunk
    assert myops.crop_window((5.0, 5.0), (20, 6), 10) == ((0, 10), (-2, 8))  # axis shorter than the crop


def test_paper_slices_crop_at_border_and_padding(tmp_path):
    g = np.zeros(SHAPE, np.int16)
    g[0:3, 14:18, :2] = 200
    g[0, 14:18, :2] = 500
    g[1, 14:18, :2] = 1220
    g[2, 17, :2] = 2221
    g[:, :, 2:] = g[:, :, :2]
    _write_case(tmp_path, 1, label=g)
    (s0, *_rest) = myops.paper_slices(tmp_path, crop_size=8)
    assert s0.crop == ((0, 8), (10, 18))
    # crop larger than the image on the second axis: zero padding, z-score over the real pixels only
    (v,) = myops.volumes(tmp_path, crop_size=22)
    assert v.crop == ((-1, 21), (-2, 20)) and v.image.shape == (3, 22, 22, 4)
    assert np.all(v.image[:, 0] == 0) and np.all(v.image[:, :, :2] == 0) and np.all(v.labels[0] == 0)
    real = v.image[:, 1:21, 2:20].reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(real.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(real.std(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v.labels[1:21, 2:20], myops.map_labels(g))


def test_constant_channel_is_an_error(tmp_path):
    _write_case(tmp_path, 2)
    _save(tmp_path / "train25" / "myops_training_002_T2.nii.gz", np.full(SHAPE, 5.0, np.float32))
    with pytest.raises(ValueError, match=r"channel\(s\) \['T2'\] are constant"):
        myops.paper_slices(tmp_path, crop_size=8)


def test_middle_slice_without_labels_is_an_error(tmp_path):
    g = _codes()
    g[..., 2] = 0
    _write_case(tmp_path, 2, label=g)
    with pytest.raises(ValueError, match=r"myops_training_002_gd\.nii\.gz: the middle slice \(index 2\) has no labelled"):
        myops.paper_slices(tmp_path, crop_size=8)


def test_volumes_train_and_test(root, tmp_path):
    vols = myops.volumes(root, crop_size=8)
    assert [v.case for v in vols] == [3, 7, 12]
    v = vols[0]
    assert v.image.shape == (3, 8, 8, 4) and v.labels.shape == (8, 8, 4) and v.crop == ((6, 14), (5, 13))
    crop = np.stack([_image(3, c) for c in range(3)])[:, 6:14, 5:13].astype(np.float64)
    ref = (crop - crop.mean(axis=(1, 2, 3), keepdims=True)) / crop.std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(v.image, ref, atol=1e-5)
    np.testing.assert_array_equal(v.mask, v.labels > 0)

    test_root = tmp_path / "withtest"
    for case in (201, 202):
        _write_case(test_root, case, "test")
    cases = myops.find_cases(test_root, "test")
    assert list(cases) == [201, 202] and cases[201].label is None
    case = myops.load_case(test_root, 202, split="test")
    assert case.labels is None and case.image.shape == (3,) + SHAPE
    (tv,) = myops.volumes(test_root, cases=[201], split="test", crop_size=8)
    assert tv.labels is None and tv.mask is None
    assert tv.crop == ((6, 14), (5, 13))  # centred on the image centre (9.5, 8.5) -> rounded (10, 9)
    with pytest.raises(FileNotFoundError, match=r"train25"):
        myops.paper_slices(test_root)


def test_non_finite_image_is_an_error(tmp_path):
    _write_case(tmp_path, 2)
    bad = _image(2, 0)
    bad[3, 4, 1] = np.nan
    _save(tmp_path / "train25" / "myops_training_002_DE.nii.gz", bad)
    with pytest.raises(ValueError, match=r"myops_training_002_DE\.nii\.gz: 1 NaN or Inf voxel"):
        myops.load_case(tmp_path, 2)
