"""Exact streaming linear CKA between every layer of two models, from float64 sufficient statistics.

`CKAAccumulator(dims_x, dims_y)` takes batches of paired items (frames or
utterances) for all L1 layers of model X and all L2 layers of model Y at once
and returns the full `[L1, L2]` CKA matrix. Memory is O(D1 D2) with
D = sum of layer widths, whatever the number of items; nothing is approximated.

What is kept (float64: numpy arrays, or torch tensors on a GPU with
`backend="torch"`; the matrix is always computed in numpy from the sums), with every row first shifted by a fixed
reference `shift` (`x' = x - shift_x`, see below), q_l = ||x'_l||^2 and
p_m = ||y'_m||^2 the per-layer squared row norms:

    n                       items seen
    sum_x [D1], sum_y [D2]  sums of x', y'
    xy  [D1, D2]            sum x' y'^T            (the cross products of every layer pair)
    x_block_l [d_l, d_l]    sum x'_l x'_l^T        (and y_block_m: the normalisers; upper triangle)
    x_q2 [L1], x_qx [D1]    sum q_l^2, sum q_l x'_l  (and y_*: for the debiased estimator)
    qp [L1, L2], qy [L1, D2], px [L2, D1]   sum q_l p_m, sum q_l y', sum p_m x'

Within one model (`dims_y=None`, X = Y) only `xx` = the upper triangle of
sum x' x'^T (numpy: one SYRK; torch: the layer blocks l <= m), `qq` [L, L] and
`qx` [L, D] are kept: no cross product is computed twice.

Invariants (tested): the sums do not depend on how items are split into batches
or on batch order (up to float64 rounding); padded rows excluded by `mask` never
touch the sums; two accumulators with the same shift over disjoint items merge
by addition into the single-pass result; `terms()` equals the one-shot
feature-space computation of `repro.similarity.cka`.

The shift. Centring at the end (sum x x^T - n mu mu^T) cancels catastrophically
when the mean is large against the spread (mean 1e3, std 1: both terms agree in
their first 6 digits, so float64 keeps about 10 and float32 none). So every row is first shifted by a reference vector, by default the
mean of the valid rows of the first batch (`shift_x`, recorded in the state);
the sums are then about values of the data's own scale and the final centring
only removes a small residual mean. CKA is invariant to the shift, so the choice
changes rounding only. Accumulators merge only with identical shifts: shards
that must merge agree on one (pass it explicitly, e.g. the mean of the first
utterance in a fixed order).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from scipy.linalg import blas as _blas

from repro.similarity.cka import CKATerms
from repro.util.npz import atomic_write_npz, read_npz

STATE_FORMAT = 1
COMPUTE_DTYPES = ("float64", "float32")


def _offsets(dims: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)


def segment_sum(a: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """Sum the last axis of `a` `[..., sum(dims)]` per layer segment: `[..., len(dims)]`."""
    return np.add.reduceat(a, _offsets(dims)[:-1], axis=-1)


def symmetric_from_upper(B: np.ndarray) -> np.ndarray:
    """A full symmetric matrix from the upper triangle of square `B` (what SYRK fills)."""
    U = np.triu(B)
    full = U + U.T
    full.flat[:: B.shape[0] + 1] = np.diagonal(B)
    return full


class _NumpyOps:
    """Array operations of the streaming products with numpy (CPU).

    The products accumulate in place with BLAS (`dgemm` with beta = 1, `dsyrk` for
    X^T X, which fills the upper triangle only): no temporary output, no extra
    pass over the sums. The big sums are Fortran-ordered so that BLAS can write
    into them directly.
    """

    name = "numpy"

    def __init__(self, device: str = "cpu"):
        if str(device) != "cpu":
            raise ValueError(f"the numpy backend runs on the CPU only, not {device!r}; use backend='torch'")
        self.device = "cpu"

    def zeros(self, *shape):
        # calloc'd: pages are zero-filled when first written (by the BLAS threads), and pages
        # below the diagonal of a within-model SYRK are never touched at all
        return np.zeros(shape, dtype=np.float64, order="F")

    def rows(self, parts: list[np.ndarray], shift: np.ndarray | None):
        """`[m, D]` float64 rows of all layers side by side, minus `shift` (one pass, no temporaries)."""
        widths = [p.shape[1] for p in parts]
        X = np.empty((parts[0].shape[0], sum(widths)), dtype=np.float64)
        o = 0
        for p, w in zip(parts, widths):
            if shift is None:
                X[:, o:o + w] = p
            else:
                np.subtract(p, shift[o:o + w], out=X[:, o:o + w])
            o += w
        return X

    def row_norms(self, X: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """`[m, L]` squared norm of each layer's part of every row."""
        return np.stack([np.einsum("ij,ij->i", X[:, offsets[l]:offsets[l + 1]], X[:, offsets[l]:offsets[l + 1]])
                         for l in range(len(offsets) - 1)], axis=1)

    def cast(self, a, compute_dtype: str):
        return a if compute_dtype == "float64" else a.astype(np.float32)

    def finite(self, a) -> bool:
        return bool(np.isfinite(a).all())

    def numpy(self, a) -> np.ndarray:
        return a

    def asarray(self, a: np.ndarray):
        return np.array(a, dtype=np.float64, order="F")

    def cross(self, C: np.ndarray, X: np.ndarray, Y: np.ndarray) -> None:
        """C += X^T Y for C-ordered rows X `[m, D1]`, Y `[m, D2]`."""
        if X.dtype == np.float64 and C.flags.f_contiguous:
            out = _blas.dgemm(1.0, X.T, Y.T, beta=1.0, c=C, trans_b=1, overwrite_c=1)
            if out is not C:
                C[...] = out
        else:
            C += X.T @ Y

    def gram(self, C: np.ndarray, X: np.ndarray, offsets: np.ndarray) -> None:
        """C += X^T X on (at least) its upper triangle; layer blocks below the diagonal are not computed."""
        if X.dtype == np.float64 and C.flags.f_contiguous:
            out = _blas.dsyrk(1.0, np.ascontiguousarray(X).T, beta=1.0, c=C, overwrite_c=1)
            if out is not C:
                C[...] = out
            return
        for m in range(len(offsets) - 1):
            c0, c1 = int(offsets[m]), int(offsets[m + 1])
            C[:c1, c0:c1] += X[:, :c1].T @ X[:, c0:c1]


