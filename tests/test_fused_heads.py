"""Pooled probes as one fused step (repro.probing.fused), a group's featurizers together, probing.tf32."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from repro.bench.probe_fused import _fold
from repro.config.schema import TaskBudget
from repro.errors import ConfigError
from repro.probing import fused
from repro.probing.featurizer import ProjectedWeightedSum, WeightedSum, group_features
from repro.probing.trainer import TrainContext, train_group
from repro.runtime import tf32_context
from interrupt import Stop, stop_at
from torchrun_launch import free_port

torch.set_num_threads(2)
CPU = torch.device("cpu")
LAYERS, DIM, TRAIN = 3, 16, 40


def _folds(tmp_path, task="KS", folds=1, k=2, classes=4):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return [fused.Fold(*_fold(task, f, classes, TRAIN, LAYERS, DIM, k, tmp_path)) for f in range(folds)]


def _budget(**changes):
    return TaskBudget(**{"steps": 6, "batch_size": 8, "lr_grid": [1e-3], "eval_every": 3, **changes})


class _Calls(TorchFunctionMode):
    """Torch calls by name, reset at each step's end."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


def _step_calls(folds, budget) -> list[dict]:
    """The torch calls of each training step between the first two evaluations."""
    steps, evals = [], []
    with _Calls() as mode:
        def on_step(n):
            if len(evals) == 1:
                steps.append(dict(mode.calls))
            mode.calls.clear()

        def on_eval(n):
            evals.append(n)
            mode.calls.clear()

        fused.train_fused(folds, budget, 0, CPU, progress=False, on_eval=fused.Hooks(on_eval, on_step))
    return steps


def test_the_torch_calls_of_a_fused_step_do_not_depend_on_the_number_of_probes_or_folds(tmp_path):
    budget = _budget(grad_accum=2)
    one = _step_calls(_folds(tmp_path / "1", k=1), budget)
    four = _step_calls(_folds(tmp_path / "4", k=4), budget)
    assert len(one) == 3 and one == four and sum(one[0].values()) > 20
    # every fold's micro-batch is one index upload and one gather from one table: ER's 5 folds x 4 learning
    # rates make the calls of one probe
    for folds, k in ((2, 1), (5, 4)):
        assert _step_calls(_folds(tmp_path / f"f{folds}-{k}", task="ER", folds=folds, k=k), budget) == one
    # a step's micro-batches are one batch of rows: one read (table rows, means, targets), one forward and
    # one backward, as many calls as a step without accumulation
    assert one[0]["index_select"] == 3
    assert _step_calls(_folds(tmp_path / "accum1", k=1), _budget(grad_accum=1)) == one


def _final(outs):
    return [[(o["best"], o["best_step"], o["curve"], {n: t.clone() for n, t in o["best_state"].items()})
             for o in fold] for fold in outs]


def _same(a, b) -> bool:
    return all(x[:3] == y[:3] and all(torch.equal(x[3][n], y[3][n]) for n in x[3]) for x, y in zip(a, b))


@pytest.mark.parametrize("task,folds", [("KS", 1), ("ER", 2)])
def test_a_probe_in_a_fused_group_gives_the_bytes_of_its_solo_run(task, folds, tmp_path):
    # on one thread: on two, the bytes of a group and its solo runs have differed after other tests had run
    # in the process (the suite's order), so the equality is asserted where it holds whatever ran before
    torch.set_num_threads(1)  # the session's count is put back after the test (conftest)
    budget = _budget()
    group = _final(fused.train_fused(_folds(tmp_path / "g", task, folds, k=3), budget, 0, CPU, progress=False))
    for i in range(3):
        solo_folds = _folds(tmp_path / f"s{i}", task, folds, k=3)
        for f in solo_folds:
            f.probes = [f.probes[i]]
        solo = _final(fused.train_fused(solo_folds, budget, 0, CPU, progress=False))
        assert all(_same([g[i]], s) for g, s in zip(group, solo))


