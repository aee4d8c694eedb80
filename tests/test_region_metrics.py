"""Region metrics (PRI, VoI, covering, Kim & Kanezaki mIoU) against brute force on small maps, edge
cases, the BSDS500 ground-truth loader, and a sanity check on the real data where it is present."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from deepgmm import region_metrics as rm
from deepgmm.datasets import bsds

BSDS_ROOT = Path("/work/shared/data/bsds500")


# ----------------------------------------------------------------------------- brute force
def bf_rand_index(a, b):
    a, b = a.ravel().tolist(), b.ravel().tolist()
    pairs = list(itertools.combinations(range(len(a)), 2))
    if not pairs:
        return 1.0
    agree = sum((a[i] == a[j]) == (b[i] == b[j]) for i, j in pairs)
    return agree / len(pairs)


def bf_voi(a, b):
    a, b = a.ravel().tolist(), b.ravel().tolist()
    n = len(a)
    h = 0.0
    for x in set(a):
        px = a.count(x) / n
        for y in set(b):
            qy = b.count(y) / n
            pxy = sum(1 for u, v in zip(a, b) if u == x and v == y) / n
            if pxy > 0:
                h -= pxy * (math.log2(pxy / px) + math.log2(pxy / qy))
    return h


def bf_iou(pred, truth, p, t):
    inter = union = 0
    for u, v in zip(pred.ravel().tolist(), truth.ravel().tolist()):
        inter += (u == p) and (v == t)
        union += (u == p) or (v == t)
    return inter / union


def bf_best_ious(pred, truth):
    """{truth label: (best IoU over predicted labels, size)}."""
    out = {}
    for t in sorted(set(truth.ravel().tolist())):
        best = max(bf_iou(pred, truth, p, t) for p in set(pred.ravel().tolist()))
        out[t] = (best, int((truth == t).sum()))
    return out


def bf_covering(pred, truth):
    best = bf_best_ious(pred, truth)
    return sum(size * iou for iou, size in best.values()) / truth.size


def bf_components(labels, connectivity):
    """Flood fill with explicit loops: every connected component of every label value gets its own id."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    H, W = labels.shape
    out = np.zeros((H, W), int)
    nxt = 0
    for i in range(H):
        for j in range(W):
            if out[i, j]:
                continue
            nxt += 1
            out[i, j] = nxt
            stack = [(i, j)]
            while stack:
                y, x = stack.pop()
                for dy, dx in steps:
                    v, u = y + dy, x + dx
                    if 0 <= v < H and 0 <= u < W and not out[v, u] and labels[v, u] == labels[y, x]:
                        out[v, u] = nxt
                        stack.append((v, u))
    return out


def bf_kk_miou(pred, truths, connectivity=8):
    comps = bf_components(pred, connectivity)
    per_gt = []
    for t in truths:
        best = bf_best_ious(comps, t)
        per_gt.append(sum(iou for iou, _ in best.values()) / len(best))
    return sum(per_gt) / len(per_gt)


def random_map(rng, shape=(6, 5), k=None, values=None):
    k = int(rng.integers(2, 5)) if k is None else k
    values = np.arange(k) if values is None else np.asarray(values)
    return values[rng.integers(0, len(values), size=shape)]


CASES = list(range(12))


# ----------------------------------------------------------------------------- against brute force
@pytest.mark.parametrize("seed", CASES)
def test_pairwise_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    a = random_map(rng)
    b = random_map(rng, values=[3, 7, 20, 101][: int(rng.integers(2, 5))])  # not contiguous
    assert rm.rand_index(a, b) == pytest.approx(bf_rand_index(a, b), abs=1e-12)
    assert rm.variation_of_information(a, b) == pytest.approx(bf_voi(a, b), abs=1e-12)
    assert rm.covering(a, b) == pytest.approx(bf_covering(a, b), abs=1e-12)
    # symmetric metrics; covering is not symmetric in general
    assert rm.rand_index(b, a) == pytest.approx(rm.rand_index(a, b), abs=1e-12)
    assert rm.variation_of_information(b, a) == pytest.approx(rm.variation_of_information(a, b), abs=1e-12)