class _TorchOps:
    """The same operations with torch on any device (for GPUs: float64 products in seconds)."""

    name = "torch"

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def zeros(self, *shape):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def rows(self, parts: list[np.ndarray], shift):
        t = self.torch
        X = t.cat([t.from_numpy(np.ascontiguousarray(p, dtype=np.float64)) for p in parts], dim=1).to(self.device)
        return X if shift is None else X - shift

    def row_norms(self, X, offsets: np.ndarray):
        ind = self.torch.zeros(X.shape[1], len(offsets) - 1, dtype=X.dtype, device=X.device)
        for l in range(len(offsets) - 1):
            ind[offsets[l]:offsets[l + 1], l] = 1.0
        return (X * X) @ ind

    def cast(self, a, compute_dtype: str):
        return a if compute_dtype == "float64" else a.to(self.torch.float32)

    def finite(self, a) -> bool:
        return bool(self.torch.isfinite(a).all())

    def numpy(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def asarray(self, a: np.ndarray):
        return self.torch.tensor(np.asarray(a, dtype=np.float64), device=self.device)

    def cross(self, C, X, Y) -> None:
        """C += X^T Y in place on the device."""
        if X.dtype == C.dtype:
            C.addmm_(X.T, Y)
        else:
            C += X.T @ Y

    def gram(self, C, X, offsets: np.ndarray) -> None:
        """C += X^T X on the layer blocks at and above the diagonal only."""
        for m in range(len(offsets) - 1):
            c0, c1 = int(offsets[m]), int(offsets[m + 1])
            self.cross(C[:c1, c0:c1], X[:, :c1], X[:, c0:c1])


BACKENDS = {"numpy": _NumpyOps, "torch": _TorchOps}


def _to_rows(layers: Sequence, dims: Sequence[int], name: str, lead: tuple | None) -> tuple[list, tuple]:
    if len(layers) != len(dims):
        raise ValueError(f"{name}: expected {len(dims)} layers, got {len(layers)}")
    out = []
    for l, (a, d) in enumerate(zip(layers, dims)):
        if not isinstance(a, np.ndarray) and hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        if a.ndim < 1 or a.shape[-1] != d:
            raise ValueError(f"{name}[{l}]: expected last dimension {d}, got shape {a.shape}")
        if lead is None:
            lead = a.shape[:-1]
        if a.shape[:-1] != lead:
            raise ValueError(f"{name}[{l}]: leading shape {a.shape[:-1]} differs from {lead} (items must be paired)")
        out.append(a.reshape(-1, d))
    return out, lead


class CKAAccumulator:
    """Streaming linear CKA between the layers of X and Y (see module doc).

    Args:
        dims_x: widths of X's L1 layers.
        dims_y: widths of Y's L2 layers; None for within-model CKA (Y = X).
        shift_x, shift_y: `[D]` reference rows subtracted before accumulating
            (default: mean of the first batch's valid rows).
        compute_dtype: "float64" (default) or "float32" for the products of each
            chunk (2x faster matrix products; chunk partial sums then carry float32
            rounding, about 1e-6 relative). The sums themselves are always float64.
        backend: "numpy" (CPU) or "torch" (any torch device, e.g. a GPU); the
            results are computed in numpy from the sums either way.
        device: "cpu" for numpy; a torch device for the torch backend.
        chunk_bytes: rows per matrix product are chosen so that one float64 chunk
            of X and Y takes about this many bytes.
    """

    def __init__(self, dims_x: Sequence[int], dims_y: Sequence[int] | None = None, *,
                 shift_x=None, shift_y=None, compute_dtype: str = "float64", backend: str = "numpy",
                 device: str = "cpu", chunk_bytes: int = 256 << 20):
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        self.dims_x = tuple(int(d) for d in dims_x)
        self.symmetric = dims_y is None
        self.dims_y = self.dims_x if self.symmetric else tuple(int(d) for d in dims_y)
        if not self.dims_x or not self.dims_y or min(self.dims_x + self.dims_y) < 1:
            raise ValueError(f"layer widths must be positive; got {self.dims_x} and {self.dims_y}")
        self.compute_dtype = compute_dtype
        self.ops = BACKENDS[backend](device)
        self.chunk_bytes = int(chunk_bytes)
        self.off_x, self.off_y = _offsets(self.dims_x), _offsets(self.dims_y)
        D1, D2, L1, L2 = sum(self.dims_x), sum(self.dims_y), len(self.dims_x), len(self.dims_y)
        z = self.ops.zeros
        self.n = 0
        self.shift_x: np.ndarray | None = None
        self.shift_y: np.ndarray | None = None
        self.stats = {"sum_x": z(D1)}
        if self.symmetric:
            self.stats.update(xx=z(D1, D1), qq=z(L1, L1), qx=z(L1, D1))
        else:
            self.stats.update(sum_y=z(D2), xy=z(D1, D2), qp=z(L1, L2), qy=z(L1, D2), px=z(L2, D1),
                              x_q2=z(L1), x_qx=z(D1), y_q2=z(L2), y_qx=z(D2))
            for l, d in enumerate(self.dims_x):
                self.stats[f"x_block_{l:02d}"] = z(d, d)
            for m, d in enumerate(self.dims_y):
                self.stats[f"y_block_{m:02d}"] = z(d, d)
        self._shift_x_dev = self._shift_y_dev = None
        if shift_x is not None or shift_y is not None:
            self.set_shift(shift_x, shift_y)

    @property
    def backend(self) -> str:
        return self.ops.name

    # ----------------------------------------------------------------- input
    def set_shift(self, shift_x, shift_y=None) -> None:
        """Fix the reference rows (`[D1]`, `[D2]`; within-model: `shift_x` only). Only before any update."""
        if self.n:
            raise ValueError("the shift can only be set before the first update")
        sx = np.array(shift_x, dtype=np.float64)
        if sx.shape != (sum(self.dims_x),):
            raise ValueError(f"shift_x must have shape ({sum(self.dims_x)},), got {sx.shape}")
        if self.symmetric:
            if shift_y is not None:
                raise ValueError("a within-model accumulator takes shift_x only")
            sy = sx
        else:
            if shift_y is None:
                raise ValueError("a cross-model accumulator needs shift_y as well")
            sy = np.array(shift_y, dtype=np.float64)
            if sy.shape != (sum(self.dims_y),):
                raise ValueError(f"shift_y must have shape ({sum(self.dims_y)},), got {sy.shape}")
        if not (np.isfinite(sx).all() and np.isfinite(sy).all()):
            raise ValueError("the shift must be finite")
        self.shift_x, self.shift_y = sx, sy
        self._shift_x_dev = self.ops.asarray(sx)
        self._shift_y_dev = self._shift_x_dev if self.symmetric else self.ops.asarray(sy)

    def _rows(self, xs, ys, mask) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        xs, lead = _to_rows(xs, self.dims_x, "xs", None)
        if self.symmetric:
            if ys is not None:
                raise ValueError("a within-model accumulator (dims_y=None) takes xs only")
        else:
            if ys is None:
                raise ValueError("a cross-model accumulator needs ys")
            ys, _ = _to_rows(ys, self.dims_y, "ys", lead)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != lead:
                raise ValueError(f"mask must be a bool array of shape {lead}, got {mask.dtype} {mask.shape}")
            keep = np.flatnonzero(mask.reshape(-1))
            xs = [a[keep] for a in xs]
            ys = None if ys is None else [a[keep] for a in ys]
        return xs, ys

    def _stack(self, layers: list[np.ndarray], start: int, stop: int, shift):
        X = self.ops.rows([a[start:stop] for a in layers], shift)
        if not self.ops.finite(X):
            bad = [l for l, a in enumerate(layers) if not np.isfinite(np.asarray(a[start:stop], np.float64)).all()]
            raise ValueError(f"non-finite values (NaN or inf) in valid rows of layer(s) {bad}")
        return X

    def shift_from(self, xs, ys=None, mask=None) -> tuple[np.ndarray, np.ndarray | None]:
        """The default reference rows for a batch: the mean of its valid rows (`[D1]`, `[D2]` or None)."""
        xs, ys = self._rows(xs, ys, mask)
        if not len(xs[0]):
            raise ValueError("no valid rows to take a shift from")

        def mean(layers):
            means = [np.asarray(a, np.float64).mean(0) for a in layers]
            bad = [l for l, m in enumerate(means) if not np.isfinite(m).all()]
            if bad:
                raise ValueError(f"non-finite values (NaN or inf) in valid rows of layer(s) {bad}")
            return np.concatenate(means)

        return mean(xs), (None if ys is None else mean(ys))

    def update(self, xs: Sequence, ys: Sequence | None = None, mask=None) -> None:
        """Add a batch of paired items.

        Args:
            xs: L1 arrays (numpy or torch, any real dtype), layer l `[*lead, d_l]`,
                e.g. `[B, T, d_l]` padded frames or `[N, d_l]` rows.
            ys: L2 arrays `[*lead, d_m]` with the same leading shape (row i of
                every layer is the same item); None for a within-model accumulator.
            mask: bool `[*lead]`, True for valid items (padding: False); None = all valid.
                Masked rows are dropped before any arithmetic (they may hold anything).
        """
        xs, ys = self._rows(xs, ys, mask)
        N = len(xs[0])
        if N == 0:
            return
        if self.shift_x is None:
            self.set_shift(*self.shift_from(xs, ys))
        width = sum(self.dims_x) + (0 if self.symmetric else sum(self.dims_y))
        step = max(1, self.chunk_bytes // (8 * width))
        for start in range(0, N, step):
            stop = min(N, start + step)
            X = self._stack(xs, start, stop, self._shift_x_dev)
            Y = None if ys is None else self._stack(ys, start, stop, self._shift_y_dev)
            self._accumulate(X, Y)

    def _accumulate(self, X, Y) -> None:
        s, cd = self.stats, self.compute_dtype
        Xc = self.ops.cast(X, cd)
        Q = self.ops.row_norms(X, self.off_x)  # [m, L1] squared row norm of every layer
        s["sum_x"] += X.sum(0)
        if self.symmetric:
            self.ops.gram(s["xx"], Xc, self.off_x)
            s["qq"] += Q.T @ Q
            s["qx"] += Q.T @ X
            self.n += int(X.shape[0])
            return
        Yc = self.ops.cast(Y, cd)
        P = self.ops.row_norms(Y, self.off_y)
        s["sum_y"] += Y.sum(0)
        for side, A, Ac, R, off in (("x", X, Xc, Q, self.off_x), ("y", Y, Yc, P, self.off_y)):
            for l in range(len(off) - 1):
                c0, c1 = int(off[l]), int(off[l + 1])
                self.ops.gram(s[f"{side}_block_{l:02d}"], Ac[:, c0:c1], np.array([0, c1 - c0]))
                s[f"{side}_qx"][c0:c1] += R[:, l] @ A[:, c0:c1]
            s[f"{side}_q2"] += (R * R).sum(0)
        self.ops.cross(s["xy"], Xc, Yc)
        s["qp"] += Q.T @ P
        s["qy"] += Q.T @ Y
        s["px"] += P.T @ X
        self.n += int(X.shape[0])

    # ------------------------------------------------------ views of the sums
    def stat(self, name: str) -> np.ndarray:
        """One statistic as a numpy float64 array (a view on the CPU)."""
        return self.ops.numpy(self.stats[name])

    def cross_block(self, l: int, m: int) -> np.ndarray:
        """sum x'_l y'_m^T, `[d_l, d_m]` numpy (within-model: the stored block or its transpose)."""
        ox, oy = self.off_x, self.off_y
        if not self.symmetric:
            return self.ops.numpy(self.stats["xy"][ox[l]:ox[l + 1], oy[m]:oy[m + 1]])
        if l == m:
            return symmetric_from_upper(self.ops.numpy(self.stats["xx"][ox[l]:ox[l + 1], ox[l]:ox[l + 1]]))
        if l < m:
            return self.ops.numpy(self.stats["xx"][ox[l]:ox[l + 1], ox[m]:ox[m + 1]])
        return self.ops.numpy(self.stats["xx"][ox[m]:ox[m + 1], ox[l]:ox[l + 1]]).T

    def _raw_block(self, side: str, l: int) -> np.ndarray:
        """A layer's own block as stored (its diagonal and upper triangle are computed)."""
        if self.symmetric:
            o = self.off_x
            return self.ops.numpy(self.stats["xx"][o[l]:o[l + 1], o[l]:o[l + 1]])
        return self.stat(f"{side}_block_{l:02d}")

    def self_block(self, side: str, l: int) -> np.ndarray:
        """sum x'_l x'_l^T (side "x") or sum y'_m y'_m^T (side "y"), `[d, d]` numpy (full, symmetric)."""
        if self.symmetric:
            return self.cross_block(l, l)
        return symmetric_from_upper(self.stat(f"{side}_block_{l:02d}"))

    def small_stats(self) -> dict[str, np.ndarray]:
        """The O(L D) statistics (numpy float64), in the same form for both kinds of accumulator.

        Keys: n, sum_x [D1], sum_y [D2], trace_x [L1] (sum q_l), trace_y [L2], q2_x [L1], q2_y [L2],
        qx_x [D1] (segment l: sum q_l x'_l), qx_y [D2], qp [L1, L2], qy [L1, D2], px [L2, D1].
        All are sums over items, so the stats of disjoint item sets add.
        """
        s = {k: self.stat(k) for k in self.stats if k not in ("xx", "xy") and "_block_" not in k}
        out = {"n": np.float64(self.n), "sum_x": s["sum_x"]}
        out["trace_x"] = np.array([np.trace(self._raw_block("x", l)) for l in range(len(self.dims_x))])
        if self.symmetric:
            own = np.concatenate([s["qx"][l, self.off_x[l]:self.off_x[l + 1]] for l in range(len(self.dims_x))])
            out.update(sum_y=s["sum_x"], trace_y=out["trace_x"], q2_x=np.diag(s["qq"]).copy(),
                       q2_y=np.diag(s["qq"]).copy(), qx_x=own, qx_y=own, qp=s["qq"], qy=s["qx"], px=s["qx"])
        else:
            out["trace_y"] = np.array([np.trace(self._raw_block("y", m)) for m in range(len(self.dims_y))])
            out.update(sum_y=s["sum_y"], q2_x=s["x_q2"], q2_y=s["y_q2"], qx_x=s["x_qx"], qx_y=s["y_qx"],
                       qp=s["qp"], qy=s["qy"], px=s["px"])
        return out

    # ---------------------------------------------------------------- results
    def terms(self) -> CKATerms:
        """`CKATerms` of every layer pair (float64 numpy)."""
        return terms_of([self])

    def cka(self, debiased: bool = False) -> np.ndarray:
        """The `[L1, L2]` linear CKA matrix (float64; NaN for a layer without variance)."""
        from repro.similarity.cka import cka_from_terms

        return cka_from_terms(self.terms(), debiased)

    # ------------------------------------------------------- merge, save, load
    def compatible(self, other: "CKAAccumulator") -> str | None:
        """None when `other` can be merged into this accumulator, else the reason."""
        if (self.dims_x, self.dims_y, self.symmetric) != (other.dims_x, other.dims_y, other.symmetric):
            return (f"layer widths differ: {self.dims_x}/{None if self.symmetric else self.dims_y} vs "
                    f"{other.dims_x}/{None if other.symmetric else other.dims_y}")
        if self.n and other.n and not (np.array_equal(self.shift_x, other.shift_x)
                                      and np.array_equal(self.shift_y, other.shift_y)):
            return "the accumulators use different shifts; give every shard the same shift_x/shift_y"
        return None

    def merge(self, other: "CKAAccumulator") -> "CKAAccumulator":
        """Add the sums of `other` (disjoint items, same shift) into this one; returns self."""
        why = self.compatible(other)
        if why:
            raise ValueError(f"cannot merge CKA accumulators: {why}")
        if not other.n:
            return self
        if not self.n and (self.shift_x is None or not (np.array_equal(self.shift_x, other.shift_x)
                                                        and np.array_equal(self.shift_y, other.shift_y))):
            self.set_shift(other.shift_x, None if self.symmetric else other.shift_y)  # nothing here yet
        for k in self.stats:
            self.stats[k] += self.ops.asarray(other.stat(k))
        self.n += other.n
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything needed to resume or merge: plain numpy arrays (float64 sums)."""
        state = {"format": np.int64(STATE_FORMAT), "n": np.int64(self.n), "dims_x": np.asarray(self.dims_x, np.int64),
                 "symmetric": np.bool_(self.symmetric), "compute_dtype": np.str_(self.compute_dtype)}
        if not self.symmetric:
            state["dims_y"] = np.asarray(self.dims_y, np.int64)
        if self.shift_x is not None:
            state["shift_x"] = self.shift_x.copy()
            if not self.symmetric:
                state["shift_y"] = self.shift_y.copy()
        for k in self.stats:
            state[f"stat.{k}"] = self.stat(k).copy()
        return state

    @classmethod
    def from_state_dict(cls, state: dict, backend: str = "numpy", device: str = "cpu",
                        source: str = "state") -> "CKAAccumulator":
        """Rebuild an accumulator from `state_dict()` output."""
        if "format" not in state or int(state["format"]) != STATE_FORMAT:
            raise ValueError(f"{source}: CKA state format {state.get('format')}, expected {STATE_FORMAT}")
        sym = bool(state["symmetric"])
        acc = cls([int(d) for d in state["dims_x"]], None if sym else [int(d) for d in state["dims_y"]],
                  compute_dtype=str(state["compute_dtype"]), backend=backend, device=device)
        if "shift_x" in state:
            acc.set_shift(state["shift_x"], None if sym else state["shift_y"])
        for k in acc.stats:
            arr = state.get(f"stat.{k}")
            if arr is None or tuple(arr.shape) != tuple(acc.stats[k].shape):
                raise ValueError(f"{source}: statistic {k!r} is missing or has the wrong shape")
            acc.stats[k] = acc.ops.asarray(arr)
        acc.n = int(state["n"])
        return acc

    def save(self, path: str | os.PathLike) -> None:
        """Write the state atomically as a byte-stable `.npz`."""
        atomic_write_npz(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "numpy", device: str = "cpu") -> "CKAAccumulator":
        """Read a state written by `save`."""
        return cls.from_state_dict(read_npz(path), backend=backend, device=device, source=str(path))


def _pair_blocks(accs: Sequence[CKAAccumulator]):
    """Yield (kind, l, m, blocks, sums_l, sums_m) for every pair whose big terms are needed.

    kind "cross": S_lm over (l, m) (within-model: l <= m only); kind "x"/"y": the
    normalisers of a cross-model accumulator. `blocks` is a list over `accs`.
    """
    a0 = accs[0]
    ox, oy = a0.off_x, a0.off_y
    for l in range(len(a0.dims_x)):
        for m in range(l if a0.symmetric else 0, len(a0.dims_y)):
            yield ("cross", l, m, [a.cross_block(l, m) for a in accs],
                   [a.stat("sum_x")[ox[l]:ox[l + 1]] for a in accs],
                   [a.stat("sum_x" if a0.symmetric else "sum_y")[oy[m]:oy[m + 1]] for a in accs])
    if not a0.symmetric:
        for side, off, dims in (("x", ox, a0.dims_x), ("y", oy, a0.dims_y)):
            for l in range(len(dims)):
                sums = [a.stat(f"sum_{side}")[off[l]:off[l + 1]] for a in accs]
                yield side, l, l, [a.self_block(side, l) for a in accs], sums, sums


def _check_group(accs: Sequence[CKAAccumulator]) -> None:
    if not accs:
        raise ValueError("no accumulators")
    for a in accs[1:]:
        why = accs[0].compatible(a)
        if why:
            raise ValueError(f"these accumulators cannot be combined: {why}")


def _sum_small(accs: Sequence[CKAAccumulator]) -> dict[str, np.ndarray]:
    smalls = [a.small_stats() for a in accs]
    return {k: sum(s[k] for s in smalls) for k in smalls[0]}


def _empty_big(a0: CKAAccumulator, lead: tuple = ()) -> dict[str, np.ndarray]:
    L1, L2 = len(a0.dims_x), len(a0.dims_y)
    return {"cross": np.zeros(lead + (L1, L2)), "sSs": np.zeros(lead + (L1, L2)),
            "self_x": np.zeros(lead + (L1,)), "sBs_x": np.zeros(lead + (L1,)),
            "self_y": np.zeros(lead + (L2,)), "sBs_y": np.zeros(lead + (L2,))}


def _mirror(big: dict, symmetric: bool) -> None:
    """Within-model: fill l > m from l < m and take the normalisers from the diagonal."""
    if not symmetric:
        return
    for k in ("cross", "sSs"):
        upper = np.triu(big[k])
        big[k] = upper + np.swapaxes(np.triu(big[k], 1), -1, -2)
    d = np.arange(big["cross"].shape[-1])
    big["self_x"] = big["self_y"] = big["cross"][..., d, d].copy()
    big["sBs_x"] = big["sBs_y"] = big["sSs"][..., d, d].copy()


def terms_of(accs: Sequence[CKAAccumulator]) -> CKATerms:
    """`CKATerms` of the union of the items of `accs` (same layers and shift), e.g. bootstrap blocks.

    The O(D1 D2) terms are computed one column block (all of X against layer m)
    at a time, centring the summed block directly: ||S_lm - s_l s_m^T / n||_F^2.
    """
    _check_group(accs)
    small = _sum_small(accs)
    n = float(small["n"])
    if n < 2:
        raise ValueError(f"CKA needs at least 2 items, got {int(n)}")
    a0 = accs[0]
    big = _empty_big(a0)
    sx, sy = small["sum_x"], small["sum_y"]
    cross = "xx" if a0.symmetric else "xy"
    for m in range(len(a0.dims_y)):
        c0, c1 = int(a0.off_y[m]), int(a0.off_y[m + 1])
        rows = c1 if a0.symmetric else len(sx)  # within-model: blocks l <= m only
        S = _summed([a.ops.numpy(a.stats[cross][:rows, c0:c1]) for a in accs])  # [rows, d_m]
        C = np.empty(S.shape, order="F" if S.flags.f_contiguous or not S.flags.c_contiguous else "C")
        np.multiply.outer(sx[:rows], -sy[c0:c1] / n, out=C)
        C += S  # S - s_x s_m^T / n, in S's memory order
        if a0.symmetric:  # the diagonal block holds its upper triangle only
            D = symmetric_from_upper(S[c0:c1])
            C[c0:c1] = D - np.multiply.outer(sx[c0:c1], sy[c0:c1] / n)
        dims = a0.dims_x[:m + 1] if a0.symmetric else a0.dims_x
        big["cross"][:len(dims), m] = segment_sum(np.einsum("ij,ij->i", C, C), dims)
        big["sSs"][:len(dims), m] = segment_sum((S @ sy[c0:c1]) * sx[:rows], dims)
        if a0.symmetric:
            big["sSs"][m, m] = sy[c0:c1] @ D @ sy[c0:c1]
    if not a0.symmetric:
        for side, off, s_all in (("x", a0.off_x, sx), ("y", a0.off_y, sy)):
            for l in range(len(off) - 1):
                s_l = s_all[off[l]:off[l + 1]]
                B = _summed([a.self_block(side, l) for a in accs])
                C = B - np.multiply.outer(s_l, s_l / n)
                big[f"self_{side}"][l] = np.einsum("ij,ij->", C, C)
                big[f"sBs_{side}"][l] = s_l @ B @ s_l
    _mirror(big, a0.symmetric)  # within-model: fill l > m from l < m
    return assemble_terms(small, big, a0.dims_x, a0.dims_y)


def _summed(arrays: list[np.ndarray], copy: bool = False) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0].copy() if copy else arrays[0]
    return sum(arrays[1:], arrays[0].copy())


def assemble_terms(small: dict[str, np.ndarray], big: dict[str, np.ndarray], dims_x, dims_y) -> CKATerms:
    """Combine the small sums and the big terms into `CKATerms` (leading axes allowed).

    `big` holds cross [.., L1, L2] = ||C_lm||^2, self_x/self_y = ||C_ll||^2 and
    sSs [.., L1, L2] = s_l^T S_lm s_m, sBs_x/sBs_y = s_l^T B_l s_l (s: sums of
    shifted rows, S/B: uncentred cross-product blocks). With mu = s / n, the
    debiased row terms expand to (a_i = ||x'_i - mu||^2, b_i likewise)

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

