"""Probe groups: every learning rate of a task on one forward per micro-batch, each result file equal to
the one a solo run of its learning rate writes; resumable, partial, split by `probing.max_group`."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from repro.config import load_profile
from repro.features.stage import extract_model
from repro.probing.runner import ProbeInputs, ProbeRun, lr_tag, run_probes
from workspaces import workspace_on
from interrupt import Stop, stop_at

torch.set_num_threads(2)
LRS = [0.01, 0.002]
MODEL = "tiny-wavlm"


def _profile(task: str, input_: str, steps: int = 8, **budget):
    base = load_profile("smoke")
    tasks = {task: dataclasses.replace(base.probing.tasks[task], steps=steps, eval_every=4, lr_grid=list(LRS),
                                       input=input_, **budget)}
    return dataclasses.replace(
        base, name="groups", tasks=[task],
        models=dataclasses.replace(base.models, speech_ssl=[MODEL], speaker_ssl=[], speaker_sup=[]),
        probing=dataclasses.replace(base.probing, tasks=tasks, er_folds=[1, 2]))


def _result_files(ws, task) -> dict[str, bytes]:
    folder = ws.probe_dir(MODEL, task)
    return {p.name: p.read_bytes() for p in sorted(folder.glob("lr-*.json")) if not p.name.endswith(".timing.json")}


CASES = [  # a frame-level task (CTC), crops, x-vector with EER selection, folds; every input
    ("PR", "cache", {}), ("PR", "upstream", {}), ("SID", "cache", {"train_crop_seconds": 1.0}),
    ("SID", "upstream", {"train_crop_seconds": 1.0}), ("ASV", "cache", {}), ("ER", "pooled", {}), ("KS", "pooled", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize("task,input_,budget", CASES, ids=[f"{t}-{i}" for t, i, _ in CASES])
def test_a_group_writes_the_result_files_of_solo_runs(task, input_, budget, tiny_corpus, tmp_path):
    profile = _profile(task, input_, **budget)
    solo = workspace_on(tmp_path / "solo", profile, tiny_corpus)
    group = workspace_on(tmp_path / "group", profile, tiny_corpus)
    for ws in (solo, group):
        extract_model(ws, MODEL, progress=False)
    for lr in LRS:
        run_probes(solo, MODEL, task, [lr], ProbeRun(progress=False))
    outcomes = run_probes(group, MODEL, task, LRS, ProbeRun(progress=False))
    assert [o.lr for o in outcomes] == LRS and not any(o.skipped for o in outcomes)
    assert _result_files(group, task) == _result_files(solo, task) and len(_result_files(solo, task)) == 2
    if task == "ER":
        assert [r["fold"] for r in outcomes[0].result["runs"]] == [1, 2]


def _count_forwards(inputs: ProbeInputs) -> list[int]:
    calls = [0]
    inputs.upstream.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_one_upstream_forward_feeds_every_learning_rate(tiny_corpus, tmp_path):
    counts = {}
    for name, lrs in (("solo", LRS[:1]), ("group", LRS)):
        ws = workspace_on(tmp_path / name, _profile("PR", "upstream"), tiny_corpus)
        inputs = ProbeInputs(ws, MODEL, "PR")
        calls = _count_forwards(inputs)
        run_probes(ws, MODEL, "PR", lrs, ProbeRun(progress=False), inputs=inputs)
        counts[name] = calls[0]
    assert counts["group"] == counts["solo"] > 0  # train, dev and test forwards shared by both learning rates


def test_an_interrupted_group_resumes_to_the_uninterrupted_results(tiny_corpus, tmp_path):
    profile = _profile("PR", "cache", steps=12)
    whole = workspace_on(tmp_path / "whole", profile, tiny_corpus)
    broken = workspace_on(tmp_path / "broken", profile, tiny_corpus)
    for ws in (whole, broken):
        extract_model(ws, MODEL, progress=False)
    run_probes(whole, MODEL, "PR", LRS, ProbeRun(progress=False))

    ckpts = broken.probe_checkpoint_dir(MODEL, "PR")
    with pytest.raises(Stop):
        run_probes(broken, MODEL, "PR", LRS, ProbeRun(progress=False, on_eval=stop_at(4)))
    shutil.copy(ckpts / f"{lr_tag(LRS[0])}.pt", tmp_path / "step4.pt")
    with pytest.raises(Stop):
        run_probes(broken, MODEL, "PR", LRS, ProbeRun(progress=False, on_eval=stop_at(8)))
    assert not _result_files(broken, "PR")
    # a kill between two checkpoint writes: one probe is a checkpoint behind the other and catches up alone
    shutil.copy(tmp_path / "step4.pt", ckpts / f"{lr_tag(LRS[0])}.pt")
    run_probes(broken, MODEL, "PR", LRS, ProbeRun(progress=False))
    assert _result_files(broken, "PR") == _result_files(whole, "PR")


def test_complete_learning_rates_are_kept_and_groups_split_by_max_group(tiny_corpus, tmp_path):
    # on one thread, as test_fused_heads's byte test: on two, a group's bytes have followed what ran before
    torch.set_num_threads(1)  # the session's count is put back after the test (conftest)
    profile = _profile("KS", "pooled")
    full = workspace_on(tmp_path / "full", profile, tiny_corpus)
    split = workspace_on(tmp_path / "split", dataclasses.replace(profile, probing=dataclasses.replace(
        profile.probing, max_group=1)), tiny_corpus)
    for ws in (full, split):
        extract_model(ws, MODEL, progress=False)
    run_probes(full, MODEL, "KS", LRS, ProbeRun(progress=False))
    run_probes(split, MODEL, "KS", LRS[:1], ProbeRun(progress=False))
    outcomes = run_probes(split, MODEL, "KS", LRS, ProbeRun(progress=False))
    assert [o.skipped for o in outcomes] == [True, False]
    assert _result_files(split, "KS") == _result_files(full, "KS")


def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_corpus, tmp_path):
    profile = _profile("KS", "pooled")
    clean = workspace_on(tmp_path / "clean", profile, tiny_corpus)
    stale = workspace_on(tmp_path / "stale", profile, tiny_corpus)
    other = workspace_on(tmp_path / "other", _profile("KS", "pooled", steps=4), tiny_corpus)
    for ws in (clean, stale, other):
        extract_model(ws, MODEL, progress=False)
    run_probes(other, MODEL, "KS", LRS, ProbeRun(progress=False))  # checkpoints of a 4-step budget
    stale.probe_checkpoint_dir(MODEL, "KS").mkdir(parents=True)
    # each checkpoint with its digest record (.pt.sha256)
    for p in other.probe_checkpoint_dir(MODEL, "KS").glob("*.pt*"):
        shutil.copy(p, stale.probe_checkpoint_dir(MODEL, "KS") / p.name)
    run_probes(clean, MODEL, "KS", LRS, ProbeRun(progress=False))
    run_probes(stale, MODEL, "KS", LRS, ProbeRun(progress=False))
    assert _result_files(stale, "KS") == _result_files(clean, "KS")
