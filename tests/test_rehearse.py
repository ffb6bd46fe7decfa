"""The rehearsal: corpora in the real layouts read by the real preparation code, a profile that keeps
every setting but sizes, folders and keys of its own, and (slow) the CI rehearsal end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from repro.config import load_profile, to_dict
from repro.rehearse import corpora
from repro.rehearse.profile import write_profile


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal") / "data"
    made = corpora.make_all(root, corpora.CI, 0, log=lambda *_: None)
    return root, made


def test_corpora_are_read_by_the_real_preparation_code(data_root):
    from repro.data.prepare import fluent, iemocap, librispeech, speech_commands, voxceleb

    root, made = data_root
    pr, vocab = librispeech.items(root, ["train", "dev", "test"], "error")  # every word in a lexicon
    assert {i.split for i in pr} == {"train", "dev", "test"} and len(pr) == made["librispeech"]
    assert len(vocab) == 71 and all(set(i.label) <= set(vocab) for i in pr)
    assert all(i.abs.suffix == ".flac" and i.abs.is_file() for i in pr)
    ks, labels = speech_commands.items(root, root / "ks-tmp", 0)
    for split in ("train", "dev", "test"):  # every keyword in every split, silence cut from the noise files
        assert {i.label for i in ks if i.split == split} >= {"yes", "_unknown_", "_silence_"}, split
    ic, slots = fluent.items(root / "fluent_speech_commands_dataset", "fsc")
    assert {i.split for i in ic} == {"train", "dev", "test"} and "kitchen" in slots["location"]
    sid = voxceleb.sid_items(root)
    assert {i.split for i in sid} == {"train", "dev", "test"}
    assert {i.label for i in sid if i.split == "test"} == {i.label for i in sid if i.split == "train"}
    asv, trials = voxceleb.asv_items(root)
    assert {t.target for t in trials["test"]} == {True, False}
    er, er_labels = iemocap.items(root / "IEMOCAP_full_release", "iemocap", 1, 0.2)
    assert len(er) == made["iemocap"]["total"]
    for fold in "12345":  # every class in the training part of every fold
        assert {i.label for i in er if i.fold_splits[fold] == "train"} == set(er_labels), fold


def test_the_trial_list_has_distinct_pairs_half_of_them_targets(data_root):
    """VoxCeleb1-O's properties: no trial twice, no file against itself, as many target as non-target
    trials, each label the speakers' (same id = target)."""
    root, _ = data_root
    lines = (root / "voxceleb1" / "meta" / "voxceleb1_test_v2.txt").read_text().splitlines()
    trials = [line.split() for line in lines]
    assert len(trials) == corpora.CI.vox_trials and all(len(t) == 3 for t in trials)
    assert len({frozenset(t[1:]) for t in trials}) == len(trials) and all(t[1] != t[2] for t in trials)
    assert all(t[0] == str(int(t[1].split("/")[0] == t[2].split("/")[0])) for t in trials)
    assert sum(t[0] == "1" for t in trials) == len(trials) // 2
    files = [f"id1027{s}/v/{n}.wav" for s in range(2) for n in range(3)]  # 6 target, 9 non-target pairs
    with pytest.raises(ValueError, match="vox_trials=14"):
        corpora.trial_list(files, 14, np.random.default_rng(0))


