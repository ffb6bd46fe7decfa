"""`repro cka` end to end: tiny models extracted over a tiny synthetic corpus, then CKA from their stores."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from repro.cli import main
from repro.config import load_profile
from repro.features.store import FeatureStore
from repro.similarity import linear_cka
from repro.workspace import Workspace

PROFILE = """
name: ckaprof
description: CKA test profile
seed: 0
corpus: {{kind: synthetic}}
models: {{speech_ssl: [tiny-hubert], speaker_ssl: [], speaker_sup: [rand-ecapa]}}
tasks: [{tasks}]
extraction: {{device: cpu, max_batch_seconds: 16}}
cka: {{task: PR, split: train, device: cpu, batch_frames: 300, {extra}}}
"""
A, B = "tiny-hubert", "rand-ecapa"


def write_profile(path, tasks="PR", **extra):
    text = ", ".join(f"{k}: {v}" for k, v in {"bootstrap": "{blocks: 4, resamples: 50}", **extra}.items())
    path.write_text(PROFILE.format(extra=text, tasks=tasks))
    return str(path)


@pytest.fixture(scope="module")
def extracted(tiny_corpus, tmp_path_factory):
    """Work folder with both tiny models extracted over the PR task (module-wide, copied per test)."""
    root = tmp_path_factory.mktemp("cka-work")
    prof = write_profile(root / "ckaprof.yaml")
    mp = pytest.MonkeyPatch()
    for var, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        mp.setenv(var, str(root / sub))
    try:
        ws = Workspace.for_profile(prof)
        shutil.copytree(tiny_corpus, ws.corpus_dir)
        res = CliRunner().invoke(main, ["extract", "--profile", prof, "--quiet", "-t", "PR"])
        assert res.exit_code == 0, res.output
    finally:
        mp.undo()
    return root / "work"


@pytest.fixture
def env(extracted, workspace_env, monkeypatch):
    work = workspace_env / "work"
    # the stores alone: each test's profile file is another file (`repro.ownership`), made the folders' owner
    shutil.copytree(extracted, work, ignore=shutil.ignore_patterns(".profile.json"))
    return workspace_env


def run(*args):
    res = CliRunner().invoke(main, list(args))
    return res


def aligned_reference(ws, a, b, split="train"):
    """Independent pairing: ECAPA frames averaged in pairs, both trimmed, concatenated over sorted ids."""
    sa, sb = FeatureStore(ws.store_dir(a, "PR", split)), FeatureStore(ws.store_dir(b, "PR", split))
    xs, ys = [[] for _ in sa.layers], [[] for _ in sb.layers]
    for u in sorted(sa.ids):
        la, lb = sa.utterance(u), sb.utterance(u)
        t = min(min(x.shape[0] for x in la), min(y.shape[0] // 2 for y in lb))
        for acc, x in zip(xs, la):
            acc.append(np.asarray(x[:t], np.float64))
        for acc, y in zip(ys, lb):
            acc.append(np.asarray(y[: 2 * t], np.float64).reshape(t, 2, -1).mean(1))
    return [np.concatenate(x) for x in xs], [np.concatenate(y) for y in ys]


def test_cross_model_cka_matches_an_independent_computation_and_reruns_are_skipped(env, tmp_path):
    prof = write_profile(tmp_path / "ckaprof.yaml")
    ws = Workspace.for_profile(prof)
    res = run("cka", "--profile", prof, "--models", A, B, "--quiet")
    assert res.exit_code == 0, res.output
    npz, js = ws.results / "cka" / f"{A}__{B}.npz", ws.results / "cka" / f"{A}__{B}.json"
    assert "written" in res.output and str(npz) in res.output
    data, meta = np.load(npz), json.loads(js.read_text())
    xs, ys = aligned_reference(ws, A, B)
    want = np.array([[linear_cka(x, y) for y in ys] for x in xs])
    assert data["cka"].shape == (13, 5)
    np.testing.assert_allclose(data["cka"], want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(data["cka_debiased"], [[linear_cka(x, y, True) for y in ys] for x in xs], atol=1e-9)
    assert np.all(data["ci_low"] <= data["ci_high"]) and np.all(np.isfinite(data["ci_low"]))
    assert list(data["layers_b"]) == meta["layers"]["b"] == ["tdnn", "res2net1", "res2net2", "res2net3", "mfa"]
    stores = [FeatureStore(ws.store_dir(m, "PR", "train")) for m in (A, B)]
    assert meta["models"] == [A, B] and meta["items"] == xs[0].shape[0]
    assert meta["provenance"]["inputs"] == {"a": stores[0].key, "b": stores[1].key}
    assert meta["corpus"] == {"profile": "ckaprof", "kind": "synthetic", "task": "PR", "split": "train",
                              "utterances": len(stores[0])}
    assert meta["alignment"] == {"alignment": "average", "frame_rate": 50.0, "factors": {"a": [1] * 13, "b": [2] * 5}}
    assert meta["subsampling"]["applied"] is False and meta["level"] == "frame" and meta["seed"] == 0
    assert meta["bootstrap"]["blocks"] == 4 and sum(meta["bootstrap"]["utterances_per_block"]) == len(stores[0])
    assert meta["cka"][0][0] == pytest.approx(float(want[0, 0]), abs=1e-6)
    # the same inputs: skipped, files untouched; forced: the same bytes again
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (npz, js)}
    res = run("cka", "--profile", prof, "--models", A, B, "--quiet")
    assert res.exit_code == 0 and "up to date" in res.output
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (npz, js)} == before
    res = run("cka", "--profile", prof, "--models", A, B, "--quiet", "--force")
    assert res.exit_code == 0 and "written" in res.output
    assert {p: p.read_bytes() for p in (npz, js)} == {p: v[0] for p, v in before.items()}
    # a changed setting changes the config hash: recomputed
    prof2 = write_profile(tmp_path / "ckaprof.yaml", max_frames=500, seed=3)
    res = run("cka", "--profile", prof2, "--models", A, B, "--quiet")
    assert res.exit_code == 0 and "written" in res.output
    meta2 = json.loads(js.read_text())
    assert meta2["items"] == 500 and meta2["subsampling"] == {"max_frames": 500, "available": xs[0].shape[0],
                                                               "seed": 3, "applied": True}
    assert meta2["config_hash"] != meta["config_hash"]
    assert np.max(np.abs(np.load(npz)["cka"] - want)) < 0.2  # a subset estimates the same similarities


def test_stage_runs_every_pair_within_and_across_models(env, tmp_path):
    # the profile probes only KS: the stage extracts the CKA task's missing stores itself
    prof = write_profile(tmp_path / "ckaprof.yaml", tasks="KS", level="utterance", estimator="debiased")
    ws = Workspace.for_profile(prof)
    shutil.rmtree(ws.store_dir(B, "PR", "train"))
    res = run("run", "--profile", prof, "--stage", "cka", "--quiet")
    assert res.exit_code == 0, res.output
    assert (ws.store_dir(B, "PR", "train") / "meta.json").is_file()
    assert not ws.store_dir(A, "KS", "train").exists()
    names = sorted(p.name for p in (ws.results / "cka").iterdir())
    assert names == sorted(f"{a}__{b}.{ext}" for a, b in ((A, A), (B, B), (A, B)) for ext in ("npz", "json"))
    within = np.load(ws.results / "cka" / f"{A}__{A}.npz")
    np.testing.assert_allclose(np.diag(within["cka_biased"]), 1.0, atol=1e-12)
    np.testing.assert_array_equal(within["cka"], within["cka_debiased"])
    np.testing.assert_allclose(within["cka"], within["cka"].T, atol=1e-12)
    meta = json.loads((ws.results / "cka" / f"{A}__{B}.json").read_text())
    store = FeatureStore(ws.store_dir(A, "PR", "train"))
    assert meta["level"] == "utterance" and meta["items"] == len(store) and meta["alignment"] is None
    pooled = [np.stack([np.asarray(store.layer(l, u), np.float64).mean(0) for u in sorted(store.ids)])
              for l in range(3)]
    np.testing.assert_allclose(within["cka_biased"][:3, :3],
                               [[linear_cka(x, y) for y in pooled] for x in pooled], atol=1e-10)


def test_mismatched_or_missing_stores_are_one_line_errors(env, tmp_path):
    prof = write_profile(tmp_path / "ckaprof.yaml")
    ws = Workspace.for_profile(prof)
    train, dev = ws.store_dir(B, "PR", "train"), ws.store_dir(B, "PR", "dev")
    shutil.rmtree(train)
    shutil.copytree(dev, train)
    res = run("cka", "--profile", prof, "--models", A, B, "--quiet")
    assert res.exit_code == 2 and "do not hold the same utterances" in res.output and "Traceback" not in res.output
    shutil.rmtree(train)
    res = run("cka", "--profile", prof, "--models", A, B, "--quiet")
    assert res.exit_code == 2
    assert f"{train}: no complete feature store here" in res.output
    assert f"repro extract --profile {prof} -m {B} -t PR" in res.output  # the profile as given: its file
    assert not (ws.results / "cka" / f"{A}__{B}.npz").exists()
    prof = write_profile(tmp_path / "ckaprof.yaml", bootstrap="{blocks: 500}")
    res = run("cka", "--profile", prof, "--models", A, A, "--quiet")
    assert res.exit_code == 2 and "exceeds the" in res.output
    prof = write_profile(tmp_path / "ckaprof.yaml", bootstrap="{blocks: 1}", max_frames=-1)
    res = run("cka", "--profile", prof, "--models", A, A, "--quiet")  # ranges: refused as the profile loads
    assert res.exit_code == 2 and "key 'cka.max_frames' is -1; allowed: >= 0" in res.output
    prof = write_profile(tmp_path / "ckaprof.yaml", bootstrap="{blocks: 1, confidence: 1.5}")
    res = run("cka", "--profile", prof, "--models", A, A, "--quiet")
    assert res.exit_code == 2 and "key 'cka.bootstrap.confidence' is 1.5; allowed: in (0, 1)" in res.output
    prof = write_profile(tmp_path / "ckaprof.yaml", bootstrap="{blocks: 1}")
    res = run("cka", "--profile", prof, "--models", A, A, "--quiet")
    assert res.exit_code == 2 and "cka.bootstrap.blocks = 1" in res.output


def test_profiles_carry_a_cka_section():
    smoke, full, fast = (load_profile(p).cka for p in ("smoke", "full", "fast"))
    assert (smoke.task, smoke.split, smoke.level, smoke.alignment) == ("PR", "test", "frame", "average")
    assert smoke.bootstrap.blocks > 1 and smoke.device == "cpu" and smoke.max_frames > 0
    assert full.max_frames == 0 and full.bootstrap.blocks == 0 and full.dtype == "float64"
    assert 0 < fast.max_frames and fast.task == full.task