@pytest.mark.parametrize("seed", CASES)
def test_averages_over_several_ground_truths_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    pred = random_map(rng, values=[-2, 0, 5, 9])
    truths = [random_map(rng) for _ in range(int(rng.integers(2, 5)))]
    assert rm.probabilistic_rand_index(pred, truths) == pytest.approx(
        np.mean([bf_rand_index(pred, t) for t in truths]), abs=1e-12)
    assert rm.mean_variation_of_information(pred, truths) == pytest.approx(
        np.mean([bf_voi(pred, t) for t in truths]), abs=1e-12)
    assert rm.segmentation_covering(pred, truths) == pytest.approx(
        np.mean([bf_covering(pred, t) for t in truths]), abs=1e-12)
    for conn in (8, 4):
        assert rm.kk_miou(pred, truths, connectivity=conn) == pytest.approx(
            bf_kk_miou(pred, truths, conn), abs=1e-12)


def test_pri_equals_the_pairwise_definition_with_co_labelling_probabilities():
    """Unnikrishnan's PRI: mean over pairs of c_ij p_ij + (1 - c_ij)(1 - p_ij), p_ij from the ground truths."""
    rng = np.random.default_rng(7)
    pred = random_map(rng)
    truths = [random_map(rng) for _ in range(3)]
    p, ts = pred.ravel(), [t.ravel() for t in truths]
    total = 0.0
    pairs = list(itertools.combinations(range(p.size), 2))
    for i, j in pairs:
        c = float(p[i] == p[j])
        prob = sum(float(t[i] == t[j]) for t in ts) / len(ts)
        total += c * prob + (1 - c) * (1 - prob)
    assert rm.probabilistic_rand_index(pred, truths) == pytest.approx(total / len(pairs), abs=1e-12)


@pytest.mark.parametrize("seed", CASES[:6])
def test_connected_components_match_a_flood_fill(seed):
    rng = np.random.default_rng(200 + seed)
    labels = random_map(rng, shape=(7, 6), values=[4, 8, 15])
    for conn in (8, 4):
        ours = rm.connected_components(labels, conn)
        ref = bf_components(labels, conn)
        # the same partition (ids may differ): a one-to-one correspondence of ids
        pairs = set(zip(ours.ravel().tolist(), ref.ravel().tolist()))
        assert len(pairs) == len(set(ours.ravel().tolist())) == len(set(ref.ravel().tolist()))
        assert ours.min() == 1 and ours.max() == len(pairs)


def test_connectivity_decides_whether_diagonal_pixels_join():
    checker = np.indices((4, 4)).sum(0) % 2
    assert len(np.unique(rm.connected_components(checker, 8))) == 2
    assert len(np.unique(rm.connected_components(checker, 4))) == 16
    # the mIoU protocol splits a predicted label into its components: the checkerboard predicted as
    # itself scores 1 with 8-connectivity, and 1/8 per truth region with 4-connectivity
    assert rm.kk_miou(checker, checker, connectivity=8) == pytest.approx(1.0)
    assert rm.kk_miou(checker, checker, connectivity=4) == pytest.approx(1 / 8)


def test_miou_splits_the_prediction_but_not_the_ground_truth():
    truth = np.zeros((4, 6), int)
    truth[:, 2:4] = 1  # label 0 in two separate strips
    pred = truth.copy()
    # predicted label 0 is split into two components of 8 pixels; truth region 0 (16 px) best IoU 8/16
    assert rm.kk_miou(pred, [truth]) == pytest.approx((0.5 + 1.0) / 2)
    assert rm.covering(pred, truth) == pytest.approx(1.0)  # covering does not split


