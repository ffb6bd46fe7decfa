"""The extraction, probing, pipeline and projection benchmarks run on tiny inputs and write
well-formed records, and docs/PERFORMANCE.md is rendered from them (no timing is asserted)."""

import dataclasses
import json

import pytest

from repro.bench import run_benchmarks
from repro.bench import costmodel
from repro.bench.costmodel import KINDS, MODELS, CostModel, Input, corpus_for, facts
from repro.bench.lengths import load as load_lengths
from repro.bench.lengths import padded_mean
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


@pytest.mark.slow
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
    assert pj["inputs"]["decode_flac"]["kind"] == "measured"
    for name in ("full", "fast"):
        hours = pj["profiles"][name]["hours"]
        assert 0 < hours["bf16"] < hours["float32"]
    assert pj["profiles"]["fast"]["hours"]["float32"] < pj["profiles"]["full"]["hours"]["float32"]


@pytest.mark.slow  # the benchmark records (its module fixture) take about 95 s
def test_performance_page_names_what_is_measured_and_what_is_assumed(records, tmp_path):
    out, _, _ = records
    page = write_performance(out, tmp_path / "PERFORMANCE.md").read_text()
    for title in ("## Extraction", "## Probing inputs", "## The smoke pipeline", "## Projection"):
        assert title in page
    assert "## Linear CKA\n\nNot measured yet: `repro bench cka`." in page
    assert "**Assumed**" in page and "**Counted**" in page and "**Measured**" in page
    assert "| term | float32 h | bf16 h | kind | inputs |" in page and "CODE_PATHS" in page


# the code paths of the engine before features stayed on the device, ECAPA-TDNN batches ran in one call and
# the FLOP counter saw SDPA attention
BEFORE = facts(features_round_trip_host=True, loss_read_per_probe=True, terms_overlap=False,
               ecapa_forward="per_utterance_unless_equal_lengths", wavlm_attention="unfused_eager_TxT",
               attention_flops_counted=False, pr_batches="random_permutation_padded")


def _model(profile="full", code=None, tasks=None, tf32=False):
    prof = load_profile(profile)
    if tasks:
        prof = dataclasses.replace(prof, tasks=tasks)
    if tf32:
        prof = dataclasses.replace(prof, probing=dataclasses.replace(prof.probing, tf32=True))
    flops = {m: 10e9 for m in MODELS}
    head = {m: {t: {"forward": 1e6, "train": 3e6} for t in ("PR", "SID", "ASV")} for m in MODELS}
    pooled = {m: {t: {"micro_batch": 90, "optimizer_step": 60,
                      "fused": {"batch": 120, "optimizer_step": 70, "evaluation": 40}}
                  for t in ("KS", "IC", "ER")} for m in MODELS}
    measured = {"decode_flac": Input(1e9, "x", "measured", "test"), "decode_wav": Input(1e9, "x", "measured", "test"),
                "cka_gemm_fraction": Input(0.5, "x", "measured", "test")}
    return CostModel(prof, flops, head, pooled, measured, code or costmodel.CODE_PATHS)


def _hours(terms, model, task, what, precision="float32"):
    return sum(t.hours for t in terms if t.model == model and t.task == task and t.precision == precision
               and t.what.startswith(what))


def test_every_term_and_input_carries_its_kind_and_source():
    m = _model()
    terms = m.terms()
    assert terms and all(t.kind in KINDS and t.source and t.inputs for t in terms)
    assert all(i in m.inputs for t in terms for i in t.inputs)
    assert all(i.kind in KINDS and i.source for i in m.inputs.values())
    for name in ("fp32_peak_tflops", "bf16_peak_tflops", "hbm_tb_s", "pcie_gb_s"):
        assert "H100 datasheet" in m.inputs[name].source
    assert {t.kind for t in terms if t.what.startswith("upstream FLOPs")} == {"assumed"}


