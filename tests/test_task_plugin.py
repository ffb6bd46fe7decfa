"""A task defined in one file outside the package, enabled by a profile's `tasks_from:`, goes through the
corpus stage (the synthetic corpus), the probe and the probing table; the built-in tasks' data is untouched."""

from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest

from repro.config import ConfigError, load_profile
from repro.data.synth import make_corpus
from repro.features.stage import extract_model
from repro.paper.registry import render_output
from repro.probing.runner import run_all
from repro.tasks import TASK_NAMES, TASKS, TaskSpec, register
from repro.workspace import Workspace

# A 2-class utterance task: every closed-set speaker says "yes" and "no" (the class is the word).
YN_TASK = textwrap.dedent('''
    from repro.tasks import Column, TaskSpec
    from repro.tasks.spec import SynthJob, SynthJobs


    def closed(ctx, speaker, rng):
        jobs = []
        for k, word in enumerate(["yes", "no"] * 2):
            uid = f"YN-{speaker.id}-{k:03d}"
            split = speaker.group if speaker.group != "train" else ("dev" if k == 3 else "train")
            jobs.append(SynthJob("YN", uid, split, speaker.id, word, word, ctx.voice(speaker, uid)))
        return jobs


    TASK = TaskSpec("YN", "yes or no", "content", "none", "class", "utterance", "accuracy", True, True, "dev",
                    ("head_dim", "pooled_shortcut"), column=Column("YN Acc↑", False),
                    corpus_size={"train": 0.1, "dev": 0.01, "test": 0.01, "item_seconds": 1.0, "format": "wav",
                                 "utterances": {"train": 300, "dev": 30, "test": 30}},
                    synthetic=SynthJobs(closed=closed, labels=lambda ctx, speakers: ["no", "yes"]))
''')

SIZES = dict(speakers=14, asv_speakers=4, asv_dev_speakers=2, dev_speakers=2, test_speakers=2, pr_per_speaker=2,
             ks_repeats=1, ks_unknown_per_speaker=1, ks_silence_per_speaker=1, ic_per_speaker=2, sid_per_speaker=3,
             er_per_style=1, er_folds=5, asv_per_speaker=3)  # conftest's TINY_SYNTH


@pytest.fixture
def unregister():
    """The registry as it was before the test."""
    before = dict(TASKS)
    yield
    TASKS.clear()
    TASKS.update(before)


def _profile_file(tmp_path) -> str:
    (tmp_path / "yn_task.py").write_text(YN_TASK)
    sizes = ", ".join(f"{k}: {v}" for k, v in SIZES.items())
    (tmp_path / "yn.yaml").write_text(textwrap.dedent(f"""
        extends: smoke
        tasks_from: [yn_task.py]
        tasks: [YN]
        corpus: {{kind: synthetic, synthetic: {{{sizes}}}}}
        models: {{speech_ssl: [], speaker_ssl: [], speaker_sup: [rand-ecapa]}}
        probing:
          tasks:
            YN: {{steps: 20, batch_size: 8, lr_grid: [0.01], eval_every: 10}}
        """))
    return str(tmp_path / "yn.yaml")


def test_a_task_from_a_file_runs_through_corpus_probe_and_table(tmp_path, tiny_corpus, unregister):
    profile = load_profile(_profile_file(tmp_path))
    assert profile.tasks == ["YN"] and "YN" in TASKS and TASK_NAMES == ("PR", "KS", "IC", "SID", "ASV", "ER")
    corpus = make_corpus(tmp_path / "corpus", profile.corpus.synthetic, profile.seed, progress=False)
    yn = [json.loads(line) for line in (corpus / "manifests" / "YN.jsonl").read_text().splitlines()]
    assert len(yn) == 10 * 4 and {u["label"] for u in yn} == {"yes", "no"}
    assert {u["split"] for u in yn} == {"train", "dev", "test"}
    info = json.loads((corpus / "corpus.json").read_text())
    assert info["labels"]["YN"] == ["no", "yes"] and info["provenance"]["inputs"]["tasks"] == ["YN"]
    for task in TASK_NAMES:  # the task's clips come after every built-in one: the built-in tasks' data is the same
        assert (corpus / "manifests" / f"{task}.jsonl").read_bytes() == \
            (tiny_corpus / "manifests" / f"{task}.jsonl").read_bytes()

    ws = Workspace(profile, tmp_path / "work", tmp_path / "results", tmp_path / "figures")
    ws.work.mkdir(parents=True)
    (ws.work / "corpus").symlink_to(corpus)
    extract_model(ws, "rand-ecapa", progress=False)
    run_all(ws, progress=False)
    best = json.loads((ws.results / "probing" / "rand-ecapa" / "YN" / "best.json").read_text())
    assert 0.0 <= best["test"] <= 1.0
    table = next(p for p in render_output(ws, "table-1") if p.suffix == ".md").read_text()
    assert "YN Acc↑" in table and f"{100 * best['test']:.2f}" in table


def test_bad_task_modules_and_names_are_refused_in_one_line(tmp_path, unregister):
    (tmp_path / "none.py").write_text("X = 1\n")
    (tmp_path / "p.yaml").write_text("extends: smoke\ntasks_from: [none.py]\n")
    with pytest.raises(ConfigError, match=r"p.yaml: tasks_from none.py: defines no TASK"):
        load_profile(str(tmp_path / "p.yaml"))
    (tmp_path / "q.yaml").write_text("extends: smoke\ntasks: [YN]\n")
    with pytest.raises(ConfigError, match=r"q.yaml: key 'tasks\[0\]' is 'YN'; tasks: PR, KS, IC, SID, ASV, ER"):
        load_profile(str(tmp_path / "q.yaml"))
    other = dataclasses.replace(TASKS["KS"], title="another keyword task")
    with pytest.raises(ConfigError, match="task KS: another task of that name is registered"):
        register(other)
    with pytest.raises(ConfigError, match="task name 'a/b'"):
        register(dataclasses.replace(TASKS["KS"], name="a/b"))
    assert isinstance(register(TASKS["KS"]), TaskSpec)  # the same spec again: nothing changes
