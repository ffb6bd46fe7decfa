"""The parts of streaming CKA on their own: the backends' in-place products, the algebra from sums to
`CKATerms`, the blocks the bootstrap reads, and the public interfaces the modules use of each other."""

import ast
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from repro.similarity.accumulator import CKAAccumulator, check_combinable
from repro.similarity.backends import NumpyBackend, TorchBackend, make_backend
from repro.similarity.cka import feature_terms
from repro.similarity.statistics import layer_offsets, terms_from_sums

REPO = Path(__file__).resolve().parents[1]


def layers(n, dims, seed, offset):
    """`[n, d]` float64 layers sharing a 2-d latent, plus a common offset."""
    rng = np.random.default_rng(seed)
    z = np.random.default_rng(77).standard_normal((n, 2))
    return [z @ rng.standard_normal((2, d)) + rng.standard_normal((n, d)) + offset for d in dims]


def hand_made_sums(xs, ys, shift_x, shift_y):
    """The small sums of `CKAAccumulator.small_stats`, the products S = X'^T Y' and each layer's own
    products, computed in one shot from shifted rows (no accumulator involved)."""
    X, Y = np.concatenate(xs, 1) - shift_x, np.concatenate(ys, 1) - shift_y
    ox, oy = layer_offsets([x.shape[1] for x in xs]), layer_offsets([y.shape[1] for y in ys])
    Q = np.stack([(X[:, a:b] ** 2).sum(1) for a, b in zip(ox[:-1], ox[1:])], 1)  # [n, L1]
    P = np.stack([(Y[:, a:b] ** 2).sum(1) for a, b in zip(oy[:-1], oy[1:])], 1)
    small = {"n": np.float64(len(X)), "sum_x": X.sum(0), "sum_y": Y.sum(0), "trace_x": Q.sum(0), "trace_y": P.sum(0),
             "q2_x": (Q * Q).sum(0), "q2_y": (P * P).sum(0),
             "qx_x": np.concatenate([Q[:, l] @ X[:, a:b] for l, (a, b) in enumerate(zip(ox[:-1], ox[1:]))]),
             "qx_y": np.concatenate([P[:, m] @ Y[:, a:b] for m, (a, b) in enumerate(zip(oy[:-1], oy[1:]))]),
             "qp": Q.T @ P, "qy": Q.T @ Y, "px": P.T @ X}
    own = {"x": [x.T @ x for x in np.split(X, ox[1:-1], 1)], "y": [y.T @ y for y in np.split(Y, oy[1:-1], 1)]}
    return small, X.T @ Y, own, ox, oy


@pytest.mark.parametrize("within", [False, True])
def test_terms_from_hand_made_sums_equal_the_one_shot_terms_of_every_pair(within):
    xs = layers(120, [3, 5, 2], seed=1, offset=30.0)
    ys = xs if within else layers(120, [4, 2], seed=2, offset=-8.0)
    shift_x = np.concatenate([x[:7].mean(0) for x in xs])
    shift_y = shift_x if within else np.concatenate([y[:7].mean(0) for y in ys])
    small, S, own, ox, oy = hand_made_sums(xs, ys, shift_x, shift_y)
    if within:
        # the stored layout of one model: blocks l <= m only, the diagonal block's upper triangle only
        def column(m):
            block = S[:oy[m + 1], oy[m]:oy[m + 1]].copy()
            diagonal = block[oy[m]:]
            diagonal[np.tril_indices(len(diagonal), -1)] = np.nan  # never read
            block[oy[m]:] = diagonal
            return block

        def self_block(side, l):
            raise AssertionError("within one model the normalisers come from the diagonal blocks")
    else:
        def column(m):
            return S[:, oy[m]:oy[m + 1]]

        def self_block(side, l):
            return own[side][l]

    dims_x, dims_y = [x.shape[1] for x in xs], [y.shape[1] for y in ys]
    got = terms_from_sums(small, dims_x, dims_y, within, column, self_block)
    for l, x in enumerate(xs):
        for m, y in enumerate(ys):
            want = feature_terms(x, y)
            np.testing.assert_allclose(got.cross[l, m], want.cross[0, 0], rtol=1e-10)
            np.testing.assert_allclose(got.rowdot[l, m], want.rowdot[0, 0], rtol=1e-10)
            for name in ("self_x", "trace_x", "rowdot_x"):
                np.testing.assert_allclose(getattr(got, name)[l], getattr(want, name)[0], rtol=1e-10)
            for name in ("self_y", "trace_y", "rowdot_y"):
                np.testing.assert_allclose(getattr(got, name)[m], getattr(want, name)[0], rtol=1e-10)
    assert all(np.isfinite(np.asarray(getattr(got, f.name))).all() for f in fields(got))
    with pytest.raises(ValueError, match="at least 2 items"):
        terms_from_sums({**small, "n": np.float64(1)}, dims_x, dims_y, within, column, self_block)