# ----------------------------------------------------------------------------- edge cases
def test_identical_maps_and_relabelled_copies():
    rng = np.random.default_rng(3)
    a = random_map(rng, k=4)
    relabelled = np.array([10, -3, 42, 7])[a]  # the same partition with other values
    for b in (a, relabelled):
        assert rm.rand_index(a, b) == 1.0
        assert rm.variation_of_information(a, b) == 0.0
        assert rm.covering(a, b) == pytest.approx(1.0)
        assert rm.region_scores(a, [b, b])["pri"] == 1.0


def test_one_region_against_all_different():
    one = np.zeros((6, 5), int)
    every = np.arange(30).reshape(6, 5)
    n = 30
    assert rm.rand_index(one, every) == 0.0  # every pair: together in one, apart in the other
    assert rm.variation_of_information(one, every) == pytest.approx(math.log2(n))
    assert rm.covering(one, every) == pytest.approx(1 / n)  # each pixel: IoU 1/30 with the single region
    assert rm.covering(every, one) == pytest.approx(1 / n)  # the single region: best IoU 1/30
    assert rm.kk_miou(one, [every]) == pytest.approx(1 / n)
    assert rm.kk_miou(every, [one]) == pytest.approx(1 / n)
    assert rm.rand_index(one, one) == 1.0 and rm.variation_of_information(one, one) == 0.0


def test_single_pixel_and_contingency_table():
    assert rm.rand_index(np.array([[3]]), np.array([[9]])) == 1.0
    a = np.array([[5, 5, 2], [2, 9, 9]])
    b = np.array([[1, 0, 0], [0, 0, 1]])
    table, av, bv = rm.contingency_table(a, b)
    np.testing.assert_array_equal(av, [2, 5, 9])
    np.testing.assert_array_equal(bv, [0, 1])
    np.testing.assert_array_equal(table, [[2, 0], [1, 1], [1, 1]])


