"""Linear CKA of two representations held in memory: feature-space and Gram-space forms.

Both forms take `X` `[n, d1]` and `Y` `[n, d2]` whose rows are paired (row `i`
of both is the same frame or utterance), any real dtype; everything is
computed in float64 and the result is a Python float.

Feature space (cost O(n d1 d2), memory O(d1 d2)):

    Xc, Yc = X - mean(X), Y - mean(Y)                       (column means)
    CKA    = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

Gram space (cost O(n^2 d), memory O(n^2)), used to cross-check the above:

    K, L = X X^T, Y Y^T;   CKA = <HKH, HLH>_F / (||HKH||_F ||HLH||_F),  H = I - 11^T/n

Debiased CKA replaces each HSIC by the unbiased estimator of Song et al. (2012)
on Gram matrices with zeroed diagonals (Kornblith et al., 2019; needs n > 3).
In feature space it follows from five quantities of the centred features
(derived in `debiased_hsic`), which is what the streaming accumulator keeps.

Invariants (tested): CKA(X, X) = 1; CKA(X, Y) = CKA(Y, X); invariance to an
orthogonal transform or isotropic scaling of either side and to adding a
constant row vector; biased CKA lies in [0, 1]. A constant representation has
no variance and CKA is undefined: the result is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CKATerms:
    """What both CKA estimators need, per pair of layers (float64 arrays; leading axes allowed).

    With centred features `xc_i` (layer l of X) and `yc_i` (layer m of Y) over `n` items:

    Attributes:
        n: number of items (scalar or array broadcasting against the others).
        cross: `[..., L1, L2]` ||Xc_l^T Yc_m||_F^2.
        self_x: `[..., L1]` ||Xc_l^T Xc_l||_F^2.
        self_y: `[..., L2]` ||Yc_m^T Yc_m||_F^2.
        trace_x: `[..., L1]` sum_i ||xc_i||^2 (= trace of Xc_l^T Xc_l).
        trace_y: `[..., L2]` sum_i ||yc_i||^2.
        rowdot: `[..., L1, L2]` sum_i ||xc_i||^2 ||yc_i||^2.
        rowdot_x: `[..., L1]` sum_i ||xc_i||^4.
        rowdot_y: `[..., L2]` sum_i ||yc_i||^4.
    """

    n: np.ndarray | float
    cross: np.ndarray
    self_x: np.ndarray
    self_y: np.ndarray
    trace_x: np.ndarray
    trace_y: np.ndarray
    rowdot: np.ndarray
    rowdot_x: np.ndarray
    rowdot_y: np.ndarray


def debiased_hsic(frob: np.ndarray, trace_x: np.ndarray, trace_y: np.ndarray, rowdot: np.ndarray,
                  n: np.ndarray | float) -> np.ndarray:
    """Unbiased HSIC of linear kernels from centred-feature quantities (elementwise, n > 3).

    With K = Xc Xc^T, L = Yc Yc^T, their zero-diagonal versions K~, L~, a_i = ||xc_i||^2,
    b_i = ||yc_i||^2, and 1^T K 1 = 0 because Xc is centred:
    tr(K~ L~) = ||Xc^T Yc||^2 - a.b,  1^T K~ 1 = -sum a,  1^T K~ L~ 1 = a.b, so Song et al.'s

        [tr(K~L~) + (1^T K~ 1)(1^T L~ 1)/((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))

    becomes `[frob + trace_x trace_y / ((n-1)(n-2)) - n/(n-2) rowdot] / (n(n-3))`.
    """
    n = np.asarray(n, dtype=np.float64)
    return (frob + trace_x * trace_y / ((n - 1) * (n - 2)) - n / (n - 2) * rowdot) / (n * (n - 3))


def cka_from_terms(t: CKATerms, debiased: bool = False) -> np.ndarray:
    """The `[..., L1, L2]` CKA matrix from `CKATerms` (NaN where a layer has no variance)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if not debiased:
            return t.cross / np.sqrt(t.self_x[..., :, None] * t.self_y[..., None, :])
        n = np.asarray(t.n, dtype=np.float64)
        nxy = n[..., None, None] if n.ndim else n
        nx = n[..., None] if n.ndim else n
        hxy = debiased_hsic(t.cross, t.trace_x[..., :, None], t.trace_y[..., None, :], t.rowdot, nxy)
        hxx = debiased_hsic(t.self_x, t.trace_x, t.trace_x, t.rowdot_x, nx)
        hyy = debiased_hsic(t.self_y, t.trace_y, t.trace_y, t.rowdot_y, nx)
        return hxy / np.sqrt(hxx[..., :, None] * hyy[..., None, :])


def _as_pair(X, Y, debiased: bool) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D [n, d]; got shapes {X.shape} and {Y.shape}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows (paired items); got {X.shape[0]} and {Y.shape[0]}")
    need = 4 if debiased else 2
    if X.shape[0] < need:
        raise ValueError(f"{'debiased ' if debiased else ''}CKA needs at least {need} items, got {X.shape[0]}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("X and Y must be finite (no NaN or inf)")
    return X, Y


def feature_terms(X, Y) -> CKATerms:
    """`CKATerms` of one pair (L1 = L2 = 1) computed directly from centred float64 features."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    a = np.einsum("ij,ij->i", Xc, Xc)
    b = np.einsum("ij,ij->i", Yc, Yc)

    def sq(M):
        return np.array([float(np.sum(M * M))])

    return CKATerms(
        n=float(X.shape[0]), cross=sq(Xc.T @ Yc)[:, None], self_x=sq(Xc.T @ Xc), self_y=sq(Yc.T @ Yc),
        trace_x=np.array([a.sum()]), trace_y=np.array([b.sum()]), rowdot=np.array([[a @ b]]),
        rowdot_x=np.array([a @ a]), rowdot_y=np.array([b @ b]),
    )


def linear_cka(X, Y, debiased: bool = False) -> float:
    """Linear CKA of `X` `[n, d1]` and `Y` `[n, d2]` in feature space (see module doc).

    Args:
        X, Y: paired items (same n), any real dtype; computed in float64 after
            subtracting column means (two passes, so a large common offset is harmless).
        debiased: use the unbiased HSIC estimator (n > 3); may be slightly negative.

    Returns:
        CKA as a float; NaN when X or Y has no variance.
    """
    X, Y = _as_pair(X, Y, debiased)
    return float(cka_from_terms(feature_terms(X, Y), debiased)[0, 0])


def _centre_gram(K: np.ndarray) -> np.ndarray:
    return K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()


def _hsic_gram(K: np.ndarray, L: np.ndarray, debiased: bool) -> float:
    if not debiased:
        return float(np.sum(_centre_gram(K) * _centre_gram(L)))
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    k1, l1 = Kt.sum(axis=1), Lt.sum(axis=1)
    return float((np.sum(Kt * Lt) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1))
                 / (n * (n - 3)))


def cka_from_grams(K, L, debiased: bool = False) -> float:
    """CKA of two symmetric `[n, n]` Gram (kernel) matrices over the same items.

    Biased: <HKH, HLH> / (||HKH|| ||HLH||). Debiased: the same ratio of
    Song et al.'s unbiased HSIC estimators (n > 3). NaN when a Gram matrix has
    no centred variance.
    """
    K = np.asarray(K, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape != L.shape:
        raise ValueError(f"K and L must be square and of the same shape; got {K.shape} and {L.shape}")
    if debiased and K.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 items, got {K.shape[0]}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_hsic_gram(K, L, debiased)
                     / np.sqrt(_hsic_gram(K, K, debiased) * _hsic_gram(L, L, debiased)))


def linear_cka_gram(X, Y, debiased: bool = False) -> float:
    """Linear CKA of `X` `[n, d1]` and `Y` `[n, d2]` through their `[n, n]` Gram matrices.

    Equal to `linear_cka(X, Y, debiased)` up to rounding; O(n^2) memory, so for
    small n only (tests, cross-checks, n << d).
    """
    X, Y = _as_pair(X, Y, debiased)
    return cka_from_grams(X @ X.T, Y @ Y.T, debiased)
