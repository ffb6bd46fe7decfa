import random
from fractions import Fraction

import numpy as np
import pytest

from repro.metrics import accuracy, cosine_scores, edit_distance, equal_error_rate, error_rate


def reference_edit_distance(ref, hyp) -> int:
    """The textbook dynamic programme (the benchmark's baseline), the oracle."""
    from repro.bench.metrics import baseline_edit_distance

    return baseline_edit_distance(ref, hyp)


def oracle_equal_error_rate(scores, targets) -> tuple[Fraction, Fraction]:
    """The EER from its definition, in exact rational arithmetic, sharing nothing with the code.

    Accept a trial when its score >= t. For every distinct score t (ascending, then +inf) count by
    hand the accepted non-targets (FAR) and rejected targets (FRR); the points (FAR, FRR) form the
    DET polyline, which runs from (1, 0) to (0, 1). The EER is where that polyline meets the diagonal
    FAR = FRR: a vertex on it, or the one segment that crosses it (its point s of the way from one
    end, the threshold s of the way between the two ends' thresholds; the first end's threshold when
    the second is +inf)."""
    scores = [Fraction(float(s)) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
    flags = [bool(t) for t in np.asarray(targets).reshape(-1)]
    tar = [s for s, t in zip(scores, flags) if t]
    non = [s for s, t in zip(scores, flags) if not t]
    points = []
    for t in sorted(set(scores)) + [None]:  # None: +inf, nothing accepted
        far = Fraction(sum(1 for s in non if t is not None and s >= t), len(non))
        frr = Fraction(sum(1 for s in tar if t is None or s < t), len(tar))
        points.append((far, frr, t))
    for (x0, y0, t0), (x1, y1, t1) in zip(points, points[1:]):
        if x0 == y0:
            return x0, t0
        if x1 == y1:
            return x1, t1 if t1 is not None else t0
        if (x0 - y0) * (x1 - y1) < 0:  # the segment crosses the diagonal at x0 + s (x1 - x0) = y0 + s (y1 - y0)
            s = (x0 - y0) / ((x0 - y0) - (x1 - y1))
            return x0 + s * (x1 - x0), t0 if t1 is None else t0 + s * (t1 - t0)
    raise AssertionError("the DET polyline always meets the diagonal")


def test_the_oracle_on_crossings_computed_by_hand():
    # targets 1..5, non-targets 0 and 2.5: at t=2.5 (FAR, FRR) = (1/2, 2/5), at t=3 (0, 2/5): the segment
    # meets FAR = FRR where 1/2 - s/2 = 2/5, s = 1/5: EER 2/5 at threshold 2.5 + 0.5/5 = 2.6
    assert oracle_equal_error_rate([1, 2, 3, 4, 5, 0, 2.5], [1] * 5 + [0] * 2) == (Fraction(2, 5), Fraction(13, 5))
    # a vertex on the diagonal: at t=3, FAR = 1/4 (6 accepted), FRR = 1/4 (2 rejected)
    assert oracle_equal_error_rate([2, 3, 4, 5, 0, 1, 2.5, 6], [1] * 4 + [0] * 4) == (Fraction(1, 4), 3)
    # targets 1 and 3, non-target 2: (FAR, FRR) = (1, 0) at t=1, (1, 1/2) at t=2, (0, 1/2) at t=3: the
    # segment from t=2 to t=3 meets the diagonal half way, EER 1/2 at threshold 2.5
    assert oracle_equal_error_rate([1, 3, 2], [1, 1, 0]) == (Fraction(1, 2), Fraction(5, 2))
    # perfectly separated: (0, 0) at the lowest target score; perfectly inverted: (1, 1) at the lowest non-target score
    assert oracle_equal_error_rate([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == (0, Fraction(0.8))
    assert oracle_equal_error_rate([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == (1, Fraction(0.8))


def test_edit_distance_by_hand():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1
    assert edit_distance(["a"], ["a"]) == 0
    assert edit_distance([], []) == 0


def test_edit_distance_compares_tokens_by_equality_not_by_hash():
    # hash(-1) == hash(-2) in CPython, and a hash-based comparison takes "a" for ord("a") == 97
    assert edit_distance([-1], [-2]) == 1
    assert edit_distance(["a"], [97]) == 1
    assert edit_distance([("a", 1), "aa"], [("a", 1), "ab"]) == 1

    class Colliding:
        def __init__(self, v):
            self.v = v

        def __eq__(self, other):
            return self.v == other.v

        def __hash__(self):
            return 0

    assert edit_distance([Colliding(1), Colliding(2)], [Colliding(2), Colliding(2)]) == 1


def test_edit_distance_matches_the_dynamic_programme_on_random_sequences():
    rng = random.Random(0)
    for trial in range(400):
        alphabet = [f"p{i}" for i in range(rng.choice([1, 2, 5, 40]))] + [3, -1, -2, ("t", 1)]
        ref = [rng.choice(alphabet) for _ in range(rng.randint(0, 80 if trial % 10 else 300))]
        hyp = [rng.choice(alphabet) if rng.random() < 0.3 else tok for tok in ref]
        hyp = [tok for tok in hyp if rng.random() > 0.1] + [rng.choice(alphabet) for _ in range(rng.randint(0, 5))]
        assert edit_distance(ref, hyp) == reference_edit_distance(ref, hyp), (ref, hyp)


def test_error_rate_is_corpus_level():
    # 1 deletion over 3 phones + 1 substitution over 1 phone = 2 / 4
    assert error_rate([["a", "b", "c"], ["d"]], [["a", "c"], ["e"]]) == 0.5
    with pytest.raises(ValueError):
        error_rate([["a"]], [])
    with pytest.raises(ValueError, match="all references are empty"):
        error_rate([[]], [["a"]])


def test_error_rate_equals_the_summed_oracle_distances():
    rng = random.Random(1)
    phones = [f"ph{i}" for i in range(39)]
    refs = [[rng.choice(phones) for _ in range(rng.randint(1, 120))] for _ in range(50)]
    hyps = [[p if rng.random() > 0.2 else rng.choice(phones) for p in r if rng.random() > 0.05] for r in refs]
    expected = sum(reference_edit_distance(r, h) for r, h in zip(refs, hyps)) / sum(map(len, refs))
    assert error_rate(refs, hyps) == expected


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


def test_eer_matches_the_exact_oracle_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(2, 400))
        targets = rng.random(n) < rng.uniform(0.05, 0.95)
        targets[0], targets[1] = True, False  # both kinds present
        kind = case % 4
        if kind == 0:  # continuous, overlapping
            scores = rng.standard_normal(n) + rng.uniform(0, 3) * targets
        elif kind == 1:  # few distinct values: many ties, also across the two kinds
            scores = rng.integers(0, int(rng.integers(1, 6)), n).astype(float) + targets * rng.integers(0, 2)
        elif kind == 2:  # cosine-like, rounded to 2 decimals
            scores = np.round(np.tanh(rng.standard_normal(n) * 0.5 + 0.6 * targets), 2)
        else:  # perfectly separated or inverted, with ties inside each kind
            sign = 1 if rng.random() < 0.5 else -1
            scores = sign * (targets * 10.0 + rng.integers(0, 3, n))
        got, want = equal_error_rate(scores, targets), oracle_equal_error_rate(scores, targets)
        assert got[0] == pytest.approx(float(want[0]), abs=1e-12), (case, scores, targets)
        assert got[1] == pytest.approx(float(want[1]), abs=1e-12), (case, scores, targets)


def test_eer_of_identical_distributions_is_half():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(20000)
    eer, _ = equal_error_rate(s, rng.random(20000) < 0.5)
    assert abs(eer - 0.5) < 0.02


def test_eer_needs_both_kinds_and_finite_scores():
    with pytest.raises(ValueError, match="target and non-target"):
        equal_error_rate(np.array([1.0, 2.0]), np.array([True, True]))
    with pytest.raises(ValueError, match="finite scores"):
        equal_error_rate(np.array([1.0, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="one target flag per score"):
        equal_error_rate(np.array([1.0, 2.0, 3.0]), np.array([True, False]))


def test_cosine_scores_of_trials():
    emb = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
    scores = cosine_scores(emb, np.array([0, 0, 1, 2, 3]), np.array([1, 2, 1, 0, 0]))
    np.testing.assert_allclose(scores, [0.6, -0.8, 1.0, -0.8, 0.0], rtol=0, atol=1e-15)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 16))
    enroll, test = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    expected = [float(emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])) for a, b in zip(enroll, test)]
    np.testing.assert_allclose(cosine_scores(emb, enroll, test), expected, rtol=0, atol=1e-12)


def test_score_trials_equals_the_per_trial_loop():
    import torch

    from repro.data.manifest import Trial
    from repro.probing.trainer import score_trials, trial_scores

    rng = np.random.default_rng(3)
    ids = [f"utt{i}" for i in range(60)]
    emb = {u: (torch.from_numpy(rng.standard_normal(24)).float() if i % 2 else rng.standard_normal(24) * (i + 1))
           for i, u in enumerate(ids)}
    trials = [Trial(bool(rng.random() < 0.3), ids[a], ids[b]) for a, b in rng.integers(0, 60, (500, 2))]

    # the per-trial loop it replaces: unit vectors as float64 tensors, one dot product per trial
    def unit(v):
        v = torch.as_tensor(np.asarray(v, dtype=np.float64))
        return v / v.norm().clamp(min=1e-12)

    cache = {k: unit(v) for k, v in emb.items()}
    loop_scores = np.array([float(cache[t.enroll] @ cache[t.test]) for t in trials])
    np.testing.assert_allclose(trial_scores(emb, trials), loop_scores, rtol=0, atol=1e-12)
    targets = np.array([t.target for t in trials])
    assert score_trials(emb, trials) == pytest.approx(float(oracle_equal_error_rate(loop_scores, targets)[0]), abs=1e-12)
    with pytest.raises(ValueError, match=r"1 trial utterance\(s\) have no embedding, e.g. \['missing'\]"):
        score_trials(emb, [Trial(True, "utt0", "missing")])
