"""The numerical core of layer similarity: one-shot CKA forms, the streaming accumulator, the bootstrap."""

import numpy as np
import pytest

from repro.similarity import (BlockBootstrap, CKAAccumulator, cka_from_grams, linear_cka, linear_cka_gram)

RNG = np.random.default_rng(1234)


def related(n=300, dx=6, dy=4, noise=0.7, seed=0, offset=0.0):
    """X [n, dx] and Y [n, dy] sharing a 3-d latent, plus noise and a common offset."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    X = z @ rng.standard_normal((3, dx)) + noise * rng.standard_normal((n, dx)) + offset
    Y = z @ rng.standard_normal((3, dy)) + noise * rng.standard_normal((n, dy)) - offset
    return X, Y


def model_layers(n, dims, seed, offset=0.0):
    """A model's layers: `[n, d_l]` float32 arrays sharing one latent (so CKA is not trivial)."""
    rng = np.random.default_rng(seed)
    z = np.random.default_rng(99).standard_normal((n, 4))
    return [(z @ rng.standard_normal((4, d)) + rng.standard_normal((n, d)) + offset).astype(np.float32) for d in dims]


def reference_grid(xs, ys, debiased=False):
    return np.array([[linear_cka(x, y, debiased) for y in ys] for x in xs])


def orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


# ----------------------------------------------------------------- one-shot forms
@pytest.mark.parametrize("debiased", [False, True])
def test_self_similarity_is_one_and_cka_is_symmetric(debiased):
    X, Y = related()
    assert linear_cka(X, X, debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, Y, debiased) == pytest.approx(linear_cka(Y, X, debiased), abs=1e-14)
    assert 0.05 < linear_cka(X, Y, debiased) < 0.95


