"""From accumulated sums to `CKATerms`: the centring and HSIC algebra of streaming linear CKA.

Everything here is plain float64 numpy on sums over n items of shifted rows
x' = x - shift_x, y' = y - shift_y (layer l of X has width d_l and occupies the
columns `offsets[l]:offsets[l + 1]` of a row of width D1 = sum d_l):

    s_l = sum x'_l [d_l],  s_m = sum y'_m [d_m]          (the sums of the rows)
    S_lm = sum x'_l y'_m^T [d_l, d_m]                     (uncentred cross products)
    B_l = sum x'_l x'_l^T                                 (a layer's own block)

The centred cross product is C_lm = S_lm - s_l s_m^T / n, so the O(D1 D2)
("big") terms of CKA are, per layer pair,

    cross [L1, L2]   ||C_lm||_F^2              sSs [L1, L2]      s_l^T S_lm s_m
    self_x [L1]      ||C_ll||_F^2 (of X)       sBs_x [L1]        s_l^T B_l s_l
    self_y [L2]      likewise of Y             sBs_y [L2]

and the remaining terms follow from O(L D) "small" sums (`assemble_terms`).
A dict of the six big arrays (leading axes allowed) is what `empty_big` makes,
`terms_from_sums` fills from summed blocks, and the bootstrap fills for
resampled block weights.

Within one model (Y = X) only the layer blocks l <= m of S are stored; the
diagonal block holds its upper triangle only. `mirror_within` fills l > m and
takes the normalisers from the diagonal of `cross` and `sSs`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from repro.similarity.cka import CKATerms

# kind of block -> (its Frobenius term, its s^T S s term) in a dict of big terms
BIG_KEYS = {"cross": ("cross", "sSs"), "x": ("self_x", "sBs_x"), "y": ("self_y", "sBs_y")}


def layer_offsets(dims: Sequence[int]) -> np.ndarray:
    """`[L + 1]` int64 column where each layer starts in a row of all layers side by side (last: the width)."""
    return np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)


def segment_sum(a: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """Sum the last axis of `a` `[..., sum(dims)]` per layer segment: `[..., len(dims)]`."""
    return np.add.reduceat(a, layer_offsets(dims)[:-1], axis=-1)


def symmetric_from_upper(B: np.ndarray) -> np.ndarray:
    """A full symmetric matrix from the upper triangle of square `B` (what SYRK fills)."""
    U = np.triu(B)
    full = U + U.T
    full.flat[:: B.shape[0] + 1] = np.diagonal(B)
    return full


def empty_big(L1: int, L2: int, lead: tuple = ()) -> dict[str, np.ndarray]:
    """Zeroed big terms (see module doc) for L1 x L2 layers, with leading axes `lead`."""
    return {"cross": np.zeros(lead + (L1, L2)), "sSs": np.zeros(lead + (L1, L2)),
            "self_x": np.zeros(lead + (L1,)), "sBs_x": np.zeros(lead + (L1,)),
            "self_y": np.zeros(lead + (L2,)), "sBs_y": np.zeros(lead + (L2,))}


def mirror_within(big: dict[str, np.ndarray]) -> None:
    """Within one model: fill the pairs l > m from l < m and take the normalisers from the diagonal (in place)."""
    for k in ("cross", "sSs"):
        upper = np.triu(big[k])
        big[k] = upper + np.swapaxes(np.triu(big[k], 1), -1, -2)
    d = np.arange(big["cross"].shape[-1])
    big["self_x"] = big["self_y"] = big["cross"][..., d, d].copy()
    big["sBs_x"] = big["sBs_y"] = big["sSs"][..., d, d].copy()


def terms_from_sums(small: dict[str, np.ndarray], dims_x: Sequence[int], dims_y: Sequence[int], within: bool,
                    column: Callable[[int], np.ndarray],
                    self_block: Callable[[str, int], np.ndarray]) -> CKATerms:
    """`CKATerms` of every layer pair from summed statistics.

    Args:
        small: the O(L D) sums (keys of `CKAAccumulator.small_stats`), summed over all items.
        dims_x, dims_y: layer widths of X and Y (within one model: the same).
        within: True for one model with itself (only the blocks l <= m of S are stored).
        column: m -> the summed products of X's rows with layer m of Y, `[rows, d_m]`: all D1 rows
            across models; within one model the rows up to the end of layer m, whose diagonal block
            holds its upper triangle only.
        self_block: (side "x" or "y", l) -> B_l, the full symmetric `[d_l, d_l]` sum of a layer's own
            products; used across models only (within one model they are the diagonal blocks of S).

    The O(D1 D2) terms are computed one column block at a time, centring the summed
    block directly: ||S_lm - s_l s_m^T / n||_F^2 for every l at once.
    """
    n = float(small["n"])
    if n < 2:
        raise ValueError(f"CKA needs at least 2 items, got {int(n)}")
    big = empty_big(len(dims_x), len(dims_y))
    sx, sy = small["sum_x"], small["sum_y"]
    off_x, off_y = layer_offsets(dims_x), layer_offsets(dims_y)
    for m in range(len(dims_y)):
        c0, c1 = int(off_y[m]), int(off_y[m + 1])
        S = column(m)  # [rows, d_m]
        rows = S.shape[0]
        C = np.empty(S.shape, order="F" if S.flags.f_contiguous or not S.flags.c_contiguous else "C")
        np.multiply.outer(sx[:rows], -sy[c0:c1] / n, out=C)
        C += S  # S - s_x s_m^T / n, in S's memory order
        if within:  # the diagonal block holds its upper triangle only
            D = symmetric_from_upper(S[c0:c1])
            C[c0:c1] = D - np.multiply.outer(sx[c0:c1], sy[c0:c1] / n)
        dims = dims_x[:int(np.searchsorted(off_x, rows))]  # the layers of X these rows cover
        big["cross"][:len(dims), m] = segment_sum(np.einsum("ij,ij->i", C, C), dims)
        big["sSs"][:len(dims), m] = segment_sum((S @ sy[c0:c1]) * sx[:rows], dims)
        if within:
            big["sSs"][m, m] = sy[c0:c1] @ D @ sy[c0:c1]
    if within:
        mirror_within(big)
    else:
        for side, off, s_all in (("x", off_x, sx), ("y", off_y, sy)):
            frob, sBs = BIG_KEYS[side]
            for l in range(len(off) - 1):
                s_l = s_all[off[l]:off[l + 1]]
                B = self_block(side, l)
                C = B - np.multiply.outer(s_l, s_l / n)
                big[frob][l] = np.einsum("ij,ij->", C, C)
                big[sBs][l] = s_l @ B @ s_l
    return assemble_terms(small, big, dims_x, dims_y)


def assemble_terms(small: dict[str, np.ndarray], big: dict[str, np.ndarray], dims_x, dims_y) -> CKATerms:
    """Combine the small sums and the big terms into `CKATerms` (leading axes allowed).

    `small` holds (see `CKAAccumulator.small_stats`) n, sum_x/sum_y, trace_x/trace_y
    (sum q_l, q_l = ||x'_l||^2), q2_x/q2_y (sum q_l^2), qx_x/qx_y (sum q_l x'_l), qp
    (sum q_l p_m), qy (sum q_l y'), px (sum p_m x'); `big` the terms of the module doc.
    With mu = s / n, the debiased row terms expand to (a_i = ||x'_i - mu||^2, b_i likewise)

        sum a_i b_i = qp - 2 nu.qy - 2 mu.px + |nu|^2 tr_x + |mu|^2 tr_y + 4 sSs / n^2 - 3 n |mu|^2 |nu|^2
    """
    n = np.asarray(small["n"], dtype=np.float64)
    n1 = n[..., None]
    mu, nu = small["sum_x"] / n1, small["sum_y"] / n1
    mu2, nu2 = segment_sum(mu * mu, dims_x), segment_sum(nu * nu, dims_y)  # [.., L1], [.., L2]
    tr_x, tr_y = small["trace_x"], small["trace_y"]
    nu_qy = segment_sum(small["qy"] * nu[..., None, :], dims_y)  # [.., L1, L2]
    mu_px = np.swapaxes(segment_sum(small["px"] * mu[..., None, :], dims_x), -1, -2)  # [.., L1, L2]
    n2 = n[..., None, None]
    rowdot = (small["qp"] - 2 * nu_qy - 2 * mu_px + nu2[..., None, :] * tr_x[..., :, None]
              + mu2[..., :, None] * tr_y[..., None, :] + 4 * big["sSs"] / n2 ** 2
              - 3 * n2 * mu2[..., :, None] * nu2[..., None, :])

    def own(q2, qx, m, m2, tr, sBs, dims):  # sum_i ||x'_i - mu||^4 per layer
        return q2 - 4 * segment_sum(m * qx, dims) + 2 * m2 * tr + 4 * sBs / n1 ** 2 - 3 * n1 * m2 ** 2

    return CKATerms(
        n=n, cross=big["cross"], self_x=big["self_x"], self_y=big["self_y"],
        trace_x=tr_x - n1 * mu2, trace_y=tr_y - n1 * nu2, rowdot=rowdot,
        rowdot_x=own(small["q2_x"], small["qx_x"], mu, mu2, tr_x, big["sBs_x"], dims_x),
        rowdot_y=own(small["q2_y"], small["qx_y"], nu, nu2, tr_y, big["sBs_y"], dims_y),
    )
