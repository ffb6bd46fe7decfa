"""Projection (`repro bench projection`): GPU hours of the full and fast profiles on one H100-class GPU,
as the cost model's table of terms (`repro.bench.costmodel`: what each term counts, which code-path facts
it reads, and the kind and source of every number).

What this command counts or measures here (any machine):
    FLOPs per audio second of the four full-profile models at their real sizes, random weights
        (`torch.utils.flop_counter`, one 8 s utterance; SDPA attention, which the counter does not see on
        the CPU, is added from the shapes by the cost model);
    FLOPs per frame of every probe (featurizer + head, forward and forward + backward) and the operators
        of one pooled-head step (`repro.bench.shapes`);
    audio decoding, audio seconds per CPU second on one core, FLAC (LibriSpeech) and WAV (the rest);
    from the other records in the same folder: the host's CTC decoding and PER scoring per dev utterance
        (metrics.json) and the CKA accumulator's share of the matrix-multiply rate (cka.json);
    from `gpu.json`, where it was made on a GPU with the current calibration key
        (`repro.bench.gpu.CALIBRATION_KEY`): seconds per probe-group micro-batch, which replace the counted
        training terms of that model, task and precision.
The claims' hours come from what each claim's checks read (`repro.paper.claims.Claim.reads`).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from repro.bench import costmodel
from repro.bench.common import machine_info
from repro.bench.costmodel import CODE_PATHS, CODE_PATHS_VERSION, MODELS, CostModel, Input


def count_flops(seconds: float = 8.0) -> dict[str, float]:
    """FLOPs per audio second of the four full-profile models (random weights, real sizes)."""
    import transformers

    from repro.bench.extract import flops_per_audio_second
    from repro.config.schema import SupervisedRecipeConfig
    from repro.models.ecapa import speechbrain_ecapa, wrap_speechbrain_ecapa
    from repro.models.hf_ssl import HFSpeechSSL
    from repro.models.wespeaker_ecapa import WespeakerEcapa, wrap_wespeaker_ecapa

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


def _read(bench_dir: Path, name: str) -> dict | None:
    path = bench_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _where(record: dict | None = None) -> str:
    m = record["machine"] if record else machine_info()
    return f"{m.get('cpu')}, Python {m.get('python')}, torch {m.get('torch')}"


def measured_inputs(bench_dir: Path, decode: dict[str, float]) -> tuple[dict[str, Input], list[str]]:
    """The measured inputs (this machine's decoding, the other records' host figures) and notes."""
    notes = []
    here = _where()
    out = {f"decode_{fmt}": Input(rate, "audio s per CPU s", "measured",
                                  f"measured here ({here}, one core, soundfile)") for fmt, rate in decode.items()}
    cka = _read(bench_dir, "cka")
    if cka:
        frac = min(c["ours"].get("steady_gemm_fraction", c["ours"]["gemm_fraction"]) for c in cka["cases"].values())
        out["cka_gemm_fraction"] = Input(frac, "fraction", "measured",
                                         f"cka.json ({_where(cka)}), assumed to carry over to the GPU")
    else:
        out["cka_gemm_fraction"] = Input(0.8, "fraction", "assumed", "no cka.json: a GEMM-bound accumulator")
    padding = _read(bench_dir, "padding")
    if padding:
        for name, p in padding["profiles"].items():
            out[f"padded_over_valid:{name}:PR:train:W{p['length_window']}"] = Input(
                p["windowed"]["padded_over_valid"], "padded / valid audio", "counted",
                f"padding.json: PR's training forwards in windows of {p['length_window']} steps, "
                f"{p['steps_counted']} steps on LibriSpeech {padding['split']} lengths")
    metrics = _read(bench_dir, "metrics")
    if metrics and "share" in metrics:
        host = metrics["share"]["host"]["new"]
        per_utt = (host["decode_host_s"] + host["score_s"]) / metrics["share"]["dev"]["utterances"]
        out["pr_eval_host_s_per_utt"] = Input(per_utt, "host s per dev utterance", "measured",
                                              f"metrics.json ({_where(metrics)}): greedy CTC decoding on the host "
                                              "and PER scoring of one dev pass")
    else:
        notes.append("no metrics.json: PR's host-side decoding and scoring are not priced")
    return out, notes


def gpu_step_seconds(bench_dir: Path) -> tuple[dict, list[str], dict[str, Input]]:
    """From `gpu.json` when it was made on a GPU with the current key: `{(model, task, precision): Input}`
    seconds per probe-group micro-batch, notes, and the inputs it measures in place of assumed ones
    (`ecapa_overhead_ms`, `pooled_step_s:<model>:<task>`); otherwise nothing, with a one-line note
    saying why the record is ignored."""
    from repro.bench.gpu import CALIBRATION_KEY

    record = _read(bench_dir, "gpu")
    if record is None:
        return {}, [], {}
    name = f"{bench_dir}/gpu.json"
    if record.get("key") != CALIBRATION_KEY:
        return {}, [f"{name} ignored: its calibration key {record.get('key')!r} is not the current "
                    f"{CALIBRATION_KEY!r} (the measured shapes or code paths changed; rerun `repro bench gpu`)"], {}
    if record.get("tiny") or not str(record.get("device", "")).startswith("cuda"):
        return {}, [f"{name} ignored: made on {record.get('device')} at toy sizes, not on a GPU"], {}
    src = (f"measured: {name} on {record.get('device_name')}, commit {record.get('commit')}, Python "
           f"{record['machine'].get('python')}, torch {record['machine'].get('torch')}, transformers "
           f"{record.get('transformers')}")
    out = {}
    for model, tasks in record.get("probe_groups", {}).items():
        for task, modes in tasks.items():
            for precision, case in modes.items():
                if isinstance(case, dict) and "seconds_per_step" in case:
                    out[(model, task, precision)] = Input(case["seconds_per_step"], "s per micro-batch", "measured",
                                                          src)
    inputs = {}
    if record.get("ecapa_overhead"):
        ms = 1e3 * float(np.mean([c["seconds"] for c in record["ecapa_overhead"].values()]))
        inputs["ecapa_overhead_ms"] = Input(ms, "ms per forward", "measured", f"{src} (1 s utterance, all its FLOPs)")
    for model, tasks in record.get("pooled_steps", {}).items():
        for task, case in tasks.items():
            inputs[f"pooled_step_s:{model}:{task}"] = Input(case["seconds"], "s per probe step", "measured", src)
    return out, [f"{name} used: {src}"], inputs


def claim_reads() -> dict[str, dict]:
    """For each claim of the abstract (`1`, `2`, ...): the check ids, the model families, probe tasks and
    CKA pairs its checks read (`repro.paper.claims.Claim.reads`)."""
    from repro.paper.claims import CLAIMS

    out: dict[str, dict] = {}
    for c in CLAIMS:
        r = out.setdefault(c.abstract, {"checks": [], "families": [], "tasks": [], "cka": "none"})
        r["checks"].append(c.id)
        r["families"] += [f for f in c.reads.families if f not in r["families"]]
        r["tasks"] += [t for t in c.reads.tasks if t not in r["tasks"]]
        if c.reads.cka != "none":
            r["cka"] = c.reads.cka
    return out


FAMILY_NAMES = {"speech_ssl": "speech SSL", "speaker_ssl": "speaker SSL", "speaker_sup": "supervised speaker"}


def claim_runs(reads: dict) -> str:
    """What a claim's checks read, in words (the README's "what runs" column)."""
    names = [FAMILY_NAMES[f] for f in reads["families"]]
    families = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    parts = []
    if reads["tasks"]:
        parts.append(f"{', '.join(reads['tasks'])} probes of the {families} models")
    if reads["cka"] == "across":
        parts.append("CKA across speech SSL and speaker SSL models")
    return "; ".join(parts)


def claim_hours(terms: list[costmodel.Term], profile, precision: str) -> dict[str, float]:
    """GPU hours of what each claim's checks read: their probes (training, evaluation, pooled features)
    on their models, and the CKA pairs with their frame stores."""
    families = {f: list(getattr(profile.models, f)) for f in ("speech_ssl", "speaker_ssl", "speaker_sup")}
    out = {}
    for claim, r in claim_reads().items():
        models = [m for f in r["families"] for m in families[f]]
        pairs = {f"{a}__{b}" for a in families["speech_ssl"] for b in families["speaker_ssl"]} | \
            {f"{b}__{a}" for a in families["speech_ssl"] for b in families["speaker_ssl"]}
        total = 0.0
        for t in terms:
            if t.precision != precision:
                continue
            if t.model in models and t.task in r["tasks"]:
                total += t.hours
            elif r["cka"] == "across" and (t.model in pairs or (t.task == "CKA" and t.model in models)):
                total += t.hours
        out[claim] = total
    return out


def _model_and_counts(profile, flops, flop_seconds, measured, code, steps) -> CostModel:
    from repro.bench.shapes import fused_step_ops, head_flops_per_frame, pooled_step_ops

    head = {m: {t: head_flops_per_frame(m, t) for t in ("PR", "SID", "ASV")} for m in MODELS}
    pooled = {m: {t: pooled_step_ops(m, t, profile.probing.tasks[t].batch_size) for t in ("KS", "IC", "ER")}
              for m in MODELS}
    for m in MODELS:  # one learning rate: a fused step's operators do not depend on their number
        for t in ("KS", "IC", "ER"):
            folds = len(profile.probing.er_folds) if t == "ER" else 1
            b = profile.probing.tasks[t]
            pooled[m][t]["fused"] = fused_step_ops(m, t, b.batch_size, folds, 1, b.grad_accum)
    return CostModel(profile, flops, head, pooled, measured, code, flop_seconds, steps)


def run(bench_dir: Path | str = "artifacts/bench", flop_seconds: float = 8.0) -> dict:
    """Count, measure, read the other records in `bench_dir` and project (see module doc)."""
    from repro.config import load_profile

    started = time.perf_counter()
    bench_dir = Path(bench_dir)
    flops = count_flops(flop_seconds)
    measured, notes = measured_inputs(bench_dir, decode_rates())
    steps, gpu_notes, gpu_inputs = gpu_step_seconds(bench_dir)
    notes += gpu_notes
    measured.update(gpu_inputs)
    profiles = {}
    inputs = {}
    head_flops = pooled_ops = None
    for name in ("full", "fast"):
        profile = load_profile(name)
        model = _model_and_counts(profile, flops, flop_seconds, measured, CODE_PATHS, steps)
        terms = model.terms()
        inputs.update(model.inputs)
        head_flops, pooled_ops = model.head_flops, model.pooled_ops
        profiles[name] = {
            "hours": {p: costmodel.totals(terms, p) for p in ("float32", "bf16")},
            "largest": {p: costmodel.largest(terms, p) for p in ("float32", "bf16")},
            "claims": {p: claim_hours(terms, profile, p) for p in ("float32", "bf16")},
            "terms": [dataclasses.asdict(t) for t in terms],
        }
    return {"benchmark": "projection", "machine": machine_info(), "platform": platform.platform(),
            "code_paths": {"version": CODE_PATHS_VERSION, **dataclasses.asdict(CODE_PATHS)},
            "flops_per_audio_second": flops, "flop_seconds": flop_seconds, "head_flops_per_frame": head_flops,
            "pooled_step_operators": pooled_ops,
            "inputs": {k: dataclasses.asdict(v) for k, v in sorted(inputs.items())},
            "claim_reads": claim_reads(), "profiles": profiles, "notes": notes,
            "wall_seconds": time.perf_counter() - started}


def gpu_hours_line(name: str, hours: dict) -> str:
    """`<name> profile: N GPU-hours float32, M GPU-hours bf16` from `{"float32": N, "bf16": M}`."""
    return f"{name} profile: {hours['float32']:.1f} GPU-hours float32, {hours['bf16']:.1f} GPU-hours bf16"


def summary(terms: list[dict], precision: str) -> list[tuple[str, float, str, list[str]]]:
    """Terms summed over models and tasks by what they count: (what, hours, kind, inputs)."""
    rows: dict[str, list] = {}
    for t in terms:
        if t["precision"] != precision:
            continue
        what = t["what"].split(",")[0]
        row = rows.setdefault(what, [0.0, set(), []])
        row[0] += t["hours"]
        row[1].add(t["kind"])
        row[2] += [i for i in t["inputs"] if i not in row[2]]
    order = {k: i for i, k in enumerate(costmodel.KINDS)}
    return sorted(((w, h, max(k, key=order.get), i) for w, (h, k, i) in rows.items()), key=lambda r: -r[1])


def by_task(terms: list[dict], precision: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for t in terms:
        if t["precision"] == precision:
            row = out.setdefault(t["model"] if "__" not in t["model"] else "CKA pairs", {})
            row[t["task"]] = row.get(t["task"], 0.0) + t["hours"]
    return out


def table(r: dict) -> str:
    """The projection as text: totals, terms by what they count, hours by model and task, the inputs."""
    lines = []
    for name in ("full", "fast"):
        lines.append(gpu_hours_line(name, r["profiles"][name]["hours"]))
    full = r["profiles"]["full"]
    lines.append("")
    lines.append("full profile, terms by what they count (GPU hours; kind = the weakest of its inputs):")
    lines.append(f"{'term':48s} {'float32':>9s} {'bf16':>9s}  {'kind':8s} inputs")
    f32 = {w: (h, k, i) for w, h, k, i in summary(full["terms"], "float32")}
    b16 = {w: h for w, h, _, _ in summary(full["terms"], "bf16")}
    for what, (h, kind, ins) in f32.items():
        lines.append(f"{what:48s} {h:>9.2f} {b16.get(what, 0.0):>9.2f}  {kind:8s} {', '.join(ins)}")
    lines.append("")
    tasks = ["PR", "KS", "IC", "SID", "ASV", "ER", "ASV-IDT", "CKA"]
    lines.append("full profile by model and task (GPU hours, float32 / bf16; features of pooled tasks included):")
    lines.append(f"{'model':24s} " + " ".join(f"{t:>13s}" for t in tasks))
    t32, tbf = by_task(full["terms"], "float32"), by_task(full["terms"], "bf16")
    for model in t32:
        lines.append(f"{model:24s} " + " ".join(
            f"{t32[model].get(t, 0.0):>6.1f}/{tbf[model].get(t, 0.0):<6.1f}" for t in tasks))
    lines.append("")
    lines.append("per claim, what its checks read (float32 / bf16 h): " + ", ".join(
        f"{c}: {full['claims']['float32'][c]:.1f} / {full['claims']['bf16'][c]:.1f}"
        for c in full["claims"]["float32"]))
    for name in ("full", "fast"):
        lines.append(f"largest terms, {name} (float32): " + "; ".join(
            f"{w} {h:.1f} h" for w, h in r["profiles"][name]["largest"]["float32"]))
    lines.append("")
    lines.append(f"code paths (repro.bench.costmodel.CODE_PATHS, version {r['code_paths']['version']}): " + ", ".join(
        f"{k}={v}" for k, v in r["code_paths"].items() if k != "version"))
    lines.append("inputs:")
    for name, i in r["inputs"].items():
        if name.startswith("step_seconds:"):
            continue
        lines.append(f"  {name} = {i['value']:.4g} {i['unit']} [{i['kind']}] {i['source']}")
    for note in r["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(line.rstrip() for line in lines)