def test_heads_cost_k_probes_and_padding_follows_the_librispeech_lengths():
    m = _model(tasks=["PR"], code=BEFORE)
    terms = m.terms()
    b = m.profile.probing.tasks["PR"]
    k, micro = len(b.lr_grid), b.steps * b.grad_accum
    pad = padded_mean(load_lengths()["splits"]["train-clean-100"], b.batch_size)
    frames = micro * b.batch_size * pad * 50
    # K probes cost K heads (the group is 1 forward + K heads, not 1 + (K - 1) heads)
    assert _hours(terms, "hubert-base", "PR", "heads (float32), train") == pytest.approx(
        k * frames * 3e6 / 30e12 / 3600)
    assert _hours(terms, "hubert-base", "PR", "heads (float32), train", "bf16") == pytest.approx(
        _hours(terms, "hubert-base", "PR", "heads (float32), train"))  # heads stay float32 under autocast
    attention = 4 * (pad * 50) ** 2 * 768 * 12
    assert _hours(terms, "hubert-base", "PR", "upstream FLOPs, train") == pytest.approx(
        micro * b.batch_size * (10e9 * pad + attention) / 30e12 / 3600)
    assert 1.2 < pad / load_lengths()["splits"]["train-clean-100"]["mean_seconds"] < 1.4
    assert _hours(terms, "hubert-base", "PR", "features to the host and back, train") == pytest.approx(
        2 * frames * 13 * 768 * 4 / 64e9 / 3600)
    # an ECAPA-TDNN runs each LibriSpeech utterance alone: one fixed cost per utterance
    assert _hours(terms, "ecapa-dino-wespeaker", "PR", "ECAPA-TDNN forwards, train") == pytest.approx(
        micro * b.batch_size * 2e-3 / 3600)


def test_a_fused_pooled_group_pays_its_operators_once_for_every_learning_rate_and_fold():
    fused = _model(tasks=["KS", "ER"]).terms()
    per_micro_batch = _model(tasks=["KS", "ER"], code=facts(pooled_heads="fused_group")).terms()
    apart = _model(tasks=["KS", "ER"], code=facts(pooled_heads="one_step_per_probe")).terms()
    prof = load_profile("full")
    for task, folds in (("KS", 1), ("ER", len(prof.probing.er_folds))):
        b = prof.probing.tasks[task]
        micro = b.steps * b.grad_accum
        # one batch of rows per step, whatever the learning rates, folds and accumulated micro-batches
        assert _hours(fused, "hubert-base", task, "pooled-head steps, train") == pytest.approx(
            (b.steps * 120 + b.steps * 70) * 10e-6 / 3600)
        assert _hours(per_micro_batch, "hubert-base", task, "pooled-head steps, train") == pytest.approx(
            (micro * 120 + b.steps * 70) * 10e-6 / 3600)
        assert _hours(apart, "hubert-base", task, "pooled-head steps, train") == pytest.approx(
            len(b.lr_grid) * folds * (micro * 90 + b.steps * 60) * 10e-6 / 3600)
        assert not _hours(fused, "hubert-base", task, "loss reads")


def test_probing_tf32_prices_the_heads_at_the_tf32_rate_and_leaves_the_upstream():
    off = _model(tasks=["PR"]).terms()
    on = _model(tasks=["PR"], tf32=True).terms()
    assert _hours(on, "hubert-base", "PR", "heads (tf32), train") == pytest.approx(
        _hours(off, "hubert-base", "PR", "heads (float32), train") * 30 / 200)
    assert _hours(on, "hubert-base", "PR", "upstream") == _hours(off, "hubert-base", "PR", "upstream")


