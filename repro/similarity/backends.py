"""Where the streaming CKA sums live and how chunks of rows are added into them.

A backend holds the float64 sums of a `CKAAccumulator` and performs its
per-chunk work: stacking the layers of a chunk into one row matrix minus a
reference shift, the per-layer squared row norms, and the products added in
place into the sums (`cross`: C += X^T Y; `gram`: C += X^T X on the upper
triangle). Two backends share this interface:

    "numpy"  the CPU: BLAS `dgemm` / `dsyrk` write straight into the
             Fortran-ordered sums (beta = 1), with no temporary product
    "torch"  any torch device, for GPUs: `addmm_` in place, float64 products

Arrays: rows `[m, D]` (m items, D = sum of the layer widths), offsets `[L + 1]`
(int64, where each layer's columns start; last entry D). The sums are always
float64; `cast` gives the chunk in the compute dtype of the products.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas as _blas


class NumpyBackend:
    """The streaming products with numpy on the CPU.

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

    def zeros(self, *shape) -> np.ndarray:
        """A float64 array of zeros, Fortran-ordered (BLAS writes into it in place)."""
        # calloc'd: pages are zero-filled when first written (by the BLAS threads), and pages
        # below the diagonal of a within-model SYRK are never touched at all
        return np.zeros(shape, dtype=np.float64, order="F")

    def rows(self, parts: list[np.ndarray], shift: np.ndarray | None) -> np.ndarray:
        """`[m, D]` float64 rows of all layers side by side, minus `shift` `[D]` (one pass, no temporaries)."""
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

    def cast(self, a: np.ndarray, compute_dtype: str) -> np.ndarray:
        """`a` in the dtype of the products ("float64" or "float32")."""
        return a if compute_dtype == "float64" else a.astype(np.float32)

    def finite(self, a: np.ndarray) -> bool:
        return bool(np.isfinite(a).all())

    def numpy(self, a: np.ndarray) -> np.ndarray:
        """`a` as a numpy array (here: itself, no copy)."""
        return a

    def asarray(self, a: np.ndarray) -> np.ndarray:
        """A float64 copy of numpy `a` in the backend's layout (Fortran order)."""
        return np.array(a, dtype=np.float64, order="F")

    def cross(self, C: np.ndarray, X: np.ndarray, Y: np.ndarray) -> None:
        """C += X^T Y for C-ordered rows X `[m, D1]`, Y `[m, D2]`, C `[D1, D2]`."""
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


class TorchBackend:
    """The same operations with torch on any device (for GPUs: float64 products in seconds)."""

    name = "torch"

    def __init__(self, device: str = "cpu"):
        import torch  # deferred: the numpy backend does not need torch

        self.torch = torch
        self.device = torch.device(device)

    def zeros(self, *shape):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def rows(self, parts: list[np.ndarray], shift):
        """`[m, D]` float64 rows on the device, minus `shift` (a device tensor `[D]`)."""
        t = self.torch
        X = t.cat([t.from_numpy(np.ascontiguousarray(p, dtype=np.float64)) for p in parts], dim=1).to(self.device)
        return X if shift is None else X - shift

    def row_norms(self, X, offsets: np.ndarray):
        """`[m, L]` squared norm of each layer's part of every row (one product with a 0/1 indicator)."""
        ind = self.torch.zeros(X.shape[1], len(offsets) - 1, dtype=X.dtype, device=X.device)
        for l in range(len(offsets) - 1):
            ind[offsets[l]:offsets[l + 1], l] = 1.0
        return (X * X) @ ind

    def cast(self, a, compute_dtype: str):
        return a if compute_dtype == "float64" else a.to(self.torch.float32)

    def finite(self, a) -> bool:
        return bool(self.torch.isfinite(a).all())

    def numpy(self, a) -> np.ndarray:
        """A numpy copy on the CPU (a view when the tensor already is there)."""
        return a.detach().cpu().numpy()

    def asarray(self, a: np.ndarray):
        """A float64 tensor on the device from numpy `a`."""
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


BACKENDS = {"numpy": NumpyBackend, "torch": TorchBackend}


def make_backend(name: str, device: str = "cpu") -> NumpyBackend | TorchBackend:
    """The backend called `name` ("numpy" or "torch") on `device`."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}")
    return BACKENDS[name](device)
