"""Exact streaming linear CKA between every layer of two models, from float64 sufficient statistics.

`CKAAccumulator(dims_x, dims_y)` takes batches of paired items (frames or
utterances) for all L1 layers of model X and all L2 layers of model Y at once
and returns the full `[L1, L2]` CKA matrix. Memory is O(D1 D2) with
D = sum of layer widths, whatever the number of items; nothing is approximated.

What is kept (float64 on a backend of `repro.similarity.backends`: numpy arrays,
or torch tensors on a GPU with `backend="torch"`), with every row first shifted
by a fixed reference `shift` (`x' = x - shift_x`, see below), q_l = ||x'_l||^2
and p_m = ||y'_m||^2 the per-layer squared row norms:

    n                       items seen
    sum_x [D1], sum_y [D2]  sums of x', y'
    xy  [D1, D2]            sum x' y'^T            (the cross products of every layer pair)
    x_block_l [d_l, d_l]    sum x'_l x'_l^T        (and y_block_m: the normalisers; upper triangle)
    x_q2 [L1], x_qx [D1]    sum q_l^2, sum q_l x'_l  (and y_*: for the debiased estimator)
    qp [L1, L2], qy [L1, D2], px [L2, D1]   sum q_l p_m, sum q_l y', sum p_m x'

Within one model (`dims_y=None`, X = Y) only `xx` = the upper triangle of
sum x' x'^T (numpy: one SYRK; torch: the layer blocks l <= m), `qq` [L, L] and
`qx` [L, D] are kept: no cross product is computed twice.

The matrix is always computed in numpy from the sums (`repro.similarity.statistics`:
centring and HSIC algebra); `terms_of` does so for the union of several
accumulators' items (bootstrap blocks, shards) without adding their big sums up
front. `state_dict` / `save` serialise the sums for resuming and merging.

Invariants (tested): the sums do not depend on how items are split into batches
or on batch order (up to float64 rounding); padded rows excluded by `mask` never
touch the sums; two accumulators with the same shift over disjoint items merge
by addition into the single-pass result; `terms()` equals the one-shot
feature-space computation of `repro.similarity.cka`.

The shift. Centring at the end (sum x x^T - n mu mu^T) cancels catastrophically
when the mean is large against the spread (mean 1e3, std 1: both terms agree in
their first 6 digits, so float64 keeps about 10 and float32 none). So every row
is first shifted by a reference vector, by default the mean of the valid rows of
the first batch (`shift_x`, recorded in the state);
the sums are then about values of the data's own scale and the final centring
only removes a small residual mean. CKA is invariant to the shift, so the choice
changes rounding only. Accumulators merge only with identical shifts: shards
that must merge agree on one (pass it explicitly, e.g. the mean of the first
utterance in a fixed order).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from repro.similarity.backends import make_backend
from repro.similarity.cka import CKATerms, cka_from_terms
from repro.similarity.statistics import layer_offsets, symmetric_from_upper, terms_from_sums
from repro.util.npz import atomic_write_npz, read_npz

STATE_FORMAT = 1
COMPUTE_DTYPES = ("float64", "float32")


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
        self.dims_x = tuple(int(d) for d in dims_x)
        self.symmetric = dims_y is None
        self.dims_y = self.dims_x if self.symmetric else tuple(int(d) for d in dims_y)
        if not self.dims_x or not self.dims_y or min(self.dims_x + self.dims_y) < 1:
            raise ValueError(f"layer widths must be positive; got {self.dims_x} and {self.dims_y}")
        self.compute_dtype = compute_dtype
        self.ops = make_backend(backend, device)  # where the sums live and the products run
        self.chunk_bytes = int(chunk_bytes)
        self.off_x, self.off_y = layer_offsets(self.dims_x), layer_offsets(self.dims_y)
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
        """Add shifted rows X `[m, D1]` (and Y `[m, D2]`; None within one model) into the sums."""
        s, ops = self.stats, self.ops
        Xc = ops.cast(X, self.compute_dtype)
        Q = ops.row_norms(X, self.off_x)  # [m, L1] squared row norm of every layer
        s["sum_x"] += X.sum(0)
        if self.symmetric:  # one SYRK: the blocks l <= m; qq and qx serve as both sides' terms
            ops.gram(s["xx"], Xc, self.off_x)
            s["qq"] += Q.T @ Q
            s["qx"] += Q.T @ X
        else:
            Yc = ops.cast(Y, self.compute_dtype)
            P = ops.row_norms(Y, self.off_y)
            s["sum_y"] += Y.sum(0)
            for side, A, Ac, R, off in (("x", X, Xc, Q, self.off_x), ("y", Y, Yc, P, self.off_y)):
                for l in range(len(off) - 1):
                    c0, c1 = int(off[l]), int(off[l + 1])
                    ops.gram(s[f"{side}_block_{l:02d}"], Ac[:, c0:c1], np.array([0, c1 - c0]))
                    s[f"{side}_qx"][c0:c1] += R[:, l] @ A[:, c0:c1]
                s[f"{side}_q2"] += (R * R).sum(0)
            ops.cross(s["xy"], Xc, Yc)
            s["qp"] += Q.T @ P
            s["qy"] += Q.T @ Y
            s["px"] += P.T @ X
        self.n += int(X.shape[0])

    # ------------------------------------------------------ views of the sums
    def stat(self, name: str) -> np.ndarray:
        """One statistic as a numpy float64 array (a view on the CPU)."""
        return self.ops.numpy(self.stats[name])

    def column_block(self, m: int) -> np.ndarray:
        """The stored products of X's rows with layer m of Y, `[rows, d_m]` numpy.

        Across models sum x' y'_m^T over all D1 rows; within one model only the rows up to
        the end of layer m (the blocks l <= m), the last of which, the diagonal block, holds
        its upper triangle only.
        """
        c0, c1 = int(self.off_y[m]), int(self.off_y[m + 1])
        if self.symmetric:
            return self.ops.numpy(self.stats["xx"][:c1, c0:c1])
        return self.ops.numpy(self.stats["xy"][:, c0:c1])

    def cross_block(self, l: int, m: int) -> np.ndarray:
        """sum x'_l y'_m^T, `[d_l, d_m]` numpy (within-model: the stored block or its transpose)."""
        ox, oy = self.off_x, self.off_y
        if not self.symmetric:
            return self.ops.numpy(self.stats["xy"][ox[l]:ox[l + 1], oy[m]:oy[m + 1]])
        if l == m:
            return self.self_block("x", l)
        a, b = min(l, m), max(l, m)
        upper = self.ops.numpy(self.stats["xx"][ox[a]:ox[a + 1], ox[b]:ox[b + 1]])
        return upper if l < m else upper.T

    def _own_block(self, side: str, l: int) -> np.ndarray:
        """A layer's own block as stored (its diagonal and upper triangle are computed)."""
        if self.symmetric:
            o = self.off_x
            return self.ops.numpy(self.stats["xx"][o[l]:o[l + 1], o[l]:o[l + 1]])
        return self.stat(f"{side}_block_{l:02d}")

    def self_block(self, side: str, l: int) -> np.ndarray:
        """sum x'_l x'_l^T (side "x") or sum y'_m y'_m^T (side "y"), `[d, d]` numpy (full, symmetric)."""
        return symmetric_from_upper(self._own_block(side, l))

    def term_blocks(self) -> Iterator[tuple[str, int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """Every block whose O(d^2) terms CKA needs, with the sums of its rows and columns.

        Yields (kind, l, m, block `[d_l, d_m]`, s_l `[d_l]`, s_m `[d_m]`), numpy: kind "cross"
        for sum x'_l y'_m^T (within one model the pairs l <= m only), then across models kind
        "x" / "y" (l = m) for each layer's own block. Accumulators with the same layers yield
        the same sequence.
        """
        sum_x = self.stat("sum_x")
        sum_y = sum_x if self.symmetric else self.stat("sum_y")
        ox, oy = self.off_x, self.off_y
        for l in range(len(self.dims_x)):
            for m in range(l if self.symmetric else 0, len(self.dims_y)):
                yield "cross", l, m, self.cross_block(l, m), sum_x[ox[l]:ox[l + 1]], sum_y[oy[m]:oy[m + 1]]
        if not self.symmetric:
            for side, off, sums in (("x", ox, sum_x), ("y", oy, sum_y)):
                for l in range(len(off) - 1):
                    s_l = sums[off[l]:off[l + 1]]
                    yield side, l, l, self.self_block(side, l), s_l, s_l

    def small_stats(self) -> dict[str, np.ndarray]:
        """The O(L D) statistics (numpy float64), in the same form for both kinds of accumulator.

        Keys: n, sum_x [D1], sum_y [D2], trace_x [L1] (sum q_l), trace_y [L2], q2_x [L1], q2_y [L2],
        qx_x [D1] (segment l: sum q_l x'_l), qx_y [D2], qp [L1, L2], qy [L1, D2], px [L2, D1].
        All are sums over items, so the stats of disjoint item sets add.
        """
        s = {k: self.stat(k) for k in self.stats if k not in ("xx", "xy") and "_block_" not in k}
        out = {"n": np.float64(self.n), "sum_x": s["sum_x"]}
        for side, dims in (("x", self.dims_x), ("y", self.dims_y)):
            out[f"trace_{side}"] = np.array([np.trace(self._own_block(side, l)) for l in range(len(dims))])
        if self.symmetric:  # Y = X: one set of sums serves both sides
            own = np.concatenate([s["qx"][l, self.off_x[l]:self.off_x[l + 1]] for l in range(len(self.dims_x))])
            out.update(sum_y=s["sum_x"], q2_x=np.diag(s["qq"]).copy(), q2_y=np.diag(s["qq"]).copy(),
                       qx_x=own, qx_y=own, qp=s["qq"], qy=s["qx"], px=s["qx"])
        else:
            out.update(sum_y=s["sum_y"], q2_x=s["x_q2"], q2_y=s["y_q2"], qx_x=s["x_qx"], qx_y=s["y_qx"],
                       qp=s["qp"], qy=s["qy"], px=s["px"])
        return out

    # ---------------------------------------------------------------- results
    def terms(self) -> CKATerms:
        """`CKATerms` of every layer pair (float64 numpy)."""
        return terms_of([self])

    def cka(self, debiased: bool = False) -> np.ndarray:
        """The `[L1, L2]` linear CKA matrix (float64; NaN for a layer without variance)."""
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


def check_combinable(accs: Sequence[CKAAccumulator]) -> None:
    """Refuse an empty list, or accumulators whose sums cannot be added (other layers, other shift)."""
    if not accs:
        raise ValueError("no accumulators")
    for a in accs[1:]:
        why = accs[0].compatible(a)
        if why:
            raise ValueError(f"these accumulators cannot be combined: {why}")


def terms_of(accs: Sequence[CKAAccumulator]) -> CKATerms:
    """`CKATerms` of the union of the items of `accs` (same layers and shift), e.g. bootstrap blocks.

    The accumulators' sums are added one column block at a time (`column_block`), so the
    sum of their big statistics is never held in memory at once.
    """
    check_combinable(accs)
    smalls = [a.small_stats() for a in accs]
    small = {k: sum(s[k] for s in smalls) for k in smalls[0]}
    a0 = accs[0]
    return terms_from_sums(small, a0.dims_x, a0.dims_y, a0.symmetric,
                           column=lambda m: _summed([a.column_block(m) for a in accs]),
                           self_block=lambda side, l: _summed([a.self_block(side, l) for a in accs]))


def _summed(arrays: list[np.ndarray]) -> np.ndarray:
    """The elementwise sum (the array itself when there is only one)."""
    if len(arrays) == 1:
        return arrays[0]
    return sum(arrays[1:], arrays[0].copy())
