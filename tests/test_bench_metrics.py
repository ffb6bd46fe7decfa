"""The metrics benchmark runs on small inputs, writes a well-formed record whose figures add up, and
docs/PERFORMANCE.md shows it (no timing is asserted)."""

import json
import types

import pytest

from repro.bench import run_benchmarks
from repro.bench.metrics import DEV, TRAIN_ITEM_SECONDS, Sizes, baseline_error_rate, eval_share, phone_pairs
from repro.bench.report import write_performance
from repro.metrics import error_rate


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    from conftest import TINY_HF

    out = tmp_path_factory.mktemp("bench")
    lines = []
    results = run_benchmarks(["metrics"], out, echo=lines.append, options={"metrics": {
        "sizes": Sizes(utterances=40, trials=400, trial_utterances=60, embedding_dim=8), "repeats": 1,
        "model_config": TINY_HF}})
    return out, results["metrics"], lines


def test_record_is_json_and_old_and_new_agree(record):
    out, r, lines = record
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(r))
    assert lines[-1] == f"written: {out / 'metrics.json'}" and "PER, 40 utterances" in lines[0]
    assert r["per"]["utterances"] == 40 and 0.05 < r["per"]["per"] < 0.15
    assert r["decode"]["utterances"] == 40 and r["decode"]["batches"] == 3 and r["decode"]["hypothesis_phones"] > 0
    assert r["eer"]["trials"] == 400 and r["eer"]["max_abs_difference"] <= 1e-12 and 0 < r["eer"]["eer"] < 0.5
    assert r["trials"]["max_abs_difference"] <= 1e-12 and r["trials"]["utterances"] == 60
    for case in (r["per"], r["decode"], r["eer"], r["trials"], r["trials"]["score_trials"]):
        assert case["speedup"] == pytest.approx(case["old"]["wall_s"] / case["new"]["wall_s"])
        assert case["speedup_cpu"] == pytest.approx(case["old"]["cpu_s"] / max(case["new"]["cpu_s"], 1e-12))


def test_evaluation_share_adds_up(record):
    _, r, _ = record
    s = r["share"]
    assert s["items_per_batch"] == 1 and s["flops_per_audio_second"] > 0
    assert s["budget"] == {"steps": 100000, "eval_every": 1000, "batch_size": 16, "grad_accum": 2, "evaluations": 100}
    m = s["measured"]
    assert m["train_between_evals_s"] == pytest.approx(1000 * 32 * s["train_seconds_per_item"])
    assert m["dev_forward_s"] == pytest.approx(DEV["utterances"] * s["dev_seconds_per_item"])
    for k in ("old", "new"):
        host = s["host"][k]
        assert host["score_s"] == pytest.approx(r["per"][k]["cpu_s"] * DEV["utterances"] / 40)
        assert host["decode_s"] == pytest.approx(r["decode"][k]["cpu_s"] * DEV["utterances"] / 40)
        assert m[k]["eval_s"] == pytest.approx(m["dev_forward_s"] + host["decode_s"] + host["score_s"])
        assert m[k]["share"] == pytest.approx(m[k]["eval_s"] / (m[k]["eval_s"] + m["train_between_evals_s"]))
    amp = s["assumed_gpu"]["autocast"]
    assert amp["tflops"] == 200.0
    assert amp["train_between_evals_s"] == pytest.approx(1000 * 32 * TRAIN_ITEM_SECONDS * s["flops_per_audio_second"] / 200e12)


def test_evaluation_share_by_hand():
    costs = {"train_seconds_per_item": 0.5, "dev_seconds_per_item": 0.1, "flops_per_audio_second": 1e12}
    per = {"utterances": DEV["utterances"], "old": {"cpu_s": 9.0}, "new": {"cpu_s": 0.0}}
    decode = {"utterances": DEV["utterances"], "argmax_cpu_s": 0.5, "old": {"cpu_s": 1.0}, "new": {"cpu_s": 0.5}}
    budget = types.SimpleNamespace(steps=4000, eval_every=100, batch_size=2, grad_accum=2)
    s = eval_share(costs, per, decode, budget, {"slow": 1.0})
    # 100 steps x 4 items x 0.5 s = 200 s of training between two evaluations; dev forward 270.3 s
    m = s["measured"]
    assert m["train_between_evals_s"] == pytest.approx(200.0)
    assert m["old"]["eval_s"] == pytest.approx(270.3 + 1.0 + 9.0) and m["new"]["eval_s"] == pytest.approx(270.8)
    assert m["new"]["share"] == pytest.approx(270.8 / 470.8)
    # at 1 TFLOP/s and 1 TFLOP per audio second, one audio second takes one second; decoding counts without the argmax
    g = s["assumed_gpu"]["slow"]
    assert g["train_between_evals_s"] == pytest.approx(100 * 4 * TRAIN_ITEM_SECONDS)
    assert g["dev_forward_s"] == pytest.approx(DEV["utterances"] * DEV["seconds"])
    assert g["old"]["eval_s"] == pytest.approx(g["dev_forward_s"] + 0.5 + 9.0)
    assert g["new"]["eval_s"] == pytest.approx(g["dev_forward_s"])
    assert s["budget"]["evaluations"] == 40


def test_synthetic_hypotheses_have_the_asked_error_rate():
    refs, hyps = phone_pairs(300, 110.0, 0.10)
    assert 100 < sum(map(len, refs)) / 300 < 120
    # substitutions by the same phone (1 in 71) are no error; deletions and insertions are one each
    assert error_rate(refs, hyps) == pytest.approx(0.1 * (0.5 * 70 / 71 + 0.5), abs=0.01)
    assert baseline_error_rate(refs[:20], hyps[:20]) == error_rate(refs[:20], hyps[:20])


def test_performance_page_has_the_metrics_section(record, tmp_path):
    out, _, _ = record
    page = write_performance(out, tmp_path / "PERFORMANCE.md").read_text()
    assert "## Evaluation metrics" in page and "share of a PR probe's wall time" in page
    assert "## Linear CKA\n\nNot measured yet: `repro bench cka`." in page
