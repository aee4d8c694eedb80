"""Dice and label matching against brute-force references."""

import itertools

import numpy as np
import pytest

from deepgmm.metrics import dice, dice_matrix, evaluate, match_labels, relabel


def naive_dice(a, b):
    s = a.sum() + b.sum()
    return np.nan if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def test_dice_matrix_matches_naive_loop():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, (20, 30))
    t = rng.integers(0, 4, (20, 30))
    pl, tl = [1, 2, 3, 4, 7], [1, 2, 3]
    m = dice_matrix(p, t, pl, tl)
    ref = np.array([[naive_dice(p == a, t == b) for b in tl] for a in pl])
    np.testing.assert_allclose(m, ref)
    assert np.all(m[4] == 0)  # label 7 never predicted, truth present: Dice 0


def test_dice_of_identical_maps_is_one_and_empty_pair_is_nan():
    t = np.array([[0, 1, 1], [2, 2, 0]])
    assert dice(t, t) == {1: 1.0, 2: 1.0}
    assert np.isnan(dice(t, t, labels=[1, 5])[5])


def test_hungarian_matches_brute_force_best_permutation():
    rng = np.random.default_rng(1)
    for trial in range(5):
        t = rng.integers(1, 5, (30, 30))
        perm = rng.permutation(4) + 1
        p = perm[t - 1]
        noise = rng.random(t.shape) < 0.3
        p[noise] = rng.integers(1, 5, noise.sum())
        mapping = match_labels(p, t, method="hungarian")
        best = max(
            itertools.permutations([1, 2, 3, 4]),
            key=lambda q: sum(naive_dice(p == a, t == b) for a, b in zip([1, 2, 3, 4], q)),
        )
        assert mapping == dict(zip([1, 2, 3, 4], best))


def test_greedy_takes_classes_in_order():
    # truth class 1 overlaps pred 1 best, truth class 2 then gets the best remaining label
    t = np.array([1, 1, 1, 2, 2, 2])
    p = np.array([1, 1, 2, 1, 3, 3])
    assert match_labels(p, t, method="greedy") == {1: 1, 3: 2}
    assert match_labels(p, t, method="none") == {1: 1, 2: 2, 3: 3}


def test_greedy_can_be_worse_than_hungarian():
    t = np.array([1] * 10 + [2] * 10)
    p = np.array([1] * 6 + [2] * 4 + [1] * 10)
    h = evaluate(p, t, matching="hungarian")
    g = evaluate(p, t, matching="greedy")
    assert h.mean >= g.mean


def test_evaluate_permuted_labels_scores_one():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 5, (40, 40))
    p = np.array([0, 3, 1, 4, 2])[t]
    e = evaluate(p, t)
    assert e.dice == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0} and e.mean == 1.0
    assert e.mapping == {3: 1, 1: 2, 4: 3, 2: 4}


def test_evaluate_with_label_codes_and_names():
    t = np.array([0, 500, 500, 200, 1220, 600])
    p = np.array([0, 2, 2, 1, 3, 0])
    e = evaluate(p, t, labels=[500, 200, 1220], names=["blood", "myo", "edema"])
    assert e.dice == {500: 1.0, 200: 1.0, 1220: 1.0}  # 600 is background
    d = e.to_dict()
    assert d["dice"] == {"blood": 1.0, "myo": 1.0, "edema": 1.0} and d["matching"] == "hungarian"


def test_more_truth_classes_than_predicted_labels():
    t = np.array([1, 1, 2, 2, 3, 3])
    p = np.array([1, 1, 2, 2, 2, 2])
    e = evaluate(p, t)
    assert e.dice[1] == 1.0 and e.dice[3] == 0.0 or e.dice[2] == 0.0


def test_relabel():
    p = np.array([[0, 1, 2], [3, 3, 1]])
    np.testing.assert_array_equal(relabel(p, {1: 10, 2: 20}), [[0, 10, 20], [0, 0, 10]])


def test_errors():
    with pytest.raises(ValueError, match=r"prediction has shape \(2,\) but ground truth has shape \(3,\)"):
        dice(np.zeros(2, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="non-integer"):
        dice(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="matching must be one of"):
        match_labels(np.zeros(2, int), np.zeros(2, int), method="best")
    with pytest.raises(ValueError, match="names has 1 entries but labels has 2"):
        evaluate(np.zeros(2, int), np.array([1, 2]), labels=[1, 2], names=["a"])
