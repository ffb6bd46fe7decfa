"""Faults provoked the way a user meets them, through the command line (docs/FAULTS.md lists them)."""

from __future__ import annotations

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


@pytest.fixture
def faultprof(tmp_path, workspace_env):
    """A one-model, one-task profile file with its corpus made (roots under tmp_path)."""
    prof = tmp_path / "faultprof.yaml"
    prof.write_text(PROFILE)
    res = CliRunner().invoke(main, ["run", "--stage", "corpus", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 0, res.output
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

def test_two_extractions_of_one_store_at_once_leave_complete_stores(faultprof, workspace_env):
    first = _repro("extract", "--profile", str(faultprof), "--quiet")
    time.sleep(0.3)
    second = _repro("extract", "--profile", str(faultprof), "--quiet")
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    assert "Traceback" not in "".join(outs)
    assert _stores(workspace_env) == {"dev": "ok", "test": "ok", "train": "ok"}
    assert any("waiting for feature store" in o and "another run writes it" in o for o in outs), outs


def _hold_store_lock(faultprof, split: str):
    from repro.util.locks import output_lock
    from repro.workspace import Workspace

    ws = Workspace.for_profile(str(faultprof))
    path = ws.store_dir("tiny-hubert", "KS", split)
    return output_lock(ws.lock_file(path), f"feature store {path}")


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
