"""Task metrics: phone error rate, equal error rate, accuracy; cosine scoring of trials.

Plain functions on sequences and arrays; every rate is a fraction in [0, 1]. The numerical
work is done by libraries: edit distances by RapidFuzz (C++, bit-parallel Levenshtein), the
ROC sweep behind the EER by scikit-learn.
"""

from __future__ import annotations

import itertools
from typing import Hashable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein


def _token_ids(seqs: Sequence[Sequence[Hashable]]) -> dict:
    """Dense integer ids `0..V-1` of the distinct tokens of `seqs` (tokens equal by `==` share one id)."""
    distinct = dict.fromkeys(itertools.chain.from_iterable(seqs))  # first-seen order, at C speed
    return {tok: i for i, tok in enumerate(distinct)}


def _edit_distances(refs: Sequence[Sequence[Hashable]], hyps: Sequence[Sequence[Hashable]]) -> list[int]:
    """Levenshtein distance of each (ref, hyp) pair, exact for any hashable tokens.

    The tokens are first mapped to dense integer ids through one dict: RapidFuzz compares
    the elements of non-string sequences by their hash (so `"a"` would equal `97`, and two
    objects with colliding hashes would match), whereas small non-negative integers are
    compared by value.
    """
    ids = _token_ids([*refs, *hyps])
    get = ids.__getitem__
    return [Levenshtein.distance(list(map(get, r)), list(map(get, h))) for r, h in zip(refs, hyps)]


def edit_distance(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1) between two token sequences.

    Tokens are any hashable values compared with `==` (strings compare element-wise as characters).
    """
    return _edit_distances([ref], [hyp])[0]


def error_rate(refs: Sequence[Sequence[Hashable]], hyps: Sequence[Sequence[Hashable]]) -> float:
    """Corpus-level token error rate: total edit distance / total reference length (PER for phones).

    Raises ValueError if the lists differ in length or all references are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("all references are empty")
    return sum(_edit_distances(refs, hyps)) / total


def accuracy(labels: Sequence, predictions: Sequence) -> float:
    """Share of predictions equal to their label (labels may be tuples, e.g. all IC slots)."""
    if len(labels) != len(predictions) or not labels:
        raise ValueError(f"need equally many labels and predictions, got {len(labels)} and {len(predictions)}")
    return sum(a == b for a, b in zip(labels, predictions)) / len(labels)


def equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Equal error rate of verification scores, and the threshold where it is reached.

    Args:
        scores: `[N]` finite similarity scores (higher = more likely the same speaker).
        targets: `[N]` booleans, True for target (same-speaker) trials.

    A trial is accepted if its score >= the threshold. Over every distinct score (and +inf),
    the false-acceptance rate (FAR: share of non-targets accepted) falls from 1 to 0 and the
    false-rejection rate (FRR: share of targets rejected) rises from 0 to 1; where FAR - FRR
    changes sign between two consecutive thresholds, the EER is the point where the straight
    lines between them intersect (so a perfect separation gives 0 and identical score
    distributions give 0.5), and the threshold is interpolated with the same weight. The
    ROC points come from `sklearn.metrics.roc_curve` (one sort, O(N log N)).
    Returns (eer, threshold).
    """
    from sklearn.metrics import roc_curve  # deferred: importing sklearn.metrics takes seconds

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=bool).reshape(-1)
    if scores.shape != targets.shape:
        raise ValueError(f"EER needs one target flag per score, got {scores.size} scores and {targets.size} flags")
    n_tar, n_non = int(targets.sum()), int((~targets).sum())
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"EER needs target and non-target trials, got {n_tar} and {n_non}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"EER needs finite scores, got {int((~np.isfinite(scores)).sum())} NaN or infinite")
    fpr, tpr, thresholds = roc_curve(targets, scores, drop_intermediate=False)
    # roc_curve runs from the highest threshold (+inf: nothing accepted) down to the lowest score;
    # reversed, thresholds ascend and FAR - FRR decreases from 1 to -1. FRR is taken from the
    # count of rejected targets (tpr is accepted / n_tar correctly rounded, so rint recovers the count):
    # rejected / n_tar rounds once, as FAR does, where 1 - tpr would round twice.
    far, thresholds = fpr[::-1], thresholds[::-1]
    frr = (n_tar - np.rint(tpr[::-1] * n_tar)) / n_tar
    return eer_crossing(far, frr, thresholds)


def eer_crossing(far: np.ndarray, frr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) from error rates at ascending thresholds.

    Args:
        far, frr: `[K]` false-acceptance and false-rejection rates at `thresholds` `[K]` (ascending,
            the last may be +inf), FAR - FRR decreasing from positive to non-positive.

    Where FAR - FRR changes sign between thresholds k-1 and k, the EER is the point where the
    straight lines between the two (FAR, FRR) points meet, and the threshold is interpolated with
    the same weight (the last finite one when threshold k is +inf); where FAR = FRR at a threshold,
    that rate and threshold.
    """
    diff = far - frr
    k = int(np.argmax(diff <= 0))
    if k == 0 or diff[k] == 0:
        return float((far[k] + frr[k]) / 2), float(thresholds[k])
    w = diff[k - 1] / (diff[k - 1] - diff[k])
    eer = far[k - 1] + w * (far[k] - far[k - 1])
    thr = thresholds[k - 1] + w * (thresholds[k] - thresholds[k - 1]) if np.isfinite(thresholds[k]) else thresholds[k - 1]
    return float(eer), float(thr)


def cosine_scores(embeddings: np.ndarray, enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of each trial's pair of rows of `embeddings`.

    Args:
        embeddings: `[U, E]` one embedding per utterance (any scale; rows are length-normalised here,
            a zero row stays zero).
        enroll, test: `[N]` integer row indices of each trial's two utterances.
    Returns `[N]` float64 scores in [-1, 1].
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return np.sum(unit[enroll] * unit[test], axis=1)
