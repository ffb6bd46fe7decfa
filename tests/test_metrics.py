import numpy as np
import pytest

from repro.metrics import accuracy, edit_distance, equal_error_rate, error_rate


def test_edit_distance_by_hand():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    assert edit_distance(["a"], ["a"]) == 0


def test_error_rate_is_corpus_level():
    # 1 deletion over 3 phones + 1 substitution over 1 phone = 2 / 4
    assert error_rate([["a", "b", "c"], ["d"]], [["a", "c"], ["e"]]) == 0.5
    with pytest.raises(ValueError):
        error_rate([["a"]], [])


def test_accuracy_with_tuples():
    assert accuracy([("a", "x"), ("b", "y")], [("a", "x"), ("b", "z")]) == 0.5


def test_eer_known_crossings():
    # perfectly separated: 0
    assert equal_error_rate(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0], bool))[0] == 0.0
    # perfectly inverted: 1
    assert equal_error_rate(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0], bool))[0] == 1.0
    # accept if score >= t; FAR = share of non-targets accepted, FRR = share of targets rejected.
    # targets 2,3,4,5; non-targets 0,1,2.5,6: at t=3 FAR = 1/4 (6) and FRR = 1/4 (2): EER = 0.25 exactly
    eer, thr = equal_error_rate(np.array([2, 3, 4, 5, 0, 1, 2.5, 6.0]), np.array([1] * 4 + [0] * 4, bool))
    assert eer == pytest.approx(0.25) and thr == 3.0
    # targets 1..5, non-targets 0, 2.5: t=2.5 FAR=1/2 FRR=2/5 (diff +0.1); t=3 FAR=0 FRR=2/5 (diff -0.4);
    # the lines cross at 1/5 of the way: FAR = 0.5 - 0.2 * 0.5 = 0.4 = FRR
    eer, thr = equal_error_rate(np.array([1, 2, 3, 4, 5, 0, 2.5]), np.array([1] * 5 + [0] * 2, bool))
    assert eer == pytest.approx(0.4) and thr == pytest.approx(2.6)


def test_eer_of_identical_distributions_is_half():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(20000)
    eer, _ = equal_error_rate(s, rng.random(20000) < 0.5)
    assert abs(eer - 0.5) < 0.02


def test_eer_needs_both_kinds():
    with pytest.raises(ValueError, match="target and non-target"):
        equal_error_rate(np.array([1.0, 2.0]), np.array([True, True]))
