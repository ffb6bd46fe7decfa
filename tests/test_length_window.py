"""Upstream training forwards regrouped by length (`repro.probing.length_window`): the same
utterances in the same micro-batches, the same frames up to float rounding, a pure function of the
step (resumed, grouped and slot by slot alike), and far less padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repro.config.schema import TaskBudget
from repro.data.manifest import load_task
from repro.probing.length_window import LengthWindow, padding_share, plan_chunks, window_steps
from repro.probing.sources import OnTheFly, UpstreamFrames, micro_batch
from interrupt import Stop, stop_at

torch.set_num_threads(2)
# Measured on the tiny WavLM (float32, CPU; PR and SID training micro-batches, 4 items, windows of 4
# steps): the largest difference of a frame between a micro-batch forwarded alone and gathered from
# its window is 1.3e-6 of the layer's largest magnitude; the bound leaves a margin of about 8x.
TOLERANCE = 1e-5


def test_windows_are_aligned_to_the_step_and_cut_at_the_end():
    assert list(window_steps(0, 4, 10)) == [0, 1, 2, 3] == list(window_steps(3, 4, 10))
    assert list(window_steps(5, 4, 10)) == [4, 5, 6, 7] and list(window_steps(9, 4, 10)) == [8, 9]
    assert list(window_steps(7, 1, 10)) == [7]


def test_chunks_sort_every_item_once_longest_first():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(1000, 20000, size=8).tolist() for _ in range(6)]
    chunks = plan_chunks(lengths, 8)
    items = [mi for c in chunks for mi in c]
    assert sorted(items) == [(m, i) for m in range(6) for i in range(8)] and all(len(c) == 8 for c in chunks)
    flat = [lengths[m][i] for m, i in items]
    assert flat == sorted(flat, reverse=True)
    alone = [[(m, i) for i in range(8)] for m in range(6)]
    assert padding_share(lengths, chunks) < padding_share(lengths, alone) / 3
    assert padding_share([[5, 5], [5]], [[(0, 0), (0, 1)], [(1, 0)]]) == 0.0
    assert padding_share([[4, 2]], [[(0, 0), (0, 1)]]) == pytest.approx(0.25)
    # a tie keeps micro-batch order, and the last chunk holds the remainder
    assert plan_chunks([[3, 3], [3]], 2) == [[(0, 0), (0, 1)], [(1, 0)]]


@pytest.fixture(scope="module")
def upstream(hf_folder):
    from repro.models.hf_ssl import load_hf_ssl

    return load_hf_ssl(str(hf_folder("wavlm")))


def _source(upstream, corpus, task="PR", **kw):
    utts = [u for u in load_task(corpus, task) if u.split == "train"]
    return UpstreamFrames(upstream, corpus, utts, [0, 1, 2], OnTheFly(**kw))


def _window(source, steps, window, batch=4, accum=2, seed=0):
    n = len(source.utts)
    of = lambda s, a: micro_batch(n, batch, seed, s * accum + a)
    return LengthWindow(source, of, steps, window), of


def _close(a, b, tol=TOLERANCE):
    scale = max(float(a.abs().max()), 1e-12)
    return float((a - b).abs().max()) <= tol * scale


@pytest.mark.parametrize("kw", [{}, {"crop_samples": 12000, "seed": 3}, {"pooled": True}],
                         ids=["frames", "crops", "pooled"])
def test_a_windowed_micro_batch_is_the_direct_one_up_to_rounding(upstream, tiny_corpus, kw):
    source = _source(upstream, tiny_corpus, **kw)
    window, of = _window(source, steps=5, window=3)
    for step in range(5):
        for a in range(2):
            idx = of(step, a)
            got, got_len = window.slot(a).batch(idx, step)
            want, want_len = source.batch(idx, step)
            assert torch.equal(got_len, want_len) and got_len.dtype == torch.long
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == torch.float32
                assert _close(g, w), (step, a, float((g - w).abs().max()))
                if not kw.get("pooled"):
                    for b, n in enumerate(got_len.tolist()):
                        assert (g[b, n:] == 0).all() and (w[b, n:] == 0).all()  # padding is zeros either way


def test_a_window_is_a_function_of_the_step_not_of_where_a_run_started(upstream, tiny_corpus):
    source = _source(upstream, tiny_corpus)
    whole, of = _window(source, steps=8, window=4)
    seen = {(s, a): whole.batch(s, a) for s in range(8) for a in range(2)}
    resumed, _ = _window(source, steps=8, window=4)  # a run resumed at step 2, mid-window
    for s in range(2, 8):
        for a in range(2):
            layers, lengths = resumed.batch(s, a)
            assert torch.equal(lengths, seen[s, a][1]) and all(torch.equal(x, y) for x, y in zip(layers, seen[s, a][0]))
    alone, _ = _window(source, steps=8, window=4)  # slot 1 by itself, as a second rank computes it
    for s in range(8):
        assert all(torch.equal(x, y) for x, y in zip(alone.batch(s, 1)[0], seen[s, 1][0]))
    assert not whole._windows and not resumed._windows  # each window freed after its last micro-batch


def test_a_window_asks_once_for_its_audio_and_decodes_the_next_ahead(upstream, tiny_corpus):
    source = _source(upstream, tiny_corpus, workers=2)
    window, of = _window(source, steps=6, window=2)
    window.prefetch(of(0, 0), 0)  # the trainer's look-ahead goes to the source before the window starts
    assert (tuple(of(0, 0)), 0) in source._pending
    window.batch(0, 0)
    assert {k for k in source._pending} == {(tuple(of(s, 0)), s) for s in (2, 3)}  # the next window, decoding
    window.prefetch(of(1, 1), 1)  # a step whose window is forwarded already: nothing to decode
    assert (tuple(of(1, 1)), 1) not in source._pending


def test_the_window_cuts_padding_on_the_tiny_corpus(upstream, tiny_corpus):
    source = _source(upstream, tiny_corpus)
    n = len(source.utts)
    samples = [int(u.num_samples) for u in source.utts]
    lengths = [[samples[i] for i in micro_batch(n, 4, 0, k)] for k in range(0, 64, 2)]  # slot 0 of 32 steps
    alone = padding_share(lengths, [[(m, i) for i in range(4)] for m in range(32)])
    windowed = np.mean([padding_share(lengths[k:k + 8], plan_chunks(lengths[k:k + 8], 4)) for k in range(0, 32, 8)])
    assert windowed < alone / 2


def _group(corpus, tmp_path, window, lrs=(0.01, 0.002), task_name="PR"):
    from repro.bench import probe_syncs
    from repro.bench.extract import base_plus_model
    from repro.models.hf_ssl import load_hf_ssl
    from repro.probing.tasks import make_task

    upstream = load_hf_ssl(str(base_plus_model(tmp_path / "wavlm", probe_syncs.TINY_WAVLM)))
    utts = [u for u in load_task(corpus, task_name) if u.split == "train"]
    task = make_task(task_name, {"train": utts})
    source = UpstreamFrames(upstream, corpus, utts, list(range(upstream.num_layers)), OnTheFly(length_window=window))
    tmp_path.mkdir(parents=True, exist_ok=True)
    probes, train, dev = probe_syncs._group(task, source, utts, list(lrs), torch.device("cpu"), tmp_path, "g")
    for p in probes:  # checkpoints where a second call finds them
        p.checkpoint = tmp_path / f"{p.lr:g}.pt"
    return task, probes, train, dev


def test_probes_trained_on_windows_match_direct_forwards_and_resume_to_the_same_bytes(tiny_corpus, tmp_path):
    from repro.probing.trainer import TrainContext, train_group

    budget = TaskBudget(steps=6, batch_size=4, lr_grid=[0.01, 0.002], eval_every=2, grad_accum=2)
    task, probes, train, dev = _group(tiny_corpus, tmp_path / "direct", window=1)
    direct = train_group(task, probes, train, dev, budget, TrainContext(torch.device("cpu"), progress=False))
    task, probes, train, dev = _group(tiny_corpus, tmp_path / "window", window=4)
    windowed = train_group(task, probes, train, dev, budget, TrainContext(torch.device("cpu"), progress=False))
    # measured here: training losses within 2.3e-7 relative, the dev PER equal, the best states' weights
    # within 7.1e-6 absolute; the bounds leave room for other CPUs
    for d, w in zip(direct, windowed):
        assert np.allclose(d["curve"]["train_loss"], w["curve"]["train_loss"], rtol=1e-4)
        assert np.allclose(d["curve"]["dev"], w["curve"]["dev"], rtol=1e-4, atol=1e-6)
    # interrupted after step 2 (its checkpoint), mid-window: resumed, the same bytes as uninterrupted
    task, probes, train, dev = _group(tiny_corpus, tmp_path / "resumed", window=4)
    with pytest.raises(Stop):
        train_group(task, probes, train, dev, budget, TrainContext(torch.device("cpu"), progress=False, on_eval=stop_at(2)))
    task, probes, train, dev = _group(tiny_corpus, tmp_path / "resumed", window=4)
    again = train_group(task, probes, train, dev, budget, TrainContext(torch.device("cpu"), progress=False))
    for w, r in zip(windowed, again):
        assert w["curve"] == r["curve"] and w["best"] == r["best"]
        assert all(torch.equal(w["best_state"][k], r["best_state"][k]) for k in w["best_state"])


def test_group_memory_counts_the_window(tiny_corpus, tmp_path):
    from repro.errors import ConfigError
    from repro.probing.trainer import group_memory

    budget = TaskBudget(steps=8, batch_size=4, lr_grid=[0.01], eval_every=4, grad_accum=2)
    task, (probe,), train, _ = _group(tiny_corpus, tmp_path / "w", window=8, lrs=(0.01,))
    plan = group_memory(task, probe.model, train, budget, 0, torch.device("cpu"))
    layers, _ = train.source.batch(micro_batch(len(train.utts), 4, 0, 0), 0)
    assert plan.window == 8 * 2 * sum(h.numel() * 4 for h in layers)
    with pytest.raises(ConfigError, match=r"MiB of the length window.*lower probing\.length_window or "
                                          r"probing\.tasks\.PR\.batch_size$"):
        plan.fitting(plan.shared + plan.activations + plan.window + plan.per_probe - 1, "PR")
    task, (probe,), train, _ = _group(tiny_corpus, tmp_path / "d", window=1, lrs=(0.01,))
    assert group_memory(task, probe.model, train, budget, 0, torch.device("cpu")).window == 0


def test_a_windowed_step_reads_nothing_back(tiny_corpus, tmp_path):
    from repro.bench.probe_syncs import count_steps

    budget = TaskBudget(steps=8, batch_size=4, lr_grid=[0.01, 0.002], eval_every=4, grad_accum=2)
    task, probes, train, dev = _group(tiny_corpus, tmp_path, window=4)
    steps = count_steps(task, probes, (train, dev), budget, 0, torch.device("cpu"), train.source.upstream)
    assert [s["step"] for s in steps] == [5, 6, 7, 8] and [s["syncs"] for s in steps] == [{}] * 4
    # the window's audio is copied at its first step (step 5 done = step 4, the window 4..7), then only
    # each micro-batch's gather index, lengths and targets
    assert steps[0]["h2d_bytes"] > 4 * max(s["h2d_bytes"] for s in steps[1:])
