import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro.cli import main

TINY_PROFILE = """
name: tinyprof
description: test profile
seed: 0
corpus:
  kind: synthetic
  synthetic: {speakers: 14, asv_speakers: 4, asv_dev_speakers: 2, dev_speakers: 2, test_speakers: 2,
              pr_per_speaker: 1, ks_repeats: 1, ks_unknown_per_speaker: 1, ks_silence_per_speaker: 1,
              ic_per_speaker: 1, sid_per_speaker: 3, er_per_style: 1, asv_per_speaker: 3}
models: {speech_ssl: [tiny-hubert], speaker_ssl: [], speaker_sup: [tiny-ecapa-sup]}
tasks: [KS, ASV]
extraction: {device: cpu, max_batch_seconds: 16}
probing:
  device: cpu
  projection_dim: 16
  head_dim: 16
  xvector_dims: [16, 16, 16, 16, 32]
  xvector_embedding_dim: 16
  tasks:
    KS: {steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2}
    ASV: {steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2, optimizer: adamw}
speaker_training:
  pipeline_recipes: [supervised]
  train_task: ASV
  train_split: train
  eval_split: test
  device: cpu
  num_workers: 0
  require_eer_improvement: false
  supervised: {output_name: tiny-ecapa-sup, epochs: 1, batch_size: 5, chunk_seconds: 1.0, augmentations: [],
               arch: {channels: [16, 16, 16, 16, 48], lin_neurons: 48, attention_channels: 8, se_channels: 8,
                      res2net_scale: 2}}
cka: {task: KS, device: cpu}
"""


@pytest.mark.slow  # the whole pipeline twice (`make test-fast` leaves it out)
def test_run_profile_end_to_end(tmp_path, workspace_env, monkeypatch):
    prof = tmp_path / "tinyprof.yaml"
    prof.write_text(TINY_PROFILE)
    runner = CliRunner()
    res = runner.invoke(main, ["run", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 0, res.output
    from repro.paper import checksums
    from repro.workspace import Workspace

    first = checksums.compute(Workspace.for_profile(str(prof)))
    # the run ends with a short summary: seconds per stage, one line per claim check, where the report is
    summary = res.output[res.output.index("[tinyprof] summary"):].splitlines()
    for stage in ("corpus", "train", "features", "cka", "probe", "paper", "all"):
        assert any(re.fullmatch(rf"  {stage} +\d+\.\d", line) for line in summary), (stage, summary)
    claims = [line.split() for line in summary if re.match(r"  C\d", line)]
    assert [c[0] for c in claims] == ["C1", "C2a", "C2b", "C3a", "C3b", "C3c", "C4a", "C4b"]
    assert {c[1] for c in claims} <= {"PASS", "FAIL", "NOT-RUN"}
    report = Path(summary[-1].removeprefix("  report: "))
    assert summary[-1].startswith("  report: ") and report.is_file() and report.name == "REPORT.md"
    assert {"figures/table-1.csv", "figures/figure-3.pdf", "corpus/manifests/KS.jsonl",
            "results/cka/tiny-hubert__tiny-ecapa-sup.json"} <= set(first)
    # the whole pipeline again in other folders: every output byte-identical
    for var, sub in (("REPRO_WORK", "work2"), ("REPRO_RESULTS", "results2"), ("REPRO_FIGURES", "figures2")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    res = runner.invoke(main, ["run", "--profile", str(prof)])  # with progress, into a stream that is no terminal
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output  # progress comes as whole lines (repro.util.progress)
    assert checksums.compute(Workspace.for_profile(str(prof))) == first
    for var, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        monkeypatch.setenv(var, str(workspace_env / sub))
    feats = workspace_env / "work" / "tinyprof" / "features"
    stores = sorted(str(p.parent.relative_to(feats)) for p in feats.rglob("meta.json"))
    assert stores == [f"{m}/{t}/{s}" for m in ("tiny-ecapa-sup", "tiny-hubert")
                      for t, splits in (("ASV", ("dev", "test", "train")), ("KS", ("dev", "test", "train")))
                      for s in splits]
    meta = json.loads((feats / "tiny-ecapa-sup" / "ASV" / "test" / "meta.json").read_text())
    assert meta["embedding_dim"] == 48 and len(meta["layers"]) == 5
    results = workspace_env / "results" / "tinyprof" / "probing"
    assert sorted(p.relative_to(results).as_posix() for p in results.rglob("best.json")) == [
        f"{m}/{t}/best.json" for m in ("tiny-ecapa-sup", "tiny-hubert") for t in ("ASV", "KS")]
    assert (results / "tiny-ecapa-sup" / "ASV-IDT.json").is_file()
    # second run: everything is complete, nothing is redone
    stamp = (feats / "tiny-hubert" / "KS" / "train" / "meta.json").stat().st_mtime_ns
    res = runner.invoke(main, ["extract", "--profile", str(prof), "--quiet", "-m", "tiny-hubert"])
    assert res.exit_code == 0 and "all up to date" in res.output, res.output
    assert (feats / "tiny-hubert" / "KS" / "train" / "meta.json").stat().st_mtime_ns == stamp


def test_user_errors_are_one_line_without_traceback(tmp_path, workspace_env):
    runner = CliRunner()
    res = runner.invoke(main, ["config", "show", "--profile", "nope"])
    assert res.exit_code == 2 and res.output.startswith("error: unknown profile 'nope'")
    assert "Traceback" not in res.output
    prof = tmp_path / "p.yaml"
    prof.write_text(TINY_PROFILE.replace("[tiny-hubert]", "[tiny-hubbert]"))
    res = runner.invoke(main, ["extract", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 2 and "unknown model 'tiny-hubbert'; known models:" in res.output


def test_config_explain_lists_open_settings_with_reasons():
    res = CliRunner().invoke(main, ["config", "explain", "--profile", "full"])
    assert res.exit_code == 0
    assert "models.speech_ssl = ['wavlm-base-plus', 'hubert-base']" in res.output
    assert "[open]" in res.output


def test_every_command_has_help():
    runner = CliRunner()
    names = sorted(main.commands)
    assert {"run", "config", "data", "models", "extract", "probe", "paper", "train", "cka", "bench"} <= set(names)
    for name in names:
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, name


def test_stage_names_match_the_pipeline():
    from repro.cli import run
    from repro.pipeline import STAGES

    option = next(p for p in run.params if p.name == "stages")
    assert all(stage in option.help for stage in STAGES)
    res = CliRunner().invoke(main, ["run", "--stage", "features2"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip() == f"error: unknown stage(s) features2; stages: {', '.join(STAGES)}"
