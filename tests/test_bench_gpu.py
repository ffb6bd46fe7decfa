"""The GPU calibration runs where only a stock CUDA PyTorch environment and the wheel folder's packages
are importable (every other package is blocked), writes its record section by section under its key,
and the projection uses a record only when it matches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repro.bench.gpu import CALIBRATION_KEY
from repro.bench.projection import gpu_step_seconds
from repro.bench.wheels import COLLECT, WHEELS

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "tests" / "stock_only.py"


def _stock_run(allowed: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(HOOK), ",".join(allowed), "--", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_calibration_runs_with_only_the_stock_set_and_the_wheels(tmp_path):
    done = _stock_run(list(WHEELS), "bench", "gpu", "--device", "cpu", "--tiny", "--steps", "1", "--out",
                      str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    for compiled in ("soundfile", "sentencepiece", "sklearn", "rapidfuzz"):
        assert compiled not in modules["loaded"]
    assert "soundfile" not in modules["loaded"] and "speechbrain" in modules["loaded"]
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["key"] == CALIBRATION_KEY and record["tiny"] is True
    assert record["sections"] == ["upstream", "probe_groups", "pooled_steps", "ecapa_overhead", "wavlm_attention"]
    paths = record["wavlm_attention"]
    assert set(paths) == {"eager", "sdpa", "flex"} and not any("error" in c for c in paths.values()), paths
    assert paths["eager"]["layer_change_vs_eager"]["max"] == 0 and paths["sdpa"]["layer_change_vs_eager"]["max"] < 1e-5
    for model in ("wavlm-base-plus", "hubert-base", "ecapa-sup-speechbrain", "ecapa-dino-wespeaker"):
        for task in ("PR", "SID", "ASV"):
            case = record["probe_groups"][model][task]
            assert case["float32"]["seconds_per_step"] > 0 and case["float32"]["timed"] == 1
        assert set(record["pooled_steps"][model]) == {"KS", "ER"}
    assert {"python", "torch", "transformers", "commit", "device_name"} <= set(record)


def test_a_missing_wheel_is_one_line_naming_the_package_and_the_command(tmp_path):
    done = _stock_run([w for w in WHEELS if w != "speechbrain"], "bench", "gpu", "--device", "cpu", "--tiny",
                      "--out", str(tmp_path))
    assert done.returncode != 0
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "speechbrain" in error[0] and COLLECT in error[0], done.stderr[-2000:]
    assert not (tmp_path / "gpu.json").exists()


def _record(tmp_path, **fields):
    record = {"key": CALIBRATION_KEY, "device": "cuda:0", "tiny": False, "device_name": "NVIDIA H100",
              "commit": "abc", "transformers": "5.0", "machine": {"python": "3.12", "torch": "2.9.1"},
              "probe_groups": {"hubert-base": {"PR": {"k": 3, "float32": {"seconds_per_step": 0.25},
                                                       "bf16": {"seconds_per_step": 0.1}}}},
              "ecapa_overhead": {"ecapa-sup-speechbrain": {"seconds": 0.004},
                                 "ecapa-dino-wespeaker": {"seconds": 0.002}},
              "pooled_steps": {"hubert-base": {"KS": {"seconds": 0.0007}}}}
    record.update(fields)
    (tmp_path / "gpu.json").write_text(json.dumps(record))


def test_the_projection_uses_a_gpu_record_only_under_the_current_key(tmp_path):
    _record(tmp_path)
    steps, notes, inputs = gpu_step_seconds(tmp_path)
    assert steps[("hubert-base", "PR", "float32")].value == 0.25
    assert steps[("hubert-base", "PR", "bf16")].kind == "measured" and "NVIDIA H100" in notes[0]
    assert inputs["ecapa_overhead_ms"].value == pytest.approx(3.0) and inputs["ecapa_overhead_ms"].kind == "measured"
    _record(tmp_path, key="calibration-v1+code-paths-v0")
    steps, notes, inputs = gpu_step_seconds(tmp_path)
    assert steps == {} == inputs and len(notes) == 1 and "calibration-v1+code-paths-v0" in notes[0]
    assert "ignored" in notes[0]
    _record(tmp_path, device="cpu", tiny=True)
    steps, notes, inputs = gpu_step_seconds(tmp_path)
    assert steps == {} and "toy sizes" in notes[0]


def test_measured_probe_group_steps_replace_the_counted_training_terms(tmp_path):
    from test_bench_scale import _model

    from repro.bench.costmodel import Input

    step = {("hubert-base", "PR", "float32"): Input(0.25, "s", "measured", "gpu.json on NVIDIA H100")}
    m = _model(tasks=["PR"])
    m.step_seconds = step
    terms = [t for t in m.terms() if t.model == "hubert-base" and t.precision == "float32"]
    measured = [t for t in terms if t.kind == "measured"]
    b = m.profile.probing.tasks["PR"]
    assert len(measured) == 1 and measured[0].hours == pytest.approx(b.steps * b.grad_accum * 0.25 / 3600)
    assert "NVIDIA H100" in measured[0].source
    assert not [t for t in terms if t.what.endswith(", train") and t.kind != "measured"
                and not t.what.startswith("loss reads")]