def test_the_sparse_count_matches_the_dense_one(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = random_map(rng, shape=(9, 8), k=6), random_map(rng, shape=(9, 8), k=5)
    dense = rm.contingency_table(a, b)[0]
    monkeypatch.setattr(rm, "_DENSE_LIMIT", 0)
    np.testing.assert_array_equal(rm.contingency_table(a, b)[0], dense)
    assert rm.rand_index(a, b) == pytest.approx(bf_rand_index(a, b), abs=1e-12)


def test_fine_and_coarse_pick_the_ground_truth_with_most_and_fewest_segments():
    rng = np.random.default_rng(11)
    g2 = random_map(rng, k=2)
    g4 = np.arange(30).reshape(6, 5) % 4 * 100  # 4 segments, values 0..300
    g3 = random_map(rng, k=3)
    g4b = np.arange(30).reshape(6, 5) % 4  # also 4: a tie goes to the first
    truths = [g2, g4, g3, g4b]
    assert rm.select_ground_truths(truths, "fine")[0] is truths[1]
    assert rm.select_ground_truths(truths, "coarse")[0] is truths[0]
    assert len(rm.select_ground_truths(truths, "all")) == 4
    pred = random_map(rng, k=3)
    assert rm.kk_miou(pred, truths, "fine") == pytest.approx(bf_kk_miou(pred, [g4]), abs=1e-12)
    assert rm.kk_miou(pred, truths, "coarse") == pytest.approx(bf_kk_miou(pred, [g2]), abs=1e-12)
    scores = rm.region_scores(pred, truths, ground_truths="coarse")
    assert scores["pri"] == pytest.approx(bf_rand_index(pred, g2), abs=1e-12)
    assert scores["voi"] == pytest.approx(bf_voi(pred, g2), abs=1e-12)
    assert scores["covering"] == pytest.approx(bf_covering(pred, g2), abs=1e-12)
    # a single array is one ground truth
    assert rm.probabilistic_rand_index(pred, g3) == pytest.approx(bf_rand_index(pred, g3), abs=1e-12)


def test_errors():
    a = np.zeros((3, 3), int)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        rm.rand_index(a, np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer label map"):
        rm.covering(a.astype(float), a)
    with pytest.raises(ValueError, match="no ground truth"):
        rm.probabilistic_rand_index(a, [])
    with pytest.raises(ValueError, match="ground_truths"):
        rm.kk_miou(a, [a], "finest")
    with pytest.raises(ValueError, match="connectivity"):
        rm.kk_miou(a, [a], connectivity=6)
    with pytest.raises(ValueError, match="metrics"):
        rm.region_scores(a, [a], metrics=["pri", "dice"])
    with pytest.raises(ValueError, match="ground truth 2"):
        rm.region_scores(a, [a, np.zeros((2, 2), int)])


# ----------------------------------------------------------------------------- BSDS500 loader
def write_mat(path, segmentations):
    cell = np.empty((1, len(segmentations)), dtype=object)
    for i, seg in enumerate(segmentations):
        cell[0, i] = {"Segmentation": np.asarray(seg, np.uint16), "Boundaries": np.zeros(np.shape(seg), bool)}
    scipy.io.savemat(path, {"groundTruth": cell})
    return path


def test_ground_truth_loader_on_a_synthetic_mat(tmp_path):
    segs = [np.arange(12).reshape(3, 4) % k + 1 for k in (2, 3, 5)]
    out = bsds.load_bsds_ground_truth(write_mat(tmp_path / "1.mat", segs))
    assert len(out) == 3
    for got, want in zip(out, segs):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_ground_truth_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        bsds.load_bsds_ground_truth(tmp_path / "nope.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="junk.mat"):
        bsds.load_bsds_ground_truth(tmp_path / "junk.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.ones(3)})
    with pytest.raises(ValueError, match="no 'groundTruth'.*x"):
        bsds.load_bsds_ground_truth(tmp_path / "other.mat")
    write_mat(tmp_path / "shapes.mat", [np.ones((3, 4)), np.ones((4, 3))])
    with pytest.raises(ValueError, match="different shapes"):
        bsds.load_bsds_ground_truth(tmp_path / "shapes.mat")


def test_listing_a_split(tmp_path):
    for split, ids in (("val", ["20", "3", "100"]), ("train", ["7"])):
        (tmp_path / "images" / split).mkdir(parents=True)
        for i in ids:
            (tmp_path / "images" / split / f"{i}.jpg").write_bytes(b"")
    (tmp_path / "images" / "val" / "notes.txt").write_text("x")
    assert [p.name for p in bsds.list_images(tmp_path, "val")] == ["100.jpg", "20.jpg", "3.jpg"]
    assert bsds.ground_truth_path(tmp_path, "val", tmp_path / "images" / "val" / "20.jpg") == \
        tmp_path / "groundTruth" / "val" / "20.mat"
    with pytest.raises(ValueError, match="split"):
        bsds.list_images(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="test"):
        bsds.list_images(tmp_path, "test")


@pytest.mark.skipif(not (BSDS_ROOT / "groundTruth" / "val").is_dir(), reason="BSDS500 data not present")
def test_one_human_segmentation_against_the_others_on_bsds500():
    image = bsds.list_images(BSDS_ROOT, "val")[0]
    truths = bsds.load_bsds_ground_truth(bsds.ground_truth_path(BSDS_ROOT, "val", image))
    assert 4 <= len(truths) <= 9
    assert {t.shape for t in truths} in ({(321, 481)}, {(481, 321)})
    assert all(t.min() >= 1 for t in truths)
    scores = rm.region_scores(truths[0], truths[1:])
    assert 0.5 < scores["pri"] < 1.0
    assert scores["voi"] >= 0.0
    assert 0.0 < scores["covering"] <= 1.0 and 0.0 < scores["miou"] <= 1.0