@pytest.mark.parametrize("ci", [False, True])
def test_the_profile_keeps_every_setting_but_sizes(tmp_path, ci):
    base = to_dict(load_profile("fast"))
    path, shrunk = write_profile("fast", tmp_path, ci)
    rehearsal = to_dict(load_profile(str(path)))
    assert rehearsal["name"] == "rehearse-fast"
    assert rehearsal["data"]["lock_file"] != base["data"]["lock_file"]  # never data.lock.json
    assert Path(rehearsal["data"]["root"]).parent == tmp_path

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(base), flat(rehearsal)
    changed = {k for k in a if a[k] != b.get(k)}
    listed = {line.split(":")[0] for line in shrunk}
    allowed = {"name", "description", "data.root", "data.lock_file"}
    # every change is a listed size (a subset rule counts as its split)
    assert all(k in allowed or k in listed or k.rsplit(".", 1)[0] in listed for k in changed), sorted(changed)
    for kept in ("extraction.dtype", "extraction.num_workers", "extraction.autocast", "probing.tasks.SID.input",
                 "probing.tasks.SID.train_crop_seconds", "probing.tasks.KS.input", "probing.tasks.PR.lr_grid",
                 "probing.asv_idt_without_embedding", "cka.task"):
        if not (ci and kept == "extraction.num_workers"):  # the CI keeps worker processes, two of them
            assert a[kept] == b[kept], kept


def test_rehearsal_outputs_are_refused_by_the_real_profile(tmp_path, monkeypatch):
    """The rehearsal's registry entries and sizes give other settings keys: the real profile never
    accepts a rehearsal store or result as its own."""
    from repro.provenance import probe_key, store_key
    from repro.rehearse.models import registry_file

    path, _ = write_profile("fast", tmp_path)
    real = load_profile("fast")
    before = {m: store_key(real, m, "KS", "pooled") for m in real.models.all()}
    sources = {m: tmp_path / m for m in real.models.all()}
    registry = registry_file(tmp_path / "models.yaml", sources)
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", os.pathsep.join([os.environ["REPRO_MODEL_REGISTRY"], str(registry)]))
    rehearsal = load_profile(str(path))
    for m in real.models.all():
        assert store_key(rehearsal, m, "KS", "pooled") != before[m]
        assert probe_key(rehearsal, m, "PR", 0.01) != probe_key(real, m, "PR", 0.01)


