"""Bootstrap confidence intervals for a CKA matrix, from per-block sufficient statistics.

What is resampled: blocks of utterances. Every utterance (with all of its
frames) belongs to one of B blocks; one resample draws B blocks with
replacement (multinomial counts w_b, sum w_b = B) and computes CKA on the data
made of the drawn blocks, i.e. from the statistics sum_b w_b stats_b. Frames of
one utterance are never separated, so their correlation is respected.

Exact and cheap: every statistic is a sum over items, so a resample's sums are
weighted sums of the blocks' sums. The O(D1 D2) part, ||S(w) - s s^T / n||_F^2,
is a quadratic plus a cubic form in w whose coefficients (block Gram matrices
<S_b, S_c> and s_b^T S_c s_e, per layer pair) are computed once; each resample
then costs O(L1 L2 B^3), independent of the widths and of n. Memory is B copies
of the accumulator's statistics (B x 8 D1 D2 bytes: 0.8 GB per block for 13
layers of 768-d on both sides), which is why B is modest.

The point estimate is the CKA of all blocks together (the ordinary result).
Intervals are percentile intervals of the resampled CKA values.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from repro.similarity.accumulator import CKAAccumulator, check_combinable, terms_of
from repro.similarity.cka import CKATerms, cka_from_terms
from repro.similarity.sampling import STREAM_BOOTSTRAP, stream
from repro.similarity.statistics import BIG_KEYS, assemble_terms, empty_big, mirror_within, segment_sum
from repro.util.npz import atomic_write_npz, read_npz


class BlockBootstrap:
    """B `CKAAccumulator`s sharing one shift: one per block of utterances.

    Args:
        blocks: number of blocks B (>= 1; with 1 there is no interval, only the estimate).
        dims_x, dims_y, **kwargs: as for `CKAAccumulator`.
    """

    def __init__(self, blocks: int, dims_x: Sequence[int], dims_y: Sequence[int] | None = None, **kwargs):
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        self.accumulators = [CKAAccumulator(dims_x, dims_y, **kwargs) for _ in range(blocks)]
        self._forms: dict | None = None

    @classmethod
    def of(cls, accumulators: list[CKAAccumulator]) -> "BlockBootstrap":
        """Wrap existing accumulators (same layers and shift)."""
        check_combinable(accumulators)
        self = cls.__new__(cls)
        self.accumulators, self._forms = list(accumulators), None
        return self

    @property
    def blocks(self) -> int:
        return len(self.accumulators)

    @property
    def n(self) -> int:
        return sum(a.n for a in self.accumulators)

    def set_shift(self, shift_x, shift_y=None) -> None:
        """Fix one reference row for every block (before any update; see `CKAAccumulator.set_shift`)."""
        for acc in self.accumulators:
            acc.set_shift(shift_x, shift_y)

    def update(self, block: int, xs, ys=None, mask=None) -> None:
        """Add a batch of items that all belong to `block` (see `CKAAccumulator.update`).

        The first batch overall fixes the shift of every block, so blocks can be summed.
        """
        first = self.accumulators[0]
        if first.shift_x is None:
            try:
                sx, sy = first.shift_from(xs, ys, mask)
            except ValueError as err:
                if "no valid rows" in str(err):
                    return
                raise
            for acc in self.accumulators:
                acc.set_shift(sx, sy)
        self.accumulators[block].update(xs, ys, mask)
        self._forms = None

    def terms(self) -> CKATerms:
        """Terms of all blocks together (the point estimate)."""
        return terms_of(self.accumulators)

    def cka(self, debiased: bool = False) -> np.ndarray:
        """The `[L1, L2]` CKA matrix of all items."""
        return cka_from_terms(self.terms(), debiased)

    # ------------------------------------------------------------- resampling
    def _block_forms(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per kind of block (`CKAAccumulator.term_blocks`) and layer pair: G[b, c] = <S_b, S_c>_F and
        T[b, c, e] = s_b^T S_c s_e (float64), as (G `[*pair, B, B]`, T `[*pair, B, B, B]`); pair = (l, m)
        for "cross" (`[L1, L2]`), (l,) for "x" / "y"."""
        if self._forms is not None:
            return self._forms
        a0 = self.accumulators[0]
        B, L1, L2 = self.blocks, len(a0.dims_x), len(a0.dims_y)
        pairs = {"cross": (L1, L2), "x": (L1,), "y": (L2,)}
        forms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for parts in zip(*(a.term_blocks() for a in self.accumulators)):
            kind, l, m = parts[0][:3]
            M = np.stack([p[3] for p in parts])  # [B, d_l, d_m]
            flat = M.reshape(B, -1)
            Sl, Sm = np.stack([p[4] for p in parts]), np.stack([p[5] for p in parts])  # [B, d_l], [B, d_m]
            T = np.empty((B, B, B))
            for c in range(B):
                T[:, c, :] = (Sl @ M[c]) @ Sm.T
            if kind not in forms:
                forms[kind] = (np.zeros(pairs[kind] + (B, B)), np.zeros(pairs[kind] + (B, B, B)))
            at = (l, m) if kind == "cross" else (l,)
            forms[kind][0][at], forms[kind][1][at] = flat @ flat.T, T
        self._forms = forms
        return forms

    def resample_terms(self, weights: np.ndarray) -> CKATerms:
        """`CKATerms` with a leading axis R for block weights `weights` `[R, B]` (counts >= 0)."""
        W = np.asarray(weights, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != self.blocks:
            raise ValueError(f"weights must be [R, {self.blocks}], got {W.shape}")
        a0 = self.accumulators[0]
        forms = self._block_forms()
        smalls = [a.small_stats() for a in self.accumulators]
        small = {k: np.tensordot(W, np.stack([s[k] for s in smalls]), axes=(1, 0)) for k in smalls[0]}
        n = small["n"]
        big = empty_big(len(a0.dims_x), len(a0.dims_y), (len(W),))
        sq_x = segment_sum(small["sum_x"] ** 2, a0.dims_x)  # |s_l(w)|^2, [R, L1]
        sq_y = segment_sum(small["sum_y"] ** 2, a0.dims_y)
        with np.errstate(invalid="ignore", divide="ignore"):
            # per kind: einsum letters of the pair, n and |s_l|^2 |s_m|^2 broadcast to [R, *pair]
            shapes = {"cross": ("lm", n[:, None, None], sq_x[:, :, None] * sq_y[:, None, :]),
                      "x": ("l", n[:, None], sq_x ** 2), "y": ("l", n[:, None], sq_y ** 2)}
            for kind, (G, T) in forms.items():
                lead, nn, corr = shapes[kind]
                frob_key, form_key = BIG_KEYS[kind]
                frob = np.einsum(f"rb,{lead}bc,rc->r{lead}", W, G, W)
                big[form_key] = np.einsum(f"{lead}bce,rb,rc,re->r{lead}", T, W, W, W, optimize=True)
                big[frob_key] = frob - 2 * big[form_key] / nn + corr / nn ** 2
        if a0.symmetric:
            mirror_within(big)
        return assemble_terms(small, big, a0.dims_x, a0.dims_y)

    def resample_cka(self, weights: np.ndarray, debiased: bool = False) -> np.ndarray:
        """CKA `[R, L1, L2]` of each resample (NaN where a resample is degenerate)."""
        return cka_from_terms(self.resample_terms(weights), debiased)

    def draw_weights(self, resamples: int, seed: int) -> np.ndarray:
        """`[resamples, B]` multinomial block counts (B draws with replacement), deterministic in `seed`."""
        rng = stream(seed, STREAM_BOOTSTRAP)
        return rng.multinomial(self.blocks, np.full(self.blocks, 1.0 / self.blocks), size=resamples).astype(np.float64)

    def interval(self, resamples: int, confidence: float, seed: int, debiased: bool = False,
                 chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Percentile bootstrap interval `(low, high)`, each `[L1, L2]`.

        Args:
            resamples: number of resamples R.
            confidence: e.g. 0.95 for the 2.5 % and 97.5 % percentiles.
            seed: seeds the block draws (same seed, same interval).
            chunk: resamples evaluated at once (bounds memory).
        """
        if self.blocks < 2:
            raise ValueError("a bootstrap interval needs at least 2 blocks")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        W = self.draw_weights(resamples, seed)
        values = np.concatenate([self.resample_cka(W[i:i + chunk], debiased) for i in range(0, len(W), chunk)])
        alpha = (1 - confidence) / 2
        with np.errstate(invalid="ignore"):
            low, high = np.nanquantile(values, [alpha, 1 - alpha], axis=0)
        return low, high

    # ---------------------------------------------------------- merge / save
    def merge(self, other: "BlockBootstrap") -> "BlockBootstrap":
        """Add `other`'s blocks into these (same B, same shift): shards over disjoint utterances."""
        if other.blocks != self.blocks:
            raise ValueError(f"cannot merge {other.blocks} blocks into {self.blocks}")
        for a, b in zip(self.accumulators, other.accumulators):
            a.merge(b)
        self._forms = None
        return self

    def save(self, path: str | os.PathLike) -> None:
        """All blocks in one byte-stable `.npz` (keys prefixed `block{b:03d}/`), atomically."""
        arrays = {"blocks": np.int64(self.blocks)}
        for b, acc in enumerate(self.accumulators):
            arrays.update({f"block{b:03d}/{k}": v for k, v in acc.state_dict().items()})
        atomic_write_npz(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "numpy", device: str = "cpu") -> "BlockBootstrap":
        """Read blocks written by `save`."""
        data = read_npz(path)
        accs = []
        for b in range(int(data["blocks"])):
            prefix = f"block{b:03d}/"
            state = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
            accs.append(CKAAccumulator.from_state_dict(state, backend=backend, device=device,
                                                       source=f"{path} block {b}"))
        return cls.of(accs)
