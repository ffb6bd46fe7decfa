"""Projection: hours per stage of the full profile on one GPU, from counted FLOPs, measured rates and
corpus sizes, with every assumption named.

What is counted or measured here (any machine):
    FLOPs per audio second of the four full-profile models at their real sizes, random weights
        (`torch.utils.flop_counter`, one 8 s utterance): WavLM Base+, HuBERT Base, the C=1024
        speechbrain ECAPA-TDNN, the C=512 wespeaker ECAPA-TDNN;
    audio decoding, audio seconds per CPU second on one core, FLAC (LibriSpeech) and WAV (the rest);
    from the other benchmarks' records in the same folder: pooled-head training steps per second
        (probe.json: small heads on utterance means run as fast on the CPU) and the CKA
        accumulator's share of the matrix-multiply rate (cka.json).
What is assumed about the GPU unless the benchmarks ran on one (then their rates are used):
    sustained model throughput in float32 and under fp16/bf16 autocast, the fixed overhead of one
    ECAPA-TDNN forward, the float64 matrix-multiply rate (CKA), decoding threads (the full
    profile's `extraction.num_workers`).

The arithmetic (per model, full profile; `repro.config.profiles/full.yaml` gives the budgets):
    upstream-input probes: every learning rate of a task trains in one probe group
        (`probing.max_group`: all), so the upstream runs once per micro-batch for the whole
        grid: micro-batches = steps x grad_accum, audio forwarded = micro-batches x batch_size x
        seconds per training item (SID/ASV: 8 s crops, an upper bound; PR: LibriSpeech
        train-clean-100's 12.7 s mean), plus every dev evaluation (steps / eval_every x the dev
        split) and one test pass, shared by the group; GPU hours = audio x FLOPs per audio second
        / throughput x (1 + (K - 1) x head share), where the head share is one more probe's cost
        relative to the forward (measured by the probe benchmark's groups on this machine, and
        assumed to carry over); decoding hours = audio / (per-core decode rate x threads); the
        stage takes the larger (they overlap). ECAPA-TDNN: utterances x (overhead + FLOPs /
        throughput), an upper bound: an ECAPA-TDNN runs utterances of equal length together in one
        forward (`repro.models.ecapa.EcapaUpstream.forward`: 1 s keyword clips, 8 s training crops)
        and any other one alone, and the arithmetic charges the overhead to every utterance.
        `solo` (what separate runs per learning rate would cost) is kept beside it.
    pooled-input probes: micro-batches / the measured pooled steps per second, ER x 5 folds.
    features: the pooled stores (KS, IC, ER; ASV test for ASV-IDT) and the CKA frame stores,
        audio x FLOPs / throughput (ECAPA-TDNN: utterances x overhead on top, as above).
    CKA: counted matrix-product flops of the streaming accumulator for every model pair over the
        CKA set's frames / (float64 rate x the measured share of it).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repro.bench.common import machine_info

# Full-profile corpora (docs/reviewing.md, "How the estimates are made"): hours per split, mean seconds per
# training item, utterances per split where an ECAPA-TDNN's one-at-a-time cost needs them.
CORPUS = {
    "PR": {"train": 100.6, "dev": 5.4, "test": 5.4, "item_seconds": 12.7, "format": "flac",
           "utterances": {"train": 28539, "dev": 2703, "test": 2620}},
    "KS": {"train": 14.2, "dev": 1.9, "test": 0.9, "item_seconds": 1.0, "format": "wav",
           "utterances": {"train": 51094, "dev": 6798, "test": 3081}},
    "IC": {"train": 14.7, "dev": 1.9, "test": 2.4, "item_seconds": 2.3, "format": "wav",
           "utterances": {"train": 23132, "dev": 3118, "test": 3793}},
    "SID": {"train": 317.1, "dev": 15.8, "test": 18.9, "item_seconds": 8.0, "format": "wav",
            "utterances": {"train": 138361, "dev": 6904, "test": 8251}},
    "ASV": {"train": 340.6, "test": 10.8, "item_seconds": 8.0, "format": "wav",
            "utterances": {"train": 148642, "test": 4715}},
    "ER": {"all": 7.0, "item_seconds": 4.6, "format": "wav", "utterances": {"all": 5531}},
    "CKA": {"test": 500 * 7.42 / 3600, "format": "flac", "utterances": {"test": 500}},
}
MODELS = {
    "wavlm-base-plus": {"kind": "speech", "dims": [768] * 13},
    "hubert-base": {"kind": "speech", "dims": [768] * 13},
    "ecapa-sup-speechbrain": {"kind": "ecapa", "dims": [1024] * 4 + [3072]},
    "ecapa-dino-wespeaker": {"kind": "ecapa", "dims": [512] * 4 + [1536]},
}
# Assumptions about one data-centre GPU (H100 class); used unless measured on a GPU here.
ASSUMED = {
    "fp32_tflops": 30.0,      # sustained on a Base-size model in float32 (TF32 off): ~45% of 67 TFLOP/s
    "autocast_tflops": 200.0,  # sustained under fp16/bf16 autocast: ~20% of 989 dense TFLOP/s
    "ecapa_overhead_ms": 2.0,  # fixed cost of one ECAPA-TDNN forward (~150 kernel launches), on top of its FLOPs
    "fp64_tflops": 50.0,       # float64 matrix multiply (tensor cores: 67 peak)
    "decode_threads": 8,       # extraction.num_workers of the full profile
}
CKA_FRAME_RATE = 50.0
SPEECH = ["wavlm-base-plus", "hubert-base"]
# The paper's claims (docs/claims.md): the probes and CKA pairs each needs.
CLAIMS = {
    "1": {"models": list(MODELS), "tasks": ["PR", "KS", "IC", "SID", "ASV", "ER"], "cka": "none"},
    "2": {"models": SPEECH, "tasks": ["PR", "KS", "IC"], "cka": "within"},
    "3": {"models": list(MODELS), "tasks": ["PR", "IC", "SID", "ASV"], "cka": "across"},
    "4": {"models": list(MODELS), "tasks": ["PR"], "cka": "none"},
}


def count_flops(seconds: float = 8.0) -> dict[str, float]:
    """FLOPs per audio second of the four full-profile models (random weights, real sizes)."""
    import transformers

    from repro.bench.extract import flops_per_audio_second
    from repro.models.ecapa import speechbrain_ecapa, wrap_speechbrain_ecapa
    from repro.models.hf_ssl import HFSpeechSSL
    from repro.models.wespeaker_ecapa import WespeakerEcapa, wrap_wespeaker_ecapa
    from repro.config.schema import SupervisedRecipeConfig

    torch.manual_seed(0)
    models = {
        "wavlm-base-plus": lambda: HFSpeechSSL(transformers.WavLMModel(transformers.WavLMConfig()), False),
        "hubert-base": lambda: HFSpeechSSL(transformers.HubertModel(transformers.HubertConfig()), False),
        "ecapa-sup-speechbrain": lambda: wrap_speechbrain_ecapa(speechbrain_ecapa(SupervisedRecipeConfig().arch)),
        "ecapa-dino-wespeaker": lambda: wrap_wespeaker_ecapa(WespeakerEcapa()),
    }
    return {name: flops_per_audio_second(make(), seconds) for name, make in models.items()}


def decode_rates(seconds: float = 30.0) -> dict[str, float]:
    """Audio seconds decoded per CPU second on one core, for FLAC and WAV (16 kHz speech-like audio)."""
    import soundfile as sf

    from repro.audio import read_audio

    rng = np.random.default_rng(0)
    n = int(seconds * 16000)
    # speech-like: a few harmonics with a slow envelope, plus noise (FLAC compresses it like speech)
    t = np.arange(n) / 16000
    wave = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((140, 280, 420, 900)))
    wave = 0.3 * wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(n)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("flac", "wav"):
            path = Path(tmp) / f"a.{fmt}"
            sf.write(path, wave.astype(np.float32), 16000, subtype="PCM_16")
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                read_audio(path)
                best = min(best, time.process_time() - start)
            out[fmt] = seconds / max(best, 1e-6)
    return out


def cka_pair_flops(frames: float, dims_a: list[int], dims_b: list[int] | None) -> float:
    """Matrix-product flops of the streaming accumulator for one pair (`repro.bench.cka.flops`;
    across models: X^T Y plus each side's own layer blocks)."""
    if dims_b is None:
        return frames * sum(dims_a) * (sum(dims_a) + 1)
    return 2 * frames * sum(dims_a) * sum(dims_b) + sum(frames * d * (d + 1) for d in dims_a + dims_b)


def _read(bench_dir: Path, name: str) -> dict | None:
    path = bench_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _hours(profile, rates: dict, flops: dict, autocast: bool, grouped: bool = True) -> dict:
    """Hours per stage and model (see the module doc); `grouped=False`: one run per learning rate."""
    from repro.tasks import task_input

    tput = 1e12 * (rates["autocast_tflops"] if autocast else rates["fp32_tflops"])
    out: dict[str, dict] = {"features": {}, "probe": {}, "decode": {}, "cka": {}, "probe_tasks": {},
                            "forwarded_audio_seconds": {}}
    for model, spec in MODELS.items():
        ecapa = spec["kind"] == "ecapa"

        def gpu_hours(audio_hours: float, utterances: float) -> float:
            if ecapa:
                return utterances * (rates["ecapa_overhead_ms"] / 1e3 + 3600 * audio_hours / max(utterances, 1) *
                                     flops[model] / tput) / 3600
            return audio_hours * 3600 * flops[model] / tput / 3600

        feats = 0.0
        for task in ("KS", "IC", "ER"):
            c = CORPUS[task]
            feats += gpu_hours(sum(v for k, v in c.items() if k in ("train", "dev", "test", "all")),
                               sum(c["utterances"].values()))
        feats += gpu_hours(CORPUS["ASV"]["test"], CORPUS["ASV"]["utterances"]["test"])
        feats += gpu_hours(CORPUS["CKA"]["test"], CORPUS["CKA"]["utterances"]["test"])
        out["features"][model] = feats
        probe = decode = 0.0
        per_task = out["probe_tasks"][model] = {}
        forwarded = out["forwarded_audio_seconds"][model] = {}
        for task in profile.tasks:
            b, c = profile.probing.tasks[task], CORPUS[task]
            lrs = len(b.lr_grid)
            runs = 1 if grouped else lrs  # upstream passes over the batch stream
            folds = len(profile.probing.er_folds) if task == "ER" else 1
            micro = b.steps * b.grad_accum * runs * folds
            if task_input(profile, task) == "pooled":
                per_task[task] = micro * (lrs if grouped else 1) / rates["pooled_steps_per_s"] / 3600
                probe += per_task[task]
                continue
            item = min(c["item_seconds"], b.train_crop_seconds or c["item_seconds"])
            train_audio = micro * b.batch_size * item / 3600
            train_utts = micro * b.batch_size
            dev = c.get("dev", c.get("test"))
            dev_utts = c["utterances"].get("dev", c["utterances"].get("test"))
            evals = (b.steps // b.eval_every) * runs
            audio = train_audio + evals * dev + runs * c.get("test", 0.0)
            utts = train_utts + evals * dev_utts + runs * c["utterances"].get("test", 0)
            forwarded[task] = audio * 3600
            heads = 1 + (lrs - 1) * rates["head_share"].get(task, rates["head_share"]["default"]) if grouped else 1
            gpu = gpu_hours(audio, utts) * heads
            dec = audio * 3600 / (rates["decode"][c["format"]] * rates["decode_threads"]) / 3600
            per_task[task] = max(gpu, dec)
            probe += per_task[task]
            decode += dec
        out["probe"][model] = probe
        out["decode"][model] = decode
    frames = CORPUS["CKA"]["test"] * 3600 * CKA_FRAME_RATE
    names = list(MODELS)
    pairs = [(a, a) for a in names] + [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    rate = 1e12 * rates["fp64_tflops"] * rates["cka_gemm_fraction"]
    for a, b in pairs:
        flops_ab = cka_pair_flops(frames, MODELS[a]["dims"], None if a == b else MODELS[b]["dims"])
        out["cka"][f"{a}__{b}"] = flops_ab / rate / 3600
    return out


def claim_hours(h: dict) -> dict[str, float]:
    """GPU hours of each claim's probes, features and CKA pairs (from `_hours`)."""
    out = {}
    for claim, need in CLAIMS.items():
        total = sum(h["probe_tasks"][m].get(t, 0.0) for m in need["models"] for t in need["tasks"])
        total += sum(h["features"][m] for m in need["models"])
        for pair, hours in h["cka"].items():
            a, b = pair.split("__")
            if (need["cka"] == "within" and a == b and a in need["models"]) or (need["cka"] == "across" and a != b):
                total += hours
        out[claim] = total
    return out


def run(bench_dir: Path | str = "artifacts/bench", flop_seconds: float = 8.0) -> dict:
    """Count, measure, read the other records in `bench_dir` and project (see module doc)."""
    from repro.config import load_profile

    started = time.perf_counter()
    bench_dir = Path(bench_dir)
    flops = count_flops(flop_seconds)
    decode = decode_rates()
    rates = {**ASSUMED, "decode": decode}
    sources = {k: "assumed (GPU)" for k in ASSUMED}
    sources["decode_threads"] = "assumed (the full profile's extraction.num_workers)"
    sources["decode"] = "measured on this CPU (one core)"
    probe, cka, extract = _read(bench_dir, "probe"), _read(bench_dir, "cka"), _read(bench_dir, "extract")
    rates["pooled_steps_per_s"] = 500.0
    sources["pooled_steps_per_s"] = "assumed"
    if probe and "KS" in probe.get("tasks", {}) and "pooled" in probe["tasks"]["KS"]["paths"]:
        rates["pooled_steps_per_s"] = probe["tasks"]["KS"]["paths"]["pooled"]["steps_per_s"]
        sources["pooled_steps_per_s"] = f"measured ({probe['device']}, probe.json)"
    rates["cka_gemm_fraction"] = 0.8
    sources["cka_gemm_fraction"] = "assumed"
    if cka:
        rates["cka_gemm_fraction"] = min(c["ours"].get("steady_gemm_fraction", c["ours"]["gemm_fraction"])
                                         for c in cka["cases"].values())
        sources["cka_gemm_fraction"] = "measured on this CPU (cka.json), assumed to carry over to the GPU"
    gpu = _read(bench_dir, "gpu")
    if gpu and gpu["device"].startswith("cuda") and not gpu["tiny"]:
        from repro.bench.gpu import rates_for_projection

        for key, value in rates_for_projection(gpu, flops).items():
            rates[key] = value
            sources[key] = f"measured on {gpu['device_name']} (gpu.json)"
    rates["head_share"] = {"default": 0.1}
    sources["head_share"] = "assumed: one more probe costs a tenth of an upstream forward"
    if probe and probe.get("groups"):
        shares = {t: _head_share(g) for t, g in probe["groups"].items()}
        rates["head_share"] = {**shares, "default": max(shares.values())}
        sources["head_share"] = f"measured ({probe['device']}, probe.json groups; the largest for other tasks)"
    profile = load_profile("full")
    exact, fast = _hours(profile, rates, flops, False), _hours(profile, rates, flops, True)
    solo = {mode: _hours(profile, rates, flops, amp, grouped=False) for mode, amp in (("float32", False),
                                                                                     ("autocast", True))}
    # the fast profile's budgets over the same corpus sizes (its smaller dev sets make this an upper bound)
    small = load_profile("fast")
    fast_profile = {mode: {stage: sum(v.values()) for stage, v in _hours(small, rates, flops, amp).items()
                           if stage in ("features", "probe", "cka")}
                    for mode, amp in (("float32", False), ("autocast", True))}
    forwarded = {"grouped": sum(sum(t.values()) for t in exact["forwarded_audio_seconds"].values()),
                 "solo": sum(sum(t.values()) for t in solo["float32"]["forwarded_audio_seconds"].values())}
    return {"benchmark": "projection", "machine": machine_info(), "profile": "full",
            "flops_per_audio_second": flops, "rates": rates, "sources": sources,
            "hours": {"float32": exact, "autocast": fast},
            "totals": {mode: {stage: sum(v.values()) for stage, v in h.items() if stage in ("features", "probe", "cka")}
                       for mode, h in (("float32", exact), ("autocast", fast))},
            "claims": {"float32": claim_hours(exact), "autocast": claim_hours(fast)},
            "solo_totals": {mode: {stage: sum(v.values()) for stage, v in h.items() if stage in ("features", "probe",
                                                                                            "cka")}
                            for mode, h in solo.items()},
            "forwarded_audio_seconds": forwarded,
            "fast_profile": fast_profile,
            "corpus": CORPUS, "wall_seconds": time.perf_counter() - started}


def _head_share(g: dict) -> float:
    """One more probe's cost relative to an upstream forward, from a group record: K solo runs cost
    K (F + h), the group F + K h (`repro.bench.probe`)."""
    k, solo, group = g["k"], g["solo_seconds"], g["group_seconds"]
    forward = (solo - group) / (k - 1)  # K(F + h) - (F + K h) = (K - 1) F
    return max(0.0, (group - forward) / k / forward)


def gpu_hours_line(name: str, totals: dict) -> str:
    """`<name> profile: N GPU-hours float32, M GPU-hours bf16` from per-stage totals."""
    return (f"{name} profile: {sum(totals['float32'].values()):.1f} GPU-hours float32, "
            f"{sum(totals['autocast'].values()):.1f} GPU-hours bf16")


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = ["projection for the full profile on one GPU (hours; float32 = extraction.autocast none, "
             "autocast = fp16/bf16):",
             f"{'model':24s} {'GFLOP/audio s':>13s} {'features':>9s} {'probe f32':>10s} {'probe amp':>10s} "
             f"{'(decode)':>9s}"]
    h32, hamp = r["hours"]["float32"], r["hours"]["autocast"]
    for model in MODELS:
        lines.append(f"{model:24s} {r['flops_per_audio_second'][model] / 1e9:>13.1f} {h32['features'][model]:>9.2f} "
                     f"{h32['probe'][model]:>10.1f} {hamp['probe'][model]:>10.1f} {h32['decode'][model]:>9.1f}")
    t32, tamp = r["totals"]["float32"], r["totals"]["autocast"]
    lines.append(f"{'all (+ CKA ' + format(t32['cka'] * 3600, '.0f') + ' s)':24s} {'':>13s} {t32['features']:>9.2f} "
                 f"{t32['probe']:>10.1f} {tamp['probe']:>10.1f}")
    lines.append(gpu_hours_line("full", r["totals"]))
    lines.append(gpu_hours_line("fast", r["fast_profile"]) + " (its corpora at full size: an upper bound)")
    fw = r["forwarded_audio_seconds"]
    lines.append(f"upstream audio forwarded by the probes: {fw['grouped'] / 1e6:.0f} M audio s in probe groups, "
                 f"{fw['solo'] / 1e6:.0f} M with one run per learning rate ({fw['solo'] / fw['grouped']:.1f}x)")
    lines.append("per claim (float32 / autocast): " + ", ".join(
        f"{c}: {r['claims']['float32'][c]:.0f} / {r['claims']['autocast'][c]:.0f} h" for c in r["claims"]["float32"]))
    for key, src in r["sources"].items():
        value = r["rates"][key]
        shown = ", ".join(f"{k} {v:.0f}" if v >= 10 else f"{k} {v:.2g}" for k, v in value.items()) \
            if isinstance(value, dict) else f"{value:g}"
        lines.append(f"  {key}: {shown} ({src})")
    return "\n".join(lines)