@pytest.mark.slow
def test_ci_rehearsal_runs_every_stage(tmp_path, monkeypatch):
    """`repro rehearse --ci`: every stage of the fast profile, then the plan says all is complete."""
    from repro.cli import main

    monkeypatch.chdir(tmp_path)
    for var in ("REPRO_WORK", "REPRO_RESULTS", "REPRO_FIGURES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "real-data"))  # as in the Docker image: never read or written
    result = CliRunner().invoke(main, ["rehearse", "--profile", "fast", "--ci", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "work" / "fast").exists() and not (tmp_path / "data.lock.json").exists()
    assert not (tmp_path / "real-data").exists() and os.environ["REPRO_DATA"] == str(tmp_path / "real-data")
    figures = tmp_path / "paper_figures" / "rehearse-fast"
    assert "REHEARSAL of profile `fast`: NOT RESULTS" in (figures / "REPORT.md").read_text()
    assert "means nothing about any model" in (figures / "REHEARSAL.md").read_text()  # EER 0 of synthetic voices
    assert json.loads((figures / "provenance.json").read_text())["rehearsal"]["profile"] == "fast"
    record = json.loads((figures / "REHEARSAL.json").read_text())
    assert {"features", "cka", "probe", "paper"} <= set(record["seconds"]) <= set(record["cpu_seconds"])
    if shutil.which("ffmpeg") is None:
        assert record["train"] == {"skipped": "no ffmpeg on this machine: the rehearsal VoxCeleb2 (.m4a) cannot be "
                                              "made or converted"}
    else:  # `repro train` of both recipes on the rehearsal VoxCeleb2 (m4a, prepared by `repro data prepare-vox2`)
        vox2 = tmp_path / "work" / "rehearse-fast" / "data" / "voxceleb2" / "dev-wav16k" / "manifest.jsonl"
        assert vox2.is_file() and set(record["train"]) == {"supervised", "dino"}
        for recipe, out in record["train"].items():  # trained, then published or judged (a few steps)
            assert out["published"] or "failed and its model is not used" in out["judged"], (recipe, out)
            assert (Path(out["run"]) / "train_log.jsonl").is_file(), recipe
    profile = load_profile(str(tmp_path / "work" / "rehearse-fast" / "profile.yaml"))
    for model in profile.models.all():
        for task in profile.tasks:
            assert (tmp_path / "results" / "rehearse-fast" / "probing" / model / task / "best.json").is_file()
    # the plan of the rehearsal profile: nothing left to do
    from repro.plan import make_plan
    from repro.workspace import Workspace

    monkeypatch.setenv("REPRO_MODEL_REGISTRY", os.pathsep.join(
        [os.environ["REPRO_MODEL_REGISTRY"], str(tmp_path / "work" / "rehearse-fast" / "models.yaml")]))
    plan = make_plan(Workspace.for_profile(profile), ["features", "cka", "probe"])
    assert plan.counts()["missing"] == 0 and plan.counts()["stale"] == 0, [
        (o.path, o.status, o.detail) for o in plan.outputs if o.status != "complete"]


def test_cpu_seconds_count_finished_child_processes():
    """Data-loading workers, ffmpeg and espeak-ng are child processes: their CPU time is the rehearsal's."""
    import subprocess
    import sys

    from repro.rehearse.runner import cpu_seconds

    before = cpu_seconds()
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
                   check=True)
    assert cpu_seconds() - before >= 0.3


def test_the_record_keeps_wall_and_cpu_seconds_and_the_load(tmp_path):
    from repro.bench.rehearsal import record, table

    rehearsal = {"profile": "fast", "ci": False, "seconds": {"corpora": 30.0, "features": 300.0, "total": 400.0},
                 "cpu_seconds": {"corpora": 20.0, "features": 500.0, "total": 540.0}, "load_average_start": 1.5,
                 "load_average_end": 3.25, "disk_bytes": {"work": 3 << 20}, "shrunk": ["a", "b"],
                 "train": {"skipped": "no ffmpeg"}}
    r = json.loads(record(rehearsal, tmp_path).read_text())
    assert r["machine"]["load_average_1min"] == 1.5 and r["load_average_end"] == 3.25
    assert r["seconds"] == rehearsal["seconds"] and r["cpu_seconds"] == rehearsal["cpu_seconds"]
    text = table(r)
    assert "6.7 min wall, 9.0 min CPU" in text and "load average 1.5 at the start, 3.25 at the end" in text
    assert [line.split() for line in text.splitlines() if "features" in line] == [["features", "300", "500"]]
    assert "work 3 MiB" in text and "skipped (no ffmpeg)" in text


def test_dry_run_names_a_profile_file_as_given_and_writes_nothing(tmp_path, monkeypatch):
    """`repro rehearse --profile FILE --dry-run`: the file's path as given and its name, the rehearsal's
    folders, sizes, outputs and price; nothing written. A profile of the synthetic corpus is refused."""
    from repro.cli import main

    monkeypatch.chdir(tmp_path)
    for var in ("REPRO_WORK", "REPRO_RESULTS", "REPRO_FIGURES"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yaml").write_text("extends: fast\nname: mine\n")
    (tmp_path / "artifacts" / "bench").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "artifacts" / "bench" / "rehearsal.json",
                tmp_path / "artifacts" / "bench")
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["rehearse", "--profile", "profiles/mine.yaml", "--dry-run", "--no-train"])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert out[0] == "rehearsal plan of profile file profiles/mine.yaml, named 'mine' (nothing is run or written now)"
    assert out[1].startswith("rehearsal profile 'rehearse-mine': work/rehearse-mine/")
    assert any(line.startswith("  corpus sizes (repro.rehearse.corpora.Sizes): sentence_words") for line in out)
    assert "repro train: skipped (--no-train)" in out
    assert out[-1].startswith("price: about ") and "CPU-minutes" in out[-1], out[-1]
    assert sorted(tmp_path.rglob("*")) == before
    result = CliRunner().invoke(main, ["rehearse", "--profile", "smoke", "--dry-run"])
    assert result.exit_code != 0 and "smoke: corpus.kind is 'synthetic'" in result.output, result.output
