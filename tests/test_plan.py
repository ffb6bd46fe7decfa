"""`repro run --dry-run`: the plan of a run (complete / stale / missing per output) and its price,
reading files only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro.cli import main
from repro.config import load_profile
from repro.plan import lines, make_plan
from repro.probing.runner import lr_tag
from repro.provenance import probe_key
from repro.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "artifacts" / "bench"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty project folder as the current folder, with the cost model's record."""
    monkeypatch.chdir(tmp_path)
    for var in ("REPRO_WORK", "REPRO_RESULTS", "REPRO_FIGURES", "REPRO_DATA"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "artifacts" / "bench").mkdir(parents=True)
    shutil.copy(BENCH / "projection.json", tmp_path / "artifacts" / "bench" / "projection.json")
    return tmp_path


def test_dry_run_without_data_names_the_corpora_and_writes_nothing(folder):
    before = _tree(folder)
    result = CliRunner().invoke(main, ["run", "--profile", "fast", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert _tree(folder) == before  # no folder, no lock, no corpus made
    out = result.output
    assert "make data PROFILE=fast" in out
    assert "librispeech/train-clean-100" in out and "IEMOCAP" in out and "Fluent Speech Commands" in out
    assert "corpus: 0 complete, 0 stale, 1 missing" in out
    assert "probe: 0 complete, 0 stale, 52 missing" in out  # 4 models x 6 tasks x (1 lr + best) + 4 ASV-IDT
    # nothing done yet: the price of what remains is the whole profile's projection
    record = json.loads((BENCH / "projection.json").read_text())["profiles"]["fast"]["hours"]
    line = next(l for l in out.splitlines() if l.startswith("remaining:"))
    assert f"{record['float32']:.2f} GPU-hours float32" in line and f"{record['bf16']:.2f} GPU-hours bf16" in line


def _probe_result(ws: Workspace, model: str, task: str, lr: float, settings: str, budget: dict) -> Path:
    path = ws.probe_dir(model, task) / f"{lr_tag(lr)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"provenance": {"format": 1, "settings": settings, "inputs": {}}, "budget": budget}))
    return path


def test_complete_and_stale_probes_are_told_apart_and_priced(folder):
    from repro.config.typed import to_dict

    ws = Workspace.for_profile("fast")
    full = load_profile("full")
    budget = to_dict(ws.profile.probing.tasks["KS"])
    empty = make_plan(ws, ["probe"], BENCH)
    # KS of WavLM complete; IC of WavLM made under other steps; PR of HuBERT made by the full profile
    done = _probe_result(ws, "wavlm-base-plus", "KS", 1e-4, probe_key(ws.profile, "wavlm-base-plus", "KS", 1e-4),
                         budget)
    ic_budget = {**to_dict(ws.profile.probing.tasks["IC"]), "steps": 500}
    stale = _probe_result(ws, "wavlm-base-plus", "IC", 1e-4, "0" * 16, ic_budget)
    other = _probe_result(ws, "hubert-base", "PR", 1e-2, probe_key(full, "hubert-base", "PR", 1e-2), {})
    plan = make_plan(ws, ["probe"], BENCH)
    by_path = {o.path: o for o in plan.outputs}
    assert by_path[done].status == "complete"
    assert by_path[stale].status == "stale" and "probing.tasks.IC.steps: 500 -> 20000" in by_path[stale].detail
    assert by_path[other].status == "stale" and "made under profile 'full'" in by_path[other].detail
    assert plan.counts() == {"complete": 1, "stale": 2, "missing": 49}
    # the complete probe's hours are no longer in the price; the stale ones still are
    assert 0 < plan.hours["float32"] < empty.hours["float32"]
    text = "\n".join(lines(plan, ws))
    assert "probe: 1 complete, 2 stale, 49 missing" in text and str(stale) in text


def test_price_needs_the_projection_record(folder):
    os.remove(folder / "artifacts" / "bench" / "projection.json")
    plan = make_plan(Workspace.for_profile("fast"), ["probe"], folder / "artifacts" / "bench")
    assert plan.hours is None
    assert "make bench" in "\n".join(lines(plan, Workspace.for_profile("fast")))


def test_the_plan_judges_the_corpus_and_trained_models_by_their_stamps(folder):
    """The plan reads the same stamps the stages skip on: complete when the recorded stamp is the one a
    run would write now, stale with the reason otherwise."""
    from repro import recipes
    from repro.data.synth import corpus_stamp

    ws = Workspace.for_profile("smoke")
    info = ws.corpus_dir / "corpus.json"
    info.parent.mkdir(parents=True)
    stamp = corpus_stamp(ws.profile.corpus.synthetic, ws.profile.seed)
    info.write_text(json.dumps({"provenance": stamp.as_dict()}))
    model = ws.models_dir / "tiny-ecapa-sup" / "model.json"
    model.parent.mkdir(parents=True)
    model.write_text(json.dumps({"provenance": recipes.stamp(ws, "supervised").as_dict()}))

    def status(path: Path) -> tuple[str, str]:
        [out] = [o for o in make_plan(ws, ["corpus", "train"], BENCH).outputs if path in (o.path, o.path / "corpus.json")]
        return out.status, out.detail

    assert status(info) == ("complete", "") and status(model) == ("complete", "")
    info.write_text(json.dumps({"provenance": {**stamp.as_dict(), "inputs": {**stamp.inputs, "generator": 2}}}))
    assert status(info) == ("stale", "made from other inputs (generator)")
    info.write_text('{"config_hash": "0123456789abcdef"}')
    assert status(info) == ("stale", "it has no stamp (made by an earlier version)")
    model.write_text('{"provenance": ')
    assert status(model) == ("stale", "its stamp cannot be read (damaged)")
