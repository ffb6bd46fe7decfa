"""Pairing frames across frame rates, utterance pooling, seeded subsampling and bootstrap blocks."""

import numpy as np
import pytest

from repro.similarity.align import (AlignmentError, align_frames, aligned_length, mean_pool, pool_frames,
                                    rate_factors)
from repro.similarity.sampling import assign_blocks, subsample_frames


def test_rate_factors_pick_the_slowest_rate_and_integer_factors():
    assert rate_factors([50.0, 50.0, 100.0]) == (50.0, [1, 1, 2])
    assert rate_factors([100, 25, 50]) == (25.0, [4, 1, 2])
    with pytest.raises(AlignmentError, match=r"'ecapa:tdnn' runs at 75 frames/s .* ratio 1\.5 .* cka.level: utterance"):
        rate_factors([50.0, 75.0], ["ssl:layer_0", "ecapa:tdnn"])
    with pytest.raises(AlignmentError, match="positive"):
        rate_factors([50.0, 0.0])


def test_average_pools_adjacent_pairs_and_drops_an_incomplete_tail():
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)  # 10 frames at 100 frames/s
    pooled = pool_frames(x[:9], 2)  # 9 frames -> 4 pairs, frame 8 dropped
    np.testing.assert_array_equal(pooled, (x[0:8:2] + x[1:9:2]) / 2)
    np.testing.assert_array_equal(pool_frames(x[:9], 2, "decimate"), x[0:8:2])
    assert pool_frames(x, 1) is x
    with pytest.raises(ValueError, match="alignment must be one of"):
        pool_frames(x, 2, "nearest")


def test_ssl_at_50_and_ecapa_at_100_frames_per_second_are_paired_and_trimmed():
    # 1.0 s of audio: an SSL model gives 49 frames, an fbank model 101 frames
    rng = np.random.default_rng(0)
    ssl = [rng.standard_normal((49, 4)), rng.standard_normal((49, 4))]
    ecapa = [rng.standard_normal((101, 3))]
    _, factors = rate_factors([50, 50, 100])
    n = aligned_length([49, 49, 101], factors)
    assert n == 49  # min(49, 49, 101 // 2 = 50)
    a = align_frames(ssl, factors[:2], n)
    b = align_frames(ecapa, factors[2:], n)
    assert [x.shape for x in a + b] == [(49, 4), (49, 4), (49, 3)]
    np.testing.assert_array_equal(a[0], ssl[0])
    np.testing.assert_allclose(b[0][7], (ecapa[0][14] + ecapa[0][15]) / 2)
    np.testing.assert_allclose(b[0][-1], (ecapa[0][96] + ecapa[0][97]) / 2)
    with pytest.raises(AlignmentError, match="fewer than"):
        align_frames(ecapa, [2], 51)


def test_three_to_one_ratio_averages_runs_of_three():
    x = np.arange(7, dtype=np.float64)[:, None]  # 7 frames at 150/s against a 50/s model
    np.testing.assert_array_equal(pool_frames(x, 3)[:, 0], [1.0, 4.0])


def test_mean_pool_gives_one_item_per_utterance():
    x = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    (pooled,) = mean_pool([x])
    np.testing.assert_array_equal(pooled, [[2.0, 4.0]])
    assert pooled.dtype == np.float64
    with pytest.raises(AlignmentError, match="no frames"):
        mean_pool([np.zeros((0, 2))])


def test_subsampling_is_exact_uniform_and_seeded():
    counts = [5, 0, 12, 7, 30]
    assert subsample_frames(counts, 0, seed=0) is None
    assert subsample_frames(counts, 54, seed=0) is None
    chosen = subsample_frames(counts, 20, seed=0)
    assert sum(len(c) for c in chosen) == 20 and len(chosen[1]) == 0
    for c, n in zip(chosen, counts):
        assert np.all(np.diff(c) > 0) and (len(c) == 0 or (c[0] >= 0 and c[-1] < n))
    again = subsample_frames(counts, 20, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(chosen, again))
    other = subsample_frames(counts, 20, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(chosen, other))
    # every frame is equally likely: over many seeds each frame is kept about 20/54 of the time
    hits = np.zeros(54)
    for seed in range(400):
        sel = subsample_frames(counts, 20, seed)
        hits += np.concatenate([np.bincount(s, minlength=n) for s, n in zip(sel, counts) if n])
    assert np.all(np.abs(hits / 400 - 20 / 54) < 0.12)


def test_blocks_are_balanced_seeded_and_independent_of_input_order():
    ids = [f"utt{i:03d}" for i in range(23)]
    blocks = assign_blocks(ids, 5, seed=0)
    assert sorted(np.bincount(list(blocks.values()))) == [4, 4, 5, 5, 5]
    assert assign_blocks(list(reversed(ids)), 5, seed=0) == blocks
    assert assign_blocks(ids, 5, seed=1) != blocks