def test_accumulator_small_stats_are_the_hand_made_sums():
    xs, ys = layers(90, [3, 4], seed=3, offset=5.0), layers(90, [2], seed=4, offset=1.0)
    for other in (ys, None):
        acc = CKAAccumulator([3, 4], None if other is None else [2])
        for a in range(0, 90, 40):
            acc.update([x[a:a + 40] for x in xs], None if other is None else [y[a:a + 40] for y in other])
        got = acc.small_stats()
        want = hand_made_sums(xs, other or xs, acc.shift_x, acc.shift_x if other is None else acc.shift_y)[0]
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-9, err_msg=k)


@pytest.mark.parametrize("backend", [NumpyBackend, TorchBackend])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backends_add_products_in_place_into_the_sums(backend, dtype):
    ops = backend("cpu")
    xs, ys = layers(50, [3, 4, 2], seed=5, offset=2.0), layers(50, [5], seed=6, offset=0.0)
    offsets = layer_offsets([3, 4, 2])
    shift = np.linspace(-1, 1, 9)
    X = ops.rows(xs, ops.asarray(shift))
    Y = ops.rows(ys, None)
    np.testing.assert_array_equal(ops.numpy(X), np.concatenate(xs, 1) - shift)
    norms = np.stack([((x - s) ** 2).sum(1) for x, s in zip(xs, np.split(shift, offsets[1:-1]))], 1)
    np.testing.assert_allclose(ops.numpy(ops.row_norms(X, offsets)), norms, rtol=1e-12)
    G, C = ops.zeros(9, 9), ops.zeros(9, 5)
    G_before, C_before = G, C
    for _ in range(2):  # accumulates: beta = 1
        ops.gram(G, ops.cast(X, dtype), offsets)
        ops.cross(C, ops.cast(X, dtype), ops.cast(Y, dtype))
    assert G is G_before and C is C_before  # in place
    Xn = np.concatenate(xs, 1) - shift
    want_c, want = 2 * Xn.T @ np.concatenate(ys, 1), 2 * Xn.T @ Xn
    tol = (1e-12 if dtype == "float64" else 1e-6) * np.abs(want).max()  # float32 products: float32 rounding
    np.testing.assert_allclose(ops.numpy(C), want_c, rtol=0, atol=tol)
    for l in range(3):
        for m in range(l, 3):
            block = ops.numpy(G)[offsets[l]:offsets[l + 1], offsets[m]:offsets[m + 1]]
            expected = want[offsets[l]:offsets[l + 1], offsets[m]:offsets[m + 1]]
            if l == m:  # the upper triangle is what every backend promises
                block, expected = np.triu(block), np.triu(expected)
            np.testing.assert_allclose(block, expected, rtol=0, atol=tol)


def test_unknown_backends_and_devices_are_refused():
    with pytest.raises(ValueError, match=r"backend must be one of \['numpy', 'torch'\], got 'jax'"):
        make_backend("jax")
    with pytest.raises(ValueError, match="CPU only"):
        make_backend("numpy", "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        CKAAccumulator([3], backend="cupy")


def test_term_blocks_are_the_shifted_products_the_bootstrap_needs():
    xs, ys = layers(60, [3, 4, 2], seed=7, offset=9.0), layers(60, [2, 3], seed=8, offset=-4.0)
    for other in (ys, None):
        acc = CKAAccumulator([3, 4, 2], None if other is None else [2, 3])
        acc.update(xs, other)
        X = [x - s for x, s in zip(xs, np.split(acc.shift_x, acc.off_x[1:-1]))]
        Y = X if other is None else [y - s for y, s in zip(other, np.split(acc.shift_y, acc.off_y[1:-1]))]
        seen = []
        for kind, l, m, block, s_l, s_m in acc.term_blocks():
            seen.append((kind, l, m))
            left, right = (X[l], Y[m]) if kind == "cross" else ((X if kind == "x" else Y)[l],) * 2
            np.testing.assert_allclose(block, left.T @ right, rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(s_l, left.sum(0), rtol=1e-12, atol=1e-10)
            np.testing.assert_allclose(s_m, right.sum(0), rtol=1e-12, atol=1e-10)
        if other is None:
            assert seen == [("cross", l, m) for l in range(3) for m in range(l, 3)]
        else:
            assert seen == ([("cross", l, m) for l in range(3) for m in range(2)]
                            + [("x", l, l) for l in range(3)] + [("y", m, m) for m in range(2)])


def test_accumulators_that_cannot_be_combined_are_refused():
    with pytest.raises(ValueError, match="no accumulators"):
        check_combinable([])
    a, b = CKAAccumulator([3], shift_x=np.zeros(3)), CKAAccumulator([3], shift_x=np.ones(3))
    check_combinable([a, b])  # empty: nothing to add up yet
    for acc in (a, b):
        acc.update([np.arange(6.0).reshape(2, 3)])
    with pytest.raises(ValueError, match="different shifts"):
        check_combinable([a, b])
    with pytest.raises(ValueError, match="layer widths differ"):
        check_combinable([a, CKAAccumulator([4])])


def test_similarity_modules_import_only_public_names_of_each_other():
    private = []
    for path in sorted((REPO / "repro").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("repro.similarity"):
                private += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
