"""The extraction, probing, pipeline and projection benchmarks run on tiny inputs and write
well-formed records, and docs/PERFORMANCE.md is rendered from them (no timing is asserted)."""

import dataclasses
import json

import pytest

from repro.bench import run_benchmarks
from repro.bench.projection import ASSUMED, CORPUS, MODELS, _hours
from repro.bench.report import write_performance
from repro.config import load_profile

TINY_PIPELINE = """\
extends: smoke
name: smoke-bench
corpus:
  kind: synthetic
  synthetic: {speakers: 14, asv_speakers: 4, asv_dev_speakers: 2, dev_speakers: 2, test_speakers: 2,
              pr_per_speaker: 2, ks_repeats: 1, ks_unknown_per_speaker: 1, ks_silence_per_speaker: 1,
              ic_per_speaker: 2, sid_per_speaker: 3, er_per_style: 1, asv_per_speaker: 3}
models: {speech_ssl: [tiny-wavlm], speaker_ssl: [], speaker_sup: []}
tasks: [KS]
probing:
  tasks:
    KS: {steps: 4, batch_size: 8, lr_grid: [0.01], eval_every: 2}
cka: {bootstrap: {blocks: 0}, max_frames: 500}
speaker_training: {pipeline_recipes: []}
"""


@pytest.fixture(scope="module")
def records(tiny_corpus, tmp_path_factory):
    from conftest import TINY_HF

    out = tmp_path_factory.mktemp("bench")
    lines = []
    results = run_benchmarks(
        ["extract", "probe", "pipeline", "projection"], out, echo=lines.append,
        options={"extract": {"seconds": 4.0, "corpus": tiny_corpus, "model_config": TINY_HF, "flop_seconds": 1.0},
                 "probe": {"steps": 3, "fly_steps": 1, "corpus": tiny_corpus, "model_config": TINY_HF},
                 "pipeline": {"profile_text": TINY_PIPELINE}, "projection": {"flop_seconds": 1.0}})
    return out, results, lines


def test_records_are_json_and_the_methods_agree(records):
    out, results, lines = records
    for name in ("extract", "probe", "pipeline", "projection"):
        assert json.loads((out / f"{name}.json").read_text()) == json.loads(json.dumps(results[name]))
        assert f"written: {out / name}.json" in lines
    ex = results["extract"]
    assert set(ex["cases"]) == {"ours", "ours-b1", "baseline"} and ex["speedup"] > 0
    assert ex["max_relative_difference"] < 1e-4  # our layers are the baseline's
    assert ex["flops_per_audio_second"] > 0 and ex["cases"]["ours-b1"]["padding_fraction"] == 0.0
    ks = results["probe"]["tasks"]["KS"]["paths"]
    assert set(ks) == {"cache", "pooled", "upstream"} and ks["upstream"]["vs_upstream"] == 1.0
    assert 0 < ks["pooled"]["bytes_per_utterance"] < ks["cache"]["bytes_per_utterance"]
    assert set(results["pipeline"]["stages"]) == {"corpus", "train", "features", "cka", "probe", "paper"}
    assert abs(sum(s["share"] for s in results["pipeline"]["stages"].values()) - 1) < 0.05
    pj = results["projection"]
    assert set(pj["flops_per_audio_second"]) == set(MODELS)
    assert pj["sources"]["pooled_steps_per_s"].startswith("measured")
    assert pj["totals"]["autocast"]["probe"] < pj["totals"]["float32"]["probe"]


def test_performance_page_names_what_is_measured_and_what_is_assumed(records, tmp_path):
    out, _, _ = records
    page = write_performance(out, tmp_path / "PERFORMANCE.md").read_text()
    for title in ("## Extraction", "## Probing inputs", "## The smoke pipeline", "## Projection"):
        assert title in page
    assert "## Linear CKA\n\nNot measured yet: `repro bench cka`." in page
    assert "**Assumed about the GPU**" in page and "**Counted or measured here**" in page


def test_projection_arithmetic_by_hand():
    full = load_profile("full")
    only_pr = dataclasses.replace(full, tasks=["PR"])
    rates = {**ASSUMED, "decode": {"flac": 1e9, "wav": 1e9}, "pooled_steps_per_s": 100.0, "cka_gemm_fraction": 0.5,
             "head_share": {"default": 0.25}}
    flops = {m: 10e9 for m in MODELS}
    h = _hours(only_pr, rates, flops, autocast=False, grouped=False)
    b, c = full.probing.tasks["PR"], CORPUS["PR"]
    lrs = len(b.lr_grid)
    one_pass_h = (b.steps * b.grad_accum * b.batch_size * c["item_seconds"] / 3600
                  + (b.steps // b.eval_every) * c["dev"] + c["test"])
    audio_h = one_pass_h * lrs
    assert h["probe"]["wavlm-base-plus"] == pytest.approx(audio_h * 3600 * 10e9 / 30e12 / 3600)
    utts = (b.steps * b.grad_accum * b.batch_size + (b.steps // b.eval_every) * c["utterances"]["dev"]
            + c["utterances"]["test"]) * lrs
    assert h["probe"]["ecapa-dino-wespeaker"] == pytest.approx(
        utts * ASSUMED["ecapa_overhead_ms"] / 1e3 / 3600 + h["probe"]["wavlm-base-plus"])
    # grouped: one pass over the batch stream, each further learning rate costs a quarter of a forward
    g = _hours(only_pr, rates, flops, autocast=False, grouped=True)
    assert g["forwarded_audio_seconds"]["wavlm-base-plus"]["PR"] == pytest.approx(one_pass_h * 3600)
    assert g["probe"]["wavlm-base-plus"] == pytest.approx(
        one_pass_h * 3600 * 10e9 / 30e12 / 3600 * (1 + (lrs - 1) * 0.25))
    only_ks = dataclasses.replace(full, tasks=["KS"])
    ks = full.probing.tasks["KS"]
    assert _hours(only_ks, rates, flops, False, grouped=False)["probe"]["hubert-base"] == pytest.approx(
        ks.steps * len(ks.lr_grid) / 100.0 / 3600)