@pytest.mark.parametrize("accum,optimizer", [(1, "adam"), (3, "adam"), (1, "adamw")])
def test_the_fused_engine_matches_the_per_probe_engine_within_float_rounding(tmp_path, accum, optimizer):
    """The tolerance stated in docs/probing.md: after 30 steps every weight within 1e-5 of the per-probe
    engine's (relative to the weight's largest magnitude), the same dev metrics; with accumulated
    micro-batches (the fused step's one product over their rows against their gradients added) too, and
    with AdamW (torch.optim.AdamW in the per-probe engine)."""
    budget = _budget(steps=30, eval_every=10, grad_accum=accum, optimizer=optimizer)
    (fold,) = _folds(tmp_path / "f", k=3)
    outs = fused.train_fused([fold], budget, 0, CPU, progress=False)[0]
    (other,) = _folds(tmp_path / "p", k=3)
    ref = train_group(other.task, other.probes, other.train, other.dev, budget, TrainContext(CPU, progress=False))
    worst = 0.0
    for a, b in zip(outs, ref):
        assert a["curve"]["dev"] == b["curve"]["dev"] and a["best_step"] == b["best_step"]
        for n, t in a["best_state"].items():
            worst = max(worst, float((t - b["best_state"][n]).abs().max() / b["best_state"][n].abs().max()))
        assert a["curve"]["train_loss"] == pytest.approx(b["curve"]["train_loss"], rel=1e-5)
    assert 0 < worst < 1e-5


class _Computed:
    """A pooled source whose rows are computed per batch (as an upstream forward computes them), not read
    from a resident table: `batch` gives each layer's `[B, 1, D]` means."""

    pooled = True

    def __init__(self, store):
        self.dims, self.means = store.dims, store.means

    def batch(self, idx, step):
        return [torch.from_numpy(m[idx])[:, None] for m in self.means], None


def _computed_folds(tmp_path):
    folds = _folds(tmp_path, "ER", folds=2, k=2)
    for f in folds:
        f.train.source = _Computed(f.train.source)
    return folds