def test_one_dimensional_cka_is_squared_correlation():
    X, Y = related(dx=1, dy=1)
    r = np.corrcoef(X[:, 0], Y[:, 0])[0, 1]
    assert linear_cka(X, Y) == pytest.approx(r**2, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transforms_scaling_and_offsets_of_either_side(debiased):
    X, Y = related(dx=6, dy=4)
    base = linear_cka(X, Y, debiased)
    X2 = 3.7 * X @ orthogonal(6, 1) + 11.0
    Y2 = 0.02 * Y @ orthogonal(4, 2) - 5.0
    for a, b in ((X2, Y), (X, Y2), (X2, Y2)):
        assert linear_cka(a, b, debiased) == pytest.approx(base, abs=1e-12)
    # a non-isotropic scaling does change CKA: the invariance above is not vacuous
    assert abs(linear_cka(X * np.array([10, 1, 1, 1, 1, 1.0]), Y, debiased) - base) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,dx,dy", [(50, 6, 4), (20, 40, 30)])
def test_feature_space_equals_gram_space(debiased, n, dx, dy):
    X, Y = related(n=n, dx=dx, dy=dy, offset=3.0)
    assert linear_cka(X, Y, debiased) == pytest.approx(linear_cka_gram(X, Y, debiased), abs=1e-10)
    K = X @ X.T
    assert cka_from_grams(K, K, debiased) == pytest.approx(1.0, abs=1e-12)


def test_debiased_removes_the_small_sample_bias_of_independent_features():
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((40, 30)), rng.standard_normal((40, 30))
    assert linear_cka(X, Y) > 0.4  # biased CKA of independent data is far from 0 when d ~ n
    assert abs(linear_cka(X, Y, debiased=True)) < 0.1


def test_constant_layer_is_nan_and_bad_shapes_are_refused():
    X, _ = related()
    assert np.isnan(linear_cka(X, np.ones((len(X), 3))))
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(X, X[:-1])
    with pytest.raises(ValueError, match="at least 4 items"):
        linear_cka(X[:3], X[:3], debiased=True)
    with pytest.raises(ValueError, match="finite"):
        linear_cka(np.full_like(X, np.nan), X)


# ------------------------------------------------------------ streaming accumulator
def feed(acc, xs, ys, bounds):
    for a, b in zip(bounds[:-1], bounds[1:]):
        acc.update([x[a:b] for x in xs], None if ys is None else [y[a:b] for y in ys])
    return acc


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_equals_one_shot_for_every_layer_pair(debiased):
    xs = model_layers(700, [5, 8, 3], seed=1, offset=40.0)
    ys = model_layers(700, [4, 6], seed=2, offset=-7.0)
    bounds = [0, 1, 50, 51, 333, 600, 700]
    cross = feed(CKAAccumulator([5, 8, 3], [4, 6]), xs, ys, bounds)
    assert cross.n == 700
    np.testing.assert_allclose(cross.cka(debiased), reference_grid(xs, ys, debiased), rtol=0, atol=1e-10)
    within = feed(CKAAccumulator([5, 8, 3]), xs, None, bounds)
    got = within.cka(debiased)
    np.testing.assert_allclose(got, reference_grid(xs, xs, debiased), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-12)
    np.testing.assert_allclose(got, got.T, atol=1e-14)


def test_within_model_accumulates_each_layer_pair_once():
    xs = model_layers(100, [3, 4, 2], seed=3)
    acc = feed(CKAAccumulator([3, 4, 2]), xs, None, [0, 100])
    xx, off = acc.stat("xx"), acc.off_x
    for l in range(3):
        for m in range(3):
            block = xx[off[l]:off[l + 1], off[m]:off[m + 1]]
            assert (np.abs(block).sum() > 0) == (l <= m)  # lower blocks are never computed
    assert "xy" not in acc.stats


def test_batch_order_and_batch_sizes_do_not_matter():
    xs = model_layers(400, [4, 6], seed=4, offset=100.0)
    ys = model_layers(400, [5], seed=5)
    perm = np.random.default_rng(0).permutation(400)
    a = feed(CKAAccumulator([4, 6], [5]), xs, ys, [0, 400]).cka(True)
    b = feed(CKAAccumulator([4, 6], [5]), [x[perm] for x in xs], [y[perm] for y in ys], list(range(0, 401, 7)) + [400])
    np.testing.assert_allclose(b.cka(True), a, rtol=0, atol=1e-10)


def test_padding_is_masked_whatever_it_holds():
    lengths = [7, 3, 10, 1]
    B, T = len(lengths), max(lengths)
    xs_p = [np.full((B, T, d), np.nan, np.float32) for d in (3, 5)]
    ys_p = [np.full((B, T, 4), 1e30, np.float32)]
    rows_x, rows_y = model_layers(sum(lengths), [3, 5], seed=6), model_layers(sum(lengths), [4], seed=7)
    mask = np.zeros((B, T), bool)
    start = 0
    for b, t in enumerate(lengths):
        mask[b, :t] = True
        for P, R in zip(xs_p + ys_p, rows_x + rows_y):
            P[b, :t] = R[start:start + t]
        start += t
    padded = CKAAccumulator([3, 5], [4])
    padded.update(xs_p, ys_p, mask=mask)
    flat = feed(CKAAccumulator([3, 5], [4]), rows_x, rows_y, [0, sum(lengths)])
    assert padded.n == sum(lengths)
    np.testing.assert_allclose(padded.cka(), flat.cka(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        CKAAccumulator([3, 5], [4]).update(xs_p, ys_p)  # without the mask, padding is data


def test_disjoint_shards_merge_into_the_single_pass_result():
    xs = model_layers(900, [6, 2], seed=8, offset=500.0)
    ys = model_layers(900, [3, 3], seed=9, offset=500.0)
    shift = (np.concatenate([x[:10].mean(0) for x in xs]), np.concatenate([y[:10].mean(0) for y in ys]))
    single = feed(CKAAccumulator([6, 2], [3, 3], shift_x=shift[0], shift_y=shift[1]), xs, ys, [0, 300, 600, 900])
    shards = [feed(CKAAccumulator([6, 2], [3, 3], shift_x=shift[0], shift_y=shift[1]), xs, ys, [a, a + 300])
              for a in (0, 300, 600)]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.n == single.n == 900
    for k in single.stats:
        np.testing.assert_allclose(merged.stat(k), single.stat(k), rtol=1e-13, atol=1e-9)
    np.testing.assert_allclose(merged.cka(True), single.cka(True), rtol=0, atol=1e-12)
    other = feed(CKAAccumulator([6, 2], [3, 3]), xs, ys, [0, 5])  # its own shift
    with pytest.raises(ValueError, match="different shifts"):
        merged.merge(other)
    with pytest.raises(ValueError, match="layer widths differ"):
        merged.merge(CKAAccumulator([6, 2], [6]))


def test_state_saves_atomically_to_stable_bytes_and_resumes(tmp_path):
    xs = model_layers(300, [4, 3], seed=10)
    whole = feed(CKAAccumulator([4, 3]), xs, None, [0, 150, 300])
    half = feed(CKAAccumulator([4, 3]), xs, None, [0, 150])
    half.save(tmp_path / "half.npz")
    half.save(tmp_path / "again.npz")
    assert (tmp_path / "half.npz").read_bytes() == (tmp_path / "again.npz").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    resumed = CKAAccumulator.load(tmp_path / "half.npz")
    feed(resumed, xs, None, [150, 300])
    np.testing.assert_allclose(resumed.cka(True), whole.cka(True), rtol=0, atol=1e-14)
    bad = dict(np.load(tmp_path / "half.npz"))
    bad["stat.xx"] = bad["stat.xx"][:2]
    with pytest.raises(ValueError, match="'xx' is missing or has the wrong shape"):
        CKAAccumulator.from_state_dict(bad)


def test_million_frames_with_a_large_offset_stay_exact_where_naive_float32_fails():
    n = 1_000_000
    rng = np.random.default_rng(11)
    z = rng.standard_normal((n, 3))
    X = (z @ rng.standard_normal((3, 3)) + 0.5 * rng.standard_normal((n, 3)) + 1e3).astype(np.float32)
    Y = (z[:, :2] @ rng.standard_normal((2, 2)) + rng.standard_normal((n, 2)) + 1e3).astype(np.float32)
    truth = linear_cka(X, Y)  # two-pass, float64

    def naive_float32():
        """One pass of float32 sums (sum x, sum x x^T), centred at the end: the textbook shortcut."""
        def centred(A, B):
            return A.T @ B / np.float32(n) - np.outer(A.mean(0, dtype=np.float32), B.mean(0, dtype=np.float32))
        xy, xx, yy = centred(X, Y), centred(X, X), centred(Y, Y)
        return float(np.sum(xy**2) / np.sqrt(np.sum(xx**2) * np.sum(yy**2)))

    acc = CKAAccumulator([3], [2])
    for a in range(0, n, 250_000):
        acc.update([X[a:a + 250_000]], [Y[a:a + 250_000]])
    assert 0.2 < truth < 0.9
    assert abs(acc.cka()[0, 0] - truth) < 1e-10
    naive = naive_float32()
    assert not abs(naive - truth) < 0.05  # wrong by far more than any tolerance (or NaN)


def test_float32_products_stay_close_and_torch_backend_matches_numpy():
    xs = model_layers(500, [8, 5], seed=12, offset=1e3)
    ys = model_layers(500, [6], seed=13, offset=1e3)
    ref = feed(CKAAccumulator([8, 5], [6]), xs, ys, [0, 250, 500]).cka()
    f32 = feed(CKAAccumulator([8, 5], [6], compute_dtype="float32"), xs, ys, [0, 250, 500]).cka()
    np.testing.assert_allclose(f32, ref, rtol=0, atol=1e-5)
    for ys_, dims in ((ys, [6]), (None, None)):
        t = feed(CKAAccumulator([8, 5], dims, backend="torch"), xs, ys_, [0, 250, 500])
        n = feed(CKAAccumulator([8, 5], dims), xs, ys_, [0, 250, 500])
        np.testing.assert_allclose(t.cka(True), n.cka(True), rtol=0, atol=1e-12)


def test_bad_batches_are_refused_with_the_reason():
    acc = CKAAccumulator([3, 2], [4])
    x, y = np.zeros((5, 3)), np.zeros((5, 4))
    with pytest.raises(ValueError, match="expected 2 layers"):
        acc.update([x], [y])
    with pytest.raises(ValueError, match=r"xs\[1\]: expected last dimension 2"):
        acc.update([x, x], [y])
    with pytest.raises(ValueError, match="items must be paired"):
        acc.update([x, np.zeros((5, 2))], [y[:4]])
    with pytest.raises(ValueError, match="needs ys"):
        acc.update([x, np.zeros((5, 2))])
    with pytest.raises(ValueError, match="bool array"):
        acc.update([x, np.zeros((5, 2))], [y], mask=np.ones(5))
    with pytest.raises(ValueError, match="takes xs only"):
        CKAAccumulator([3]).update([x], [x])


# ------------------------------------------------------------------- bootstrap
def block_data(seed=14, blocks=6, per_block=40):
    xs = model_layers(blocks * per_block, [4, 3], seed=seed, offset=20.0)
    ys = model_layers(blocks * per_block, [5], seed=seed + 1, offset=-3.0)
    owner = np.repeat(np.arange(blocks), per_block)
    return xs, ys, owner


def fill(boot, xs, ys, owner):
    for b in range(boot.blocks):
        rows = owner == b
        boot.update(b, [x[rows] for x in xs], None if ys is None else [y[rows] for y in ys])
    return boot


@pytest.mark.parametrize("within", [False, True])
@pytest.mark.parametrize("debiased", [False, True])
def test_bootstrap_resamples_equal_cka_recomputed_on_the_drawn_blocks(within, debiased):
    xs, ys, owner = block_data()
    ys = None if within else ys
    boot = fill(BlockBootstrap(6, [4, 3], None if within else [5]), xs, ys, owner)
    np.testing.assert_allclose(boot.cka(debiased), reference_grid(xs, xs if within else ys, debiased), atol=1e-10)
    W = boot.draw_weights(4, seed=3)
    got = boot.resample_cka(W, debiased)
    for r in range(4):
        rows = np.concatenate([np.flatnonzero(owner == b) for b in range(6) for _ in range(int(W[r, b]))])
        want = reference_grid([x[rows] for x in xs], [y[rows] for y in (xs if within else ys)], debiased)
        np.testing.assert_allclose(got[r], want, rtol=0, atol=1e-9)


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic_in_its_seed(tmp_path):
    xs, ys, owner = block_data(blocks=10, per_block=30)
    boot = fill(BlockBootstrap(10, [4, 3], [5]), xs, ys, owner)
    est = boot.cka()
    low, high = boot.interval(300, 0.95, seed=0)
    assert np.all(low <= est) and np.all(est <= high) and np.all(high - low > 1e-4)
    low2, high2 = boot.interval(300, 0.95, seed=0)
    assert np.array_equal(low, low2) and np.array_equal(high, high2)
    low3, _ = boot.interval(300, 0.95, seed=1)
    assert not np.array_equal(low, low3)
    narrow, _ = boot.interval(300, 0.5, seed=0)
    assert np.all(narrow >= low)
    boot.save(tmp_path / "boot.npz")
    again = BlockBootstrap.load(tmp_path / "boot.npz")
    assert np.array_equal(again.interval(300, 0.95, seed=0)[0], low)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockBootstrap(1, [4, 3], [5]).interval(10, 0.95, 0)


def test_bootstrap_shards_merge_blockwise():
    xs, ys, owner = block_data()
    whole = fill(BlockBootstrap(6, [4, 3], [5]), xs, ys, owner)
    shift = (whole.accumulators[0].shift_x, whole.accumulators[0].shift_y)
    parts = []
    for half in (owner < 3, owner >= 3):
        part = BlockBootstrap(6, [4, 3], [5])
        part.set_shift(*shift)
        parts.append(fill(part, [x[half] for x in xs], [y[half] for y in ys], owner[half]))
    merged = parts[0].merge(parts[1])
    W = whole.draw_weights(5, seed=0)
    np.testing.assert_allclose(merged.resample_cka(W), whole.resample_cka(W), rtol=0, atol=1e-12)