def test_flipping_a_code_path_fact_recomputes_the_figure():
    today = _model(tasks=["PR", "SID"], code=BEFORE).terms()
    on_device = _model(tasks=["PR", "SID"], code=dataclasses.replace(BEFORE, features_round_trip_host=False)).terms()
    trips = sum(t.hours for t in today if t.what.startswith("features to the host") and t.precision == "float32")
    assert trips > 0
    assert costmodel.totals(on_device, "float32") == pytest.approx(costmodel.totals(today, "float32") - trips)
    serial = _model(tasks=["PR", "SID"], code=BEFORE).terms()
    overlapped = _model(tasks=["PR", "SID"], code=dataclasses.replace(BEFORE, terms_overlap=True)).terms()
    assert costmodel.totals(overlapped, "float32") < costmodel.totals(serial, "float32")
    reads = _model(tasks=["PR", "SID"], code=facts(loss_read_per_probe=True)).terms()
    assert costmodel.totals(reads, "float32") > costmodel.totals(_model(tasks=["PR", "SID"]).terms(), "float32")
    flex = _model(tasks=["PR"], code=facts(wavlm_attention="flex")).terms()
    assert not [t for t in flex if t.what.startswith("attention T x T")]
    now = _model(tasks=["PR"]).terms()
    mask = _hours(now, "wavlm-base-plus", "PR", "attention T x T")
    eager = _hours(_model(tasks=["PR"], code=facts(wavlm_attention="unfused_eager_TxT")).terms(),
                   "wavlm-base-plus", "PR", "attention T x T")
    assert 0 < mask and eager == pytest.approx(mask * 8 / 2)  # 8 passes over T x T tensors against 2
    alone = _model(tasks=["PR"], code=facts(ecapa_forward="per_utterance_unless_equal_lengths")).terms()
    assert _hours(now, "ecapa-dino-wespeaker", "PR", "ECAPA-TDNN forwards") < \
        _hours(alone, "ecapa-dino-wespeaker", "PR", "ECAPA-TDNN forwards") / 10
    # attention FLOPs: in the count (rescaled) or added from the shapes; for HuBERT (SDPA) the same total
    missed = _model(tasks=["PR"], code=facts(attention_flops_counted=False)).terms()
    assert _hours(missed, "hubert-base", "PR", "upstream FLOPs") > _hours(now, "hubert-base", "PR", "upstream FLOPs")


def test_pr_training_forwards_are_priced_at_the_padding_of_their_length_windows(tmp_path):
    from repro.bench.padding import measure

    now = _model(tasks=["PR"])
    b = now.profile.probing.tasks["PR"]
    mean = load_lengths()["splits"]["train-clean-100"]["mean_seconds"]
    _, pad, how = now.padded_seconds("PR", "train", b.batch_size, True)
    counted = measure(28539, b.batch_size, b.grad_accum, 4096, now.profile.probing.length_window)["windowed"]
    assert pad / mean == pytest.approx(counted["padded_over_valid"]) and 1.0 < pad / mean < 1.05
    assert f"windows of {now.profile.probing.length_window} steps" in how
    name = now.padding_input("PR")
    assert now.inputs[name].kind == "counted"
    before = _model(tasks=["PR"], code=facts(pr_batches="random_permutation_padded"))
    flops = _hours(now.terms(), "hubert-base", "PR", "upstream FLOPs, train")
    assert flops < 0.85 * _hours(before.terms(), "hubert-base", "PR", "upstream FLOPs, train")
    # a padding.json for other windows is not used; one for the profile's window is
    recorded = {name: Input(1.1, "padded / valid audio", "counted", "padding.json")}
    read = CostModel(now.profile, now.flops, now.head_flops, now.pooled_ops, {**recorded})
    assert read.padded_seconds("PR", "train", b.batch_size, True)[1] == pytest.approx(1.1 * mean)
    other = {name.replace(":W16", ":W4"): Input(1.1, "padded / valid audio", "counted", "padding.json")}
    assert CostModel(now.profile, now.flops, now.head_flops, now.pooled_ops, other).padded_seconds(
        "PR", "train", b.batch_size, True)[1] == pytest.approx(pad)


def test_the_padding_record_counts_both_profiles(tmp_path):
    results = run_benchmarks(["padding"], tmp_path, echo=lambda _: None, options={"padding": {"steps": 256}})
    r = results["padding"]
    for name in ("full", "fast"):
        p = r["profiles"][name]
        assert p["steps_counted"] == 256 and p["length_window"] == load_profile(name).probing.length_window
        assert 0.15 < p["alone"]["padding_share"] < 0.3 and p["windowed"]["padding_share"] < 0.05
        assert p["alone"]["padded_over_valid"] == pytest.approx(p["alone"]["expected_padded_over_valid"], rel=0.03)
    assert "windowed" in __import__("repro.bench.padding", fromlist=["table"]).table(r)


def test_the_fast_profile_prices_its_own_subsets():
    fast = corpus_for(load_profile("fast"))
    assert fast["PR"]["utterances"]["dev"] == 500 and fast["PR"]["utterances"]["test"] == 2620
    assert fast["SID"]["utterances"]["test"] == round(8251 * 100 / 1251)
    assert fast["CKA"]["utterances"]["test"] == 200
    assert costmodel.totals(_model("fast").terms(), "float32") < costmodel.totals(_model().terms(), "float32") / 5
