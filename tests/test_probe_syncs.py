"""The probe step as a device program: no host sync inside a training step, nothing but the step's
data copied to the device, a non-finite loss stopping only its probe, groups cut to the device's memory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from repro.bench import probe_syncs
from repro.config.schema import TaskBudget
from repro.data.manifest import load_task
from repro.errors import ConfigError
from repro.probing.sources import micro_batch
from repro.probing.tasks import make_task
from repro.probing.trainer import TrainContext, group_memory, train_group

torch.set_num_threads(2)
STEPS, EVERY, BATCH = 8, 4, 4


@pytest.fixture(scope="module")
def counted(tiny_corpus, tmp_path_factory):
    return probe_syncs.run(work=tmp_path_factory.mktemp("syncs"), steps=STEPS, eval_every=EVERY, batch_size=BATCH,
                           corpus=tiny_corpus)


def _train_utts(corpus, task):
    return [u for u in load_task(corpus, task) if u.split == "train"]


def _expected_bytes(corpus, name: str, dims: list[int], store_frames=None) -> dict[int, int]:
    """Bytes each counted step must copy: its micro-batch (on the CPU a batch is read when used; the
    step that makes n steps done is step n - 1 of the seeded stream), computed here from the corpus."""
    task_name, input_ = name.split("-")
    utts = _train_utts(corpus, task_name)
    task = make_task(task_name, {"train": utts})
    out = {}
    for n in range(EVERY + 1, 2 * EVERY + 1):
        idx = micro_batch(len(utts), BATCH, 0, n - 1)
        collated = task.collate([task.encode(utts[i]) for i in idx])
        targets = sum(t.numel() * t.element_size() for t in (collated if isinstance(collated, tuple) else (collated,)))
        lengths = 8 * BATCH
        if input_ == "upstream":
            import soundfile

            samples = max(soundfile.info(str(Path(corpus) / utts[i].path)).frames for i in idx)
            data = 4 * BATCH * samples + 8 * BATCH  # the audio, its lengths
        elif input_ == "fused":  # the means and targets are resident: only the micro-batch's positions
            out[n] = 8 * BATCH
            continue
        elif input_ == "pooled":
            data = sum(4 * BATCH * d for d in dims)
        else:
            data = sum(4 * BATCH * max(store_frames(utts[i].id) for i in idx) * d for d in dims)
        out[n] = data + targets + lengths
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["PR-upstream", "SID-upstream", "ASV-upstream", "KS-pooled", "KS-fused", "PR-cache"])
def test_a_training_step_reads_nothing_back_and_copies_only_its_data(name, counted, tiny_corpus, tmp_path):
    steps = counted["tasks"][name]["steps"]
    assert [s["step"] for s in steps] == list(range(EVERY + 1, 2 * EVERY + 1))
    assert [s["syncs"] for s in steps] == [{}] * EVERY
    dims = [16, 16, 16]  # the tiny WavLM's three layers
    frames = None
    if name == "PR-cache":
        from repro.bench.extract import base_plus_model
        from repro.models.hf_ssl import load_hf_ssl

        upstream = load_hf_ssl(str(base_plus_model(tmp_path / "wavlm", probe_syncs.TINY_WAVLM)))
        frames = lambda uid: int(upstream.frame_lengths(torch.tensor([_samples(tiny_corpus, uid)]))[0][0])
    assert {s["step"]: s["h2d_bytes"] for s in steps} == _expected_bytes(tiny_corpus, name, dims, frames)


def _samples(corpus, uid):
    import soundfile

    utt = next(u for u in load_task(corpus, "PR") if u.id == uid)
    return soundfile.info(str(Path(corpus) / utt.path)).frames


def test_the_benchmark_table_names_every_task(counted):
    text = probe_syncs.table(counted)
    assert all(name in text for name in counted["tasks"]) and "syncs/step" in text


def _group(corpus, tmp_path, task_name="SID", lrs=(0.01, 0.002)):
    from repro.models.hf_ssl import load_hf_ssl
    from repro.bench.extract import base_plus_model
    from repro.probing.sources import UpstreamFrames

    upstream = load_hf_ssl(str(base_plus_model(tmp_path / "wavlm", probe_syncs.TINY_WAVLM)))
    utts = _train_utts(corpus, task_name)
    task = make_task(task_name, {"train": utts})
    source = UpstreamFrames(upstream, corpus, utts, list(range(upstream.num_layers)))
    probes, train, dev = probe_syncs._group(task, source, utts, list(lrs), torch.device("cpu"), tmp_path, "g")
    return task, probes, train, dev


def test_a_non_finite_loss_stops_only_its_probe(tiny_corpus, tmp_path):
    budget = TaskBudget(steps=8, batch_size=4, lr_grid=[0.01, 0.002], eval_every=4)
    task, probes, train, dev = _group(tiny_corpus, tmp_path / "group")
    with torch.no_grad():
        probes[0].model.head.proj.weight[0, 0] = float("nan")  # this probe's loss is NaN from the first step
    outs = train_group(task, probes, train, dev, budget, TrainContext(torch.device("cpu"), progress=False))
    assert outs[0]["failed"] == ("probe SID lr=0.01: non-finite training loss or gradient norm in steps 1..4; it "
                                 "stops (lower the learning rate, probing.tasks.SID.lr_grid)")
    assert outs[0]["curve"]["step"] == [] and not probes[0].checkpoint.exists()
    task, (solo,), train, dev = _group(tiny_corpus, tmp_path / "solo", lrs=(0.002,))
    (alone,) = train_group(task, [solo], train, dev, budget, TrainContext(torch.device("cpu"), progress=False))
    assert outs[1]["failed"] is None and outs[1]["curve"] == alone["curve"] and outs[1]["best"] == alone["best"]


def test_group_memory_is_counted_and_a_probe_too_large_names_the_setting(tiny_corpus, tmp_path):
    budget = TaskBudget(steps=8, batch_size=4, lr_grid=[0.01], eval_every=4)
    task, (probe,), train, _ = _group(tiny_corpus, tmp_path, lrs=(0.01,))
    before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    plan = group_memory(task, probe.model, train, budget, 0, torch.device("cpu"))
    params = sum(q.numel() * 4 for q in probe.model.parameters())
    assert plan.per_probe == 4 * params  # weights, gradients, two moments
    idx = micro_batch(len(train.utts), 4, 0, 0)
    layers, _ = train.source.batch(idx, 0)
    assert plan.shared >= 2 * sum(h.numel() * 4 for h in layers) and plan.activations > 0
    assert all(torch.equal(before[k], v) for k, v in probe.model.state_dict().items())  # the model is untouched
    room = plan.shared + plan.activations
    assert plan.fitting(room + 3 * plan.per_probe + 5, "SID") == 3
    with pytest.raises(ConfigError, match=r"lower probing\.tasks\.SID\.batch_size$"):
        plan.fitting(room + plan.per_probe - 1, "SID")


def test_groups_are_cut_to_the_probes_that_fit(tiny_corpus, tmp_path):
    from repro.probing.runner import ProbeInputs, ProbeRun, _fitting_group, lr_tag, run_probes

    lrs = [0.01, 0.002]
    ws = _ks_workspace(tiny_corpus, tmp_path, "fit", lrs)
    inputs = ProbeInputs(ws, "tiny-wavlm", "KS")
    fold, splits = inputs.folds()[0]
    assert _fitting_group(inputs, lrs[0], 10 ** 12) > 2
    from repro.probing.inputs import fold_group

    task, train, _, _, _, (probe,) = fold_group(inputs, splits, lrs[:1], fold)
    plan = group_memory(task, probe.model, train, inputs.budget, ws.profile.seed, inputs.device)
    one = plan.shared + plan.activations + plan.window + plan.per_probe
    run_probes(ws, "tiny-wavlm", "KS", lrs, ProbeRun(progress=False, device_memory=one), inputs=inputs)
    for lr in lrs:
        timing = json.loads((ws.probe_dir("tiny-wavlm", "KS") / f"{lr_tag(lr)}.timing.json").read_text())
        assert timing["group"] == [lr]  # one probe a group
    with pytest.raises(ConfigError, match="probing.tasks.KS.batch_size"):
        run_probes(ws, "tiny-wavlm", "KS", lrs, ProbeRun(progress=False, device_memory=one - 1, force=True),
                   inputs=inputs)


def _ks_workspace(tiny_corpus, tmp_path, name: str, lrs: list[float]):
    """A workspace of the smoke profile reduced to KS probes of `lrs` (4 steps, upstream input) on tiny WavLM,
    over the tiny corpus."""
    from repro.config import load_profile
    from repro.workspace import Workspace

    base = load_profile("smoke")
    tasks = {"KS": dataclasses.replace(base.probing.tasks["KS"], steps=4, eval_every=2, lr_grid=lrs, input="upstream")}
    profile = dataclasses.replace(base, name=name, tasks=["KS"], models=dataclasses.replace(
        base.models, speech_ssl=["tiny-wavlm"], speaker_ssl=[], speaker_sup=[]),
        probing=dataclasses.replace(base.probing, tasks=tasks))
    ws = Workspace(profile, tmp_path / "work", tmp_path / "results", tmp_path / "figures")
    ws.work.mkdir(parents=True)
    ws.corpus_dir.symlink_to(tiny_corpus)
    return ws


def test_a_diverging_learning_rate_stops_alone_and_is_named(tiny_corpus, tmp_path):
    from repro.probing.runner import ProbeRun, lr_tag, run_probes
    from repro.probing.trainer import NonFiniteLoss

    lrs = [0.01, 1e30]  # Adam moves every weight by about lr: the logits overflow after one step
    ws = _ks_workspace(tiny_corpus, tmp_path, "nan", lrs)
    with pytest.raises(NonFiniteLoss, match=r"^model tiny-wavlm: probe KS lr=1e\+30: non-finite .* in steps \d\.\.\d"):
        run_probes(ws, "tiny-wavlm", "KS", lrs, ProbeRun(progress=False))
    folder = ws.probe_dir("tiny-wavlm", "KS")
    assert (folder / f"{lr_tag(0.01)}.json").is_file() and not (folder / f"{lr_tag(1e30)}.json").exists()
