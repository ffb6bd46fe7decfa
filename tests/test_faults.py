"""Faults provoked the way a user meets them, through the command line (docs/FAULTS.md lists them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro.cli import main

ROOT = Path(__file__).resolve().parents[1]

PROFILE = """
name: faultprof
description: one tiny model, one task
seed: 0
corpus:
  kind: synthetic
  synthetic: {speakers: 14, asv_speakers: 4, asv_dev_speakers: 2, dev_speakers: 2, test_speakers: 2,
              pr_per_speaker: 1, ks_repeats: 1, ks_unknown_per_speaker: 1, ks_silence_per_speaker: 1,
              ic_per_speaker: 1, sid_per_speaker: 3, er_per_style: 1, asv_per_speaker: 3}
models: {speech_ssl: [tiny-hubert], speaker_ssl: [], speaker_sup: []}
tasks: [KS]
extraction: {device: cpu, max_batch_seconds: 16}
probing:
  device: cpu
  projection_dim: 16
  head_dim: 16
  tasks:
    KS: {steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2}
cka: {task: KS, device: cpu}
"""


@pytest.fixture(scope="session")
def faultprof_corpus(tmp_path_factory):
    """The corpus of the faultprof profile, made once per session."""
    from repro.config import load_profile
    from repro.data.synth import make_corpus

    root = tmp_path_factory.mktemp("faultprof")
    (root / "faultprof.yaml").write_text(PROFILE)
    prof = load_profile(str(root / "faultprof.yaml"))
    return make_corpus(root / "corpus", prof.corpus.synthetic, prof.seed, progress=False)


@pytest.fixture
def faultprof(tmp_path, workspace_env, faultprof_corpus):
    """A one-model, one-task profile file with its corpus in place (a copy; roots under tmp_path)."""
    from conftest import copy_corpus

    prof = tmp_path / "faultprof.yaml"
    prof.write_text(PROFILE)
    info = copy_corpus(faultprof_corpus, workspace_env / "work" / "faultprof" / "corpus") / "corpus.json"
    stamp = info.stat().st_mtime_ns
    res = CliRunner().invoke(main, ["run", "--stage", "corpus", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 0 and info.stat().st_mtime_ns == stamp, res.output  # the copy is kept as it is
    return prof


def _repro(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m repro ARGS` in a child process (stdout and stderr together, text)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "repro", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=full)


def _stores(ws_root: Path) -> dict[str, str]:
    """Every complete store of the profile by split, and what opening it says ('ok' or the error)."""
    from repro.features.store import FeatureStore, StoreError

    out = {}
    task = ws_root / "work" / "faultprof" / "features" / "tiny-hubert" / "KS"
    for folder in sorted(task.iterdir() if task.is_dir() else []):
        if folder.name.startswith(".") or "." in folder.name:
            continue
        try:
            store = FeatureStore(folder)
            out[folder.name] = "ok" if len(set(store.ids)) == len(store.ids) else "duplicate utterances"
        except StoreError as err:
            out[folder.name] = str(err)
    return out


# --- one writer per output -------------------------------------------------------------------------

@pytest.mark.slow
def test_two_extractions_of_one_store_at_once_leave_complete_stores(faultprof, workspace_env):
    first = _repro("extract", "--profile", str(faultprof), "--quiet")
    time.sleep(0.3)
    second = _repro("extract", "--profile", str(faultprof), "--quiet")
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    assert "Traceback" not in "".join(outs)
    assert _stores(workspace_env) == {"dev": "ok", "test": "ok", "train": "ok"}
    # every store extracted once, by whichever run took its lock first (the later launch may win the
    # race on a loaded machine); the other waited for a lock (the model's or a store's) or found it done
    import re

    from repro.data.manifest import load_task

    extracted = [float(m.group(1)) if (m := re.search(r"([0-9.]+) s of audio extracted now", o)) else 0.0
                 for o in outs]
    assert all(m or "all up to date" in o for m, o in zip(extracted, outs)), outs
    audio = sum(u.duration for u in load_task(workspace_env / "work" / "faultprof" / "corpus", "KS"))
    assert abs(sum(extracted) - audio) <= 1.0, (extracted, audio, outs)


def _hold_store_lock(faultprof, split: str):
    from repro.util.locks import output_lock
    from repro.workspace import Workspace

    ws = Workspace.for_profile(str(faultprof))
    path = ws.store_dir("tiny-hubert", "KS", split)
    return output_lock(ws.lock_file(path), f"feature store {path}")


@pytest.mark.slow
def test_a_run_waits_for_the_holder_then_keeps_its_store(faultprof, workspace_env):
    with _hold_store_lock(faultprof, "dev"):
        child = _repro("extract", "--profile", str(faultprof), "--quiet", "-t", "KS")
        line = child.stdout.readline()  # the one line it prints while it waits
        assert line.startswith("waiting for feature store ") and "KS/dev: another run writes it (pid " in line
        assert f"pid {os.getpid()} " in line and "faultprof/.locks/" in line
        time.sleep(0.5)
        assert child.poll() is None  # still waiting
    rest = child.communicate(timeout=600)[0]
    assert child.returncode == 0, rest
    assert _stores(workspace_env) == {"dev": "ok", "test": "ok", "train": "ok"}


@pytest.mark.slow
def test_a_held_lock_past_the_timeout_is_one_line(faultprof, workspace_env):
    with _hold_store_lock(faultprof, "dev"):
        child = _repro("extract", "--profile", str(faultprof), "--quiet", env={"REPRO_LOCK_TIMEOUT": "1"})
        out = child.communicate(timeout=600)[0]
    assert child.returncode == 2, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("waiting for feature store")
    assert lines[-1].startswith("error: feature store ") and "another run still writes it after 1 s (pid " in lines[-1]
    assert "Traceback" not in out
    assert "dev" not in _stores(workspace_env)  # nothing was written in the holder's place


# --- inputs that drift -----------------------------------------------------------------------------

def _flip_audio_byte(path: Path) -> None:
    """One byte of the samples changed (the WAV stays valid: same header, same length)."""
    data = bytearray(path.read_bytes())
    data[-101] ^= 0x01
    path.write_bytes(bytes(data))


def test_audio_edited_after_its_manifest_is_refused_and_listed(faultprof, workspace_env, monkeypatch):
    from repro.data.manifest import load_task
    from repro.paper import checksums
    from repro.workspace import Workspace

    ws = Workspace.for_profile(str(faultprof))
    runner = CliRunner()
    monkeypatch.setattr(checksums, "RECORD_DIR", workspace_env / "record")
    assert runner.invoke(main, ["paper", "verify", "--profile", str(faultprof), "--record"]).exit_code == 0
    res = runner.invoke(main, ["data", "verify", "--profile", str(faultprof)])
    assert res.exit_code == 0 and "all match" in res.output, res.output

    victim = ws.corpus_dir / load_task(ws.corpus_dir, "KS", "dev")[0].path
    _flip_audio_byte(victim)
    res = runner.invoke(main, ["extract", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    error = res.output.strip().splitlines()[-1]
    assert error.startswith(f"error: {victim}: changed after its manifest recorded it (sha256 ")
    assert f"`repro data verify --path {ws.corpus_dir}` lists every such file" in error

    res = runner.invoke(main, ["data", "verify", "--profile", str(faultprof)])
    assert res.exit_code == 1
    assert f"damaged  {victim}: sha256 differs from the manifest's  (listed in KS.jsonl)" in res.output
    assert "0 missing, 1 damaged" in res.output
    res = runner.invoke(main, ["data", "verify", "--path", str(ws.corpus_dir)])
    assert res.exit_code == 1 and "1 damaged" in res.output

    res = runner.invoke(main, ["paper", "verify", "--profile", str(faultprof), "--portable"])
    name = f"corpus/{victim.relative_to(ws.corpus_dir).as_posix()}"
    assert res.exit_code == 1 and f"changed  {name}: the audio's sha256 differs from the one KS.jsonl records" \
        in res.output, res.output

    victim.unlink()
    res = runner.invoke(main, ["data", "verify", "--profile", str(faultprof)])
    assert res.exit_code == 1 and f"missing  {victim}" in res.output


def _extracted(faultprof) -> CliRunner:
    """A runner after `repro extract` has made the profile's stores."""
    runner = CliRunner()
    res = runner.invoke(main, ["extract", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 0, res.output
    return runner


def _probe_error(runner, faultprof) -> str:
    """The one-line error `repro probe` stops with (exit status 2, no traceback)."""
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    return res.output.strip().splitlines()[-1]


def test_store_bytes_flipped_after_completion_are_refused_with_the_rebuild_command(faultprof, workspace_env):
    from repro.features import store as store_module
    from repro.workspace import Workspace

    ws = Workspace.for_profile(str(faultprof))
    runner = _extracted(faultprof)
    store = ws.store_dir("tiny-hubert", "KS", "train")
    layer = store / "layer_05.bin"
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit of one float
    layer.write_bytes(bytes(data))
    store_module._VERIFIED.clear()  # as a new process would start
    assert _probe_error(runner, faultprof) == (
        f"error: {layer}: changed after the store was completed (its sha256 differs from the one "
        f"meta.json records); extract it again: `repro extract --profile {faultprof} "
        f"-m tiny-hubert -t KS` makes it")  # the profile as it was given: its file
    res = runner.invoke(main, ["extract", "--profile", str(faultprof), "--quiet", "-m", "tiny-hubert", "-t", "KS"])
    assert res.exit_code == 0 and "extracted now" in res.output, res.output  # the damaged store is remade
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 0, res.output


def test_a_store_without_checksums_is_refused_with_the_rebuild_command(faultprof, workspace_env):
    from repro.workspace import Workspace

    ws = Workspace.for_profile(str(faultprof))
    runner = _extracted(faultprof)
    meta_path = ws.store_dir("tiny-hubert", "KS", "dev") / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["checksums"]
    meta_path.write_text(json.dumps({**meta, "format": 1}))
    assert _probe_error(runner, faultprof) == (
        f"error: {meta_path.parent}: store format 1 (made before stores recorded checksums), expected 2; "
        f"extract it again: `repro extract --profile {faultprof} -m tiny-hubert -t KS` makes it")


# --- the operating system refuses to write ---------------------------------------------------------

def _inside(path, folder: Path) -> bool:
    return os.path.abspath(os.fsdecode(path)).startswith(str(folder))


def _refuse_creating(monkeypatch, folder: Path, code: int) -> None:
    """Every file or folder made under `folder` fails with `code` (EROFS: a read-only mount; as root,
    permission bits cannot make a folder read-only, so the system calls are made to refuse)."""
    real_open, real_mkdir = os.open, os.mkdir

    def fake_open(path, flags, *args, **kwargs):
        if _inside(path, folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if _inside(path, folder):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_a_read_only_results_folder_stops_the_probe_before_training(faultprof, workspace_env, monkeypatch):
    import errno

    runner = _extracted(faultprof)
    results = workspace_env / "results" / "faultprof"
    _refuse_creating(monkeypatch, results, errno.EROFS)
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines() == [
        f"error: {results}/probing: Read-only file system (errno 30); the file system is read-only: mount it writable, "
        "or point the output elsewhere ($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)"]
    assert not list((workspace_env / "work" / "faultprof").rglob("*.pt"))  # no probe was trained


def test_a_disk_that_fills_during_extraction_is_one_line(faultprof, workspace_env, monkeypatch):
    import errno

    store = workspace_env / "work" / "faultprof" / "features" / "tiny-hubert" / "KS" / "dev.partial"
    real_fsync = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if _inside(target, store) and Path(target).name.startswith("layer_"):  # the first batch's rows
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write on a full disk reports it
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    res = CliRunner().invoke(main, ["extract", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines() == [
        f"error: {store}: No space left on device (errno 28); the disk is full: free space there, or point the "
        "output elsewhere ($REPRO_WORK, $REPRO_RESULTS, $REPRO_FIGURES)"]


# --- the paper stage replaces its outputs as a whole ----------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_paper_stage_killed_while_rendering_leaves_the_previous_outputs(faultprof, workspace_env, monkeypatch):
    from repro.paper import stage

    runner = CliRunner()
    res = runner.invoke(main, ["run", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 0, res.output
    figures = workspace_env / "figures" / "faultprof"
    before = _files(figures)
    assert {"REPORT.md", "CHECKSUMS.sha256", "checks.json", "table-1.csv"} <= set(before)
    # results change (another learning rate's run), then the new rendering dies after its tables
    best = workspace_env / "results" / "faultprof" / "probing" / "tiny-hubert" / "KS" / "best.json"
    result = json.loads(best.read_text())
    best.write_text(json.dumps({**result, "test": 0.5}))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as SIGINT would, between the tables and the report

    with monkeypatch.context() as patched:
        patched.setattr(stage, "write_report", killed)
        res = runner.invoke(main, ["run", "--stage", "paper", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code != 0
    assert _files(figures) == before  # every old file as it was, no new table beside them
    assert not [p.name for p in figures.parent.iterdir() if p.name.startswith(".")]

    # a run killed outright (SIGKILL) leaves its temporaries: the next run removes them
    (figures.parent / ".faultprof.tmp-dead1" / "faultprof").mkdir(parents=True)
    (figures.parent / ".faultprof.tmp-dead1" / "faultprof" / "table-1.csv").write_text("half\n")
    (figures.parent / ".faultprof.old-dead2" / "previous").mkdir(parents=True)
    (figures / ".table-1.csv.tmp-dead3").write_text("half")
    res = runner.invoke(main, ["run", "--stage", "paper", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in figures.parent.iterdir()) == ["faultprof"]
    after = _files(figures)
    assert not [n for n in after if ".tmp-" in n]
    assert set(after) == set(before) and after["table-1.csv"] != before["table-1.csv"]
    assert "50.00" in after["table-1.csv"].decode()


# --- a profile's name is its own -------------------------------------------------------------------

def test_a_profile_that_extends_another_gets_its_own_folders(tmp_path, workspace_env):
    from repro.workspace import Workspace

    variant = tmp_path / "smoke-lr.yaml"
    variant.write_text("extends: smoke\nprobing: {layer_norm: true}\n")
    res = CliRunner().invoke(main, ["config", "show", "--profile", str(variant)])
    assert res.exit_code == 0 and res.output.startswith("name: smoke-lr\n"), res.output
    ws = Workspace.for_profile(str(variant))
    assert ws.results == workspace_env / "results" / "smoke-lr" and ws.work.name == "smoke-lr"
    named = tmp_path / "other.yaml"
    named.write_text("extends: smoke\nname: smoke-ln\nprobing: {layer_norm: true}\n")
    assert Workspace.for_profile(str(named)).figures.name == "smoke-ln"


@pytest.mark.parametrize("text", ["extends: smoke\nname: smoke\nprobing: {layer_norm: true}\n",
                                  "extends: fast\nname: full\n"])
def test_a_profile_file_that_takes_a_built_in_name_with_other_settings_is_refused(tmp_path, workspace_env, text):
    prof = tmp_path / "mine.yaml"
    prof.write_text(text)
    res = CliRunner().invoke(main, ["run", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 2
    name = text.split("name: ")[1].split()[0]
    assert res.output.strip() == (
        f"error: {prof}: its name '{name}' is the built-in profile's, whose folders (work/{name}, results/{name}, "
        f"paper_figures/{name}) it would overwrite with results of other settings; give it a name of its own "
        "(`name:` in the file, or rename the file)")
    assert not (workspace_env / "work").exists()


def test_a_copy_of_a_built_in_profile_may_keep_its_name(tmp_path):
    from repro.config import PROFILE_DIR, load_profile

    copy = tmp_path / "smoke.yaml"
    copy.write_text((PROFILE_DIR / "smoke.yaml").read_text())
    assert load_profile(str(copy)) == load_profile("smoke")


@pytest.mark.parametrize("name", ["../smoke", "a/b", ".hidden", ""])
def test_a_profile_name_that_is_not_a_folder_name_is_refused(tmp_path, name):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"extends: smoke\nname: '{name}'\n")
    res = CliRunner().invoke(main, ["config", "show", "--profile", str(prof)])
    assert res.exit_code == 2 and res.output.startswith(f"error: {prof}: key 'name' is {name!r}; ")


# --- values out of range ---------------------------------------------------------------------------

@pytest.mark.parametrize("change, key, allowed", [
    ("steps: -5", "probing.tasks.KS.steps", "is -5; allowed: >= 1"),
    ("lr_grid: []", "probing.tasks.KS.lr_grid", "has 0 item(s) []; it needs at least 1"),
    ("eval_every: 0", "probing.tasks.KS.eval_every", "is 0; allowed: >= 1"),
    ("batch_size: -4", "probing.tasks.KS.batch_size", "is -4; allowed: >= 1"),
    ("lr_grid: [0.01, -0.001]", "probing.tasks.KS.lr_grid[1]", "is -0.001; allowed: > 0"),
    ("lr_grid: [0.01, .nan]", "probing.tasks.KS.lr_grid[1]", "is nan; allowed: > 0"),
    ("lr_grid: [0.01, 0.01]", "probing.tasks.KS.lr_grid", "lists [0.01] more than once; list each value once"),
])
def test_a_budget_out_of_range_is_refused_at_load_time(tmp_path, workspace_env, change, key, allowed):
    budget = {"steps": "4", "batch_size": "4", "lr_grid": "[0.01]", "eval_every": "2"}
    name, value = change.split(": ", 1)
    budget[name] = value
    prof = tmp_path / "faultprof.yaml"
    prof.write_text(PROFILE.replace("{steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2}",
                                    "{" + ", ".join(f"{k}: {v}" for k, v in budget.items()) + "}"))
    res = CliRunner().invoke(main, ["run", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: {prof}: key '{key}' {allowed}"
    assert not (workspace_env / "work").exists()  # refused before any work


@pytest.mark.parametrize("override, message", [
    ("extraction: {max_batch_seconds: 0}", "key 'extraction.max_batch_seconds' is 0.0; allowed: > 0"),
    ("data: {er_valid_ratio: 1.5}", "key 'data.er_valid_ratio' is 1.5; allowed: in (0, 1)"),
    ("speaker_training: {supervised: {lr: -0.1}}", "key 'speaker_training.supervised.lr' is -0.1; allowed: > 0"),
    ("cka: {bootstrap: {confidence: 1.0}}", "key 'cka.bootstrap.confidence' is 1.0; allowed: in (0, 1)"),
    ("distributed: {timeout_minutes: -1}", "key 'distributed.timeout_minutes' is -1.0; allowed: > 0"),
    ("probing: {am_softmax: [0.4]}", "key 'probing.am_softmax' has 1 item(s) [0.4]; it needs exactly 2"),
])
def test_other_numeric_settings_out_of_range_are_refused(tmp_path, override, message):
    prof = tmp_path / "p.yaml"
    prof.write_text(f"extends: smoke\n{override}\n")
    res = CliRunner().invoke(main, ["config", "show", "--profile", str(prof)])
    assert res.exit_code == 2 and res.output.strip() == f"error: {prof}: {message}"


def test_every_numeric_setting_has_a_range():
    import dataclasses
    import typing

    from repro.config import schema

    def walk(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            base = typing.get_origin(inner[0]) or inner[0]
            if dataclasses.is_dataclass(inner[0]):
                yield from walk(inner[0])
            elif base is dict and dataclasses.is_dataclass(typing.get_args(inner[0])[1]):
                yield from walk(typing.get_args(inner[0])[1])
            elif base in (int, float) or (base is list and typing.get_args(inner[0])[0] in (int, float)):
                if f.name not in getattr(cls, "RANGES", {}) and "range" not in f.metadata:
                    yield f"{cls.__name__}.{f.name}"

    assert list(walk(schema.ProfileConfig)) == []


def test_learning_rates_with_the_same_rounded_tag_keep_their_own_results(faultprof, workspace_env):
    faultprof.write_text(PROFILE.replace("lr_grid: [0.01]", "lr_grid: [0.001, 0.0012]"))
    runner = CliRunner()
    res = runner.invoke(main, ["run", "--profile", str(faultprof), "--quiet", "--stage", "features",
                               "--stage", "probe"])
    assert res.exit_code == 0, res.output
    folder = workspace_env / "results" / "faultprof" / "probing" / "tiny-hubert" / "KS"
    assert sorted(p.name for p in folder.glob("lr-*.json") if "timing" not in p.name) == [
        "lr-1.2e-03.json", "lr-1e-03.json"]  # 0.001 keeps the name it always had
    assert json.loads((folder / "lr-1.2e-03.json").read_text())["lr"] == 0.0012
    assert [r["lr"] for r in json.loads((folder / "best.json").read_text())["sweep"]] == [0.001, 0.0012]
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet", "--lr", "-0.01"])
    assert res.exit_code == 2 and res.output.strip() == "error: --lr -0.01: a learning rate must be a finite number > 0"