def _two_rank_fold(rank: int, port: int, folder: str, accum: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from repro.runtime import setup, teardown

    env = setup("cpu", timeout_s=60)
    outs = fused.train_fused(_computed_folds(Path(folder) / f"rank{rank}"), _budget(grad_accum=accum), 0, CPU,
                             progress=False, env=env)
    torch.save(_final(outs), Path(folder) / f"rank{rank}.pt")
    teardown(env)


@pytest.mark.slow
def test_two_ranks_exchange_computed_rows_and_give_the_bytes_of_one_process(tmp_path):
    """Three micro-batches a step on two ranks (two and one): each rank computes its micro-batches' rows,
    the ranks exchange them, and both end with the probes one process trains from a resident table."""
    torch.set_num_threads(1)
    budget = _budget(grad_accum=3)
    single = _final(fused.train_fused(_folds(tmp_path / "one", "ER", folds=2, k=2), budget, 0, CPU,
                                      progress=False))
    computed = _final(fused.train_fused(_computed_folds(tmp_path / "computed"), budget, 0, CPU, progress=False))
    assert all(_same(a, b) for a, b in zip(computed, single))
    torch.multiprocessing.spawn(_two_rank_fold, args=(free_port(), str(tmp_path), 3), nprocs=2)
    for rank in (0, 1):
        ranked = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert all(_same(a, b) for a, b in zip(ranked, single)), rank


def test_probes_with_different_budgets_are_refused_with_the_settings_named():
    with pytest.raises(ConfigError, match=r"different budgets .*steps: KS=100, ER=200; batch_size: KS=32, ER=4; "
                                          r"train_crop_seconds: KS=None, ER=1\.0"):
        fused.check_budgets({"KS": _budget(steps=100, batch_size=32),
                             "ER": _budget(steps=200, batch_size=4, train_crop_seconds=1.0)})
    assert fused.check_budgets({"a": _budget(), "b": _budget()}) == _budget()


def test_folds_of_other_shapes_are_refused(tmp_path):
    folds = _folds(tmp_path / "a", "ER", 1, k=2) + _folds(tmp_path / "b", "ER", 1, k=2, classes=3)
    with pytest.raises(ConfigError, match="one shape"):
        fused.train_fused(folds, _budget(), 0, CPU, progress=False)


def test_a_checkpoint_of_other_settings_or_engine_is_rebuilt_never_mixed(tmp_path):
    budget = _budget()
    clean = _final(fused.train_fused(_folds(tmp_path / "clean", k=2), budget, 0, CPU, progress=False))
    # checkpoints written by the per-probe engine with the same run key, and by a group of another budget
    for name, write in (("engine", lambda f: train_group(f.task, f.probes, f.train, f.dev, budget,
                                                         TrainContext(CPU, progress=False))),
                        ("settings", lambda f: fused.train_fused([f], _budget(steps=3), 0, CPU, progress=False))):
        (fold,) = _folds(tmp_path / name, k=2)
        if name == "settings":
            for p in fold.probes:
                p.run_key = "other"
        write(fold)
        assert all(p.checkpoint.is_file() for p in fold.probes)
        (again,) = _folds(tmp_path / name, k=2)  # the same checkpoint paths, this run's key
        assert _same(_final(fused.train_fused([again], budget, 0, CPU, progress=False))[0], clean[0])


def test_an_interrupted_fused_group_resumes_to_the_uninterrupted_results(tmp_path):
    import shutil

    budget = _budget(steps=9)
    whole = _final(fused.train_fused(_folds(tmp_path / "whole", k=2), budget, 0, CPU, progress=False))

    def run(**kw):
        return fused.train_fused(_folds(tmp_path / "broken", k=2), budget, 0, CPU, progress=False, **kw)

    ckpt = _folds(tmp_path / "broken", k=2)[0].probes[0].checkpoint
    with pytest.raises(Stop):
        run(on_eval=stop_at(3))
    for suffix in ("", ".sha256"):
        shutil.copy(f"{ckpt}{suffix}", tmp_path / f"step3.pt{suffix}")
    with pytest.raises(Stop):
        run(on_eval=stop_at(6))
    # a kill between two checkpoint writes: one probe a checkpoint behind the other catches up alone, then fused
    for suffix in ("", ".sha256"):
        shutil.copy(tmp_path / f"step3.pt{suffix}", f"{ckpt}{suffix}")
    assert torch.load(ckpt, weights_only=True)["state"]["step"] == 3
    assert _same(_final(run())[0], whole[0])


def test_group_features_equal_each_featurizer_alone_and_the_per_layer_sum():
    torch.manual_seed(0)
    dims = [8, 16, 24]
    projected = [ProjectedWeightedSum(dims, 12) for _ in range(3)]
    for f in projected:
        torch.nn.init.normal_(f.weights)
    layers = [torch.randn(2, 5, d) for d in dims]
    together = group_features(projected, layers)
    one = group_features(projected, layers, one_product=True)  # a GPU's path: every probe in one product
    for f, out, out_one in zip(projected, together, one):
        assert torch.equal(out, group_features([f], layers)[0]) and torch.equal(out, f(layers))
        w = torch.softmax(f.weights, -1)
        per_layer = sum(w[l] * a(h) for l, (h, a) in enumerate(zip(layers, f.proj)))
        assert torch.allclose(out, per_layer, rtol=1e-5, atol=1e-6)
        assert torch.allclose(out_one, out, rtol=1e-6, atol=1e-6)
    plain = [WeightedSum(3) for _ in range(2)]
    for f in plain:
        torch.nn.init.normal_(f.weights)
    same = [torch.randn(2, 5, 8) for _ in range(3)]
    assert all(torch.equal(a, f(same)) for f, a in zip(plain, group_features(plain, same)))


def test_tf32_is_set_around_the_probes_work_and_restored():
    flags = lambda: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    before = flags()
    for enabled in (True, False):
        with tf32_context(enabled):
            assert flags() == (enabled, enabled)
        assert flags() == before
    with pytest.raises(RuntimeError), tf32_context(not before[0]):
        raise RuntimeError
    assert flags() == before


@pytest.fixture
def tf32_off():
    """TF32 off whatever earlier tests of the process left (a profile's `extraction.tf32` sets it)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_probing_tf32_changes_nothing_on_the_cpu(tmp_path, tf32_off):
    budget = _budget()
    seen = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "baddbmm":
                seen.append(torch.backends.cuda.matmul.allow_tf32)
            return func(*args, **(kwargs or {}))

    off = _final(fused.train_fused(_folds(tmp_path / "off", k=2), budget, 0, CPU, progress=False))
    with Watch():
        on = _final(fused.train_fused(_folds(tmp_path / "on", k=2), budget, 0, CPU, tf32=True, progress=False))
    assert _same(on[0], off[0])
    assert seen and all(seen) and not torch.backends.cuda.matmul.allow_tf32  # on for the heads only, then off


def test_a_projected_probes_gradients_in_a_group_are_its_solo_bytes():
    """At ECAPA-TDNN's real widths (7,168 -> 768), where a CPU reduction splits its work by threads."""
    dims = [1024] * 4 + [3072]
    torch.manual_seed(0)
    group = [ProjectedWeightedSum(dims, 768) for _ in range(3)]
    for f in group:
        torch.nn.init.normal_(f.weights)
    layers = [torch.randn(2, 20, d) for d in dims]

    def grads(featurizers):
        for f in featurizers:
            f.zero_grad(set_to_none=True)
        outs = group_features(featurizers, layers)
        torch.autograd.backward(outs, [o.detach() * 1e-3 + 1e-2 for o in outs])
        return [[q.grad.clone() for q in f.parameters()] for f in featurizers]

    together, alone = grads(group), grads(group[:1])
    assert all(torch.equal(a, b) for a, b in zip(together[0], alone[0]))


@pytest.mark.slow
def test_the_benchmark_measures_a_steady_state_rate_and_the_fixed_cost_apart():
    from repro.bench import probe_fused

    r = probe_fused.run(steps=4, short=2, rounds=1, group={"layers": 2, "dim": 8, "train": 16, "k": 2})
    for name, t in r["tasks"].items():
        (one,) = t["runs"]["this"]
        n = probe_fused.SHAPES[name]["longer"]  # KS's runs are longer: its steps are shorter
        assert one["short"]["steps"] == 2 * n and one["long"]["steps"] == 6 * n and one["engine"] == "fused"
        per_step = (one["long"]["cpu_seconds"] - one["short"]["cpu_seconds"]) / (4 * n)
        assert t["this_steps_per_cpu_s"] == pytest.approx(1 / per_step)
        assert t["this_fixed_cpu_seconds"] == pytest.approx(one["short"]["cpu_seconds"] - 2 * n * per_step)
        assert "speedup" not in t and t["probes"] == 2 * probe_fused.SHAPES[name]["folds"]
        # the floor: a step's irreducible work at the group's shapes, measured in its own process
        (low,) = t["runs"]["floor"]
        shape = probe_fused.SHAPES[name]
        assert low["probes"] == t["probes"] and low["rows"] == shape["batch_size"] * shape["grad_accum"]
        assert t["floor_steps_per_cpu_s"] == pytest.approx(1 / low["cpu_seconds_per_step"])
        assert t["bound_steps_per_cpu_s"] == pytest.approx(
            1 / (low["cpu_seconds_per_step"] + low["layer_sum_cpu_seconds_per_step"]))
        assert "ceiling_speedup" not in t and "bound_speedup" not in t
    assert "steady state over 4 steps (runs of 2 and 6 steps; KS's 5 times as long)" in probe_fused.table(r)
