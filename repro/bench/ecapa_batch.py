"""ECAPA-TDNN benchmark: one padded batch of mixed lengths in one encoder call, against one utterance per call.

Both ECAPA-TDNN upstreams (speechbrain's `ECAPA_TDNN` with its front-end, our `WespeakerEcapa`
with the Kaldi front-end) at the smoke profile's trained sizes (random weights: the same work)
and, with `sizes=("smoke", "full")`, at the full profile's (C=1024 and C=512). Three ways to run
the same utterances, in one process, on this machine's CPU:

    batched   `EcapaUpstream.forward` on the zero-padded batch: one front-end call, one encoder call
    alone     one `forward` per utterance, each on its own samples (the one-at-a-time reference)
    before    the forward this replaced: equal lengths together, every other length alone
              (`EcapaUpstream._one_at_a_time` on the batch)

over three length mixes:

    pr        PR-like: durations drawn like LibriSpeech train-clean-100's (normal, mean 12.7 s,
              sd 3.5 s, within 1.5-24.5 s), planned into batches as the extraction plans them
              (`repro.features.batching.plan_batches`: sorted by length, `pr_batch_seconds` of
              padded audio per batch); `pr_batches` of the plan's batches, spread over it
    mixed     `mixed_items` utterances of 1-8 s in one batch, in no particular order (what a user
              gets padding a batch by hand; its padding is the mix's, not the planner's)
    crops     `crop_items` 8 s crops (SID/ASV training items): equal lengths

Reported per model and mix: audio seconds per wall second and per CPU second of this process
(the fastest of `repeats` passes each, the three ways interleaved so a shared machine's drift
hits them alike; with one torch thread, CPU time is what the pass takes on an idle core,
whereas wall time on a loaded machine includes waiting for one), the ratios batched / alone
and batched / before of both, the padding share of the batched work, encoder calls per
batch of each way, and the largest relative difference between batched and alone layers and
embeddings (max |difference| / max |alone| per layer; float rounding only).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from repro.bench.common import machine_info

DEFAULTS = {"sizes": ("smoke",), "repeats": 3, "seed": 0, "pr_batch_seconds": 96.0, "pr_batches": 2,
            "mixed_items": 12, "crop_items": 8}
PR_SECONDS = {"mean": 12.7, "sd": 3.5, "min": 1.5, "max": 24.5}  # LibriSpeech train-clean-100 (approximate)


def _models(size: str) -> dict:
    """Model name -> constructor of its `EcapaUpstream`, at the smoke or the full profile's sizes."""
    from repro.config import load_profile
    from repro.models.ecapa import speechbrain_ecapa, wrap_speechbrain_ecapa
    from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch, wrap_wespeaker_ecapa

    speakers = load_profile(size).speaker_training
    sup = {**speakers.supervised.arch, "input_size": speakers.supervised.n_mels}
    dino = WespeakerEcapaArch.from_dict(speakers.dino.arch)
    return {f"ecapa-sup-speechbrain ({size})": lambda: wrap_speechbrain_ecapa(speechbrain_ecapa(sup)),
            f"ecapa-dino-wespeaker ({size})": lambda: wrap_wespeaker_ecapa(WespeakerEcapa(dino))}


def length_mixes(seed: int, pr_batch_seconds: float, pr_batches: int, mixed_items: int,
                 crop_items: int) -> dict[str, list[list[int]]]:
    """Mix name -> batches, each a list of utterance lengths in samples (16 kHz)."""
    from repro.data.manifest import Utterance
    from repro.features.batching import plan_batches

    rng = np.random.default_rng(seed)
    p = PR_SECONDS
    seconds = np.clip(rng.normal(p["mean"], p["sd"], 400), p["min"], p["max"])
    utts = [Utterance(id=f"pr{i:03d}", split="train", path="", num_samples=int(s * 16000), duration=float(s),
                      speaker="", label=None, sha256="") for i, s in enumerate(seconds)]
    plan = plan_batches(utts, pr_batch_seconds)
    picks = np.linspace(0, len(plan) - 1, pr_batches + 2)[1:-1].round().astype(int)  # inside the plan, not its ends
    pr = [[utts[i].num_samples for i in plan[k]] for k in picks]
    mixed = [int(s * 16000) for s in rng.uniform(1.0, 8.0, mixed_items)]
    return {"pr": pr, "mixed": [mixed], "crops": [[8 * 16000] * crop_items]}


def _waves(lengths: list[int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    from repro.models.upstream import pad_waveforms

    wavs = [torch.from_numpy(0.1 * rng.standard_normal(n).astype(np.float32)) for n in lengths]
    padded, lens = pad_waveforms(wavs)
    return padded, lens, wavs


def _relative_difference(up, padded, lens, wavs) -> float:
    out = up(padded, lens)
    worst = 0.0
    for b, w in enumerate(wavs):
        alone = up._one_at_a_time(w[None], torch.tensor([len(w)]))
        n = alone.layers[0].shape[1]
        pairs = [(got[b, :n], ref[0]) for got, ref in zip(out.layers, alone.layers)]
        pairs.append((out.embedding[b], alone.embedding[0]))
        worst = max(worst, *(float((x - y).abs().max() / y.abs().max()) for x, y in pairs))
    return worst


def _case(up, batches: list[tuple], repeats: int) -> dict:
    """Time the three ways over `batches` ((padded, lengths, waves) each)."""
    ways = {
        "batched": lambda: [up(p, l) for p, l, _ in batches],
        "alone": lambda: [up._one_at_a_time(w[None], torch.tensor([len(w)])) for _, _, ws in batches for w in ws],
        "before": lambda: [up._one_at_a_time(p, l) for p, l, _ in batches],
    }
    calls = []
    hook = up.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    counts = {}
    try:
        for name, fn in ways.items():  # warm-up, and encoder calls per batch
            calls.clear()
            fn()
            counts[name] = len(calls) / len(batches)
    finally:
        hook.remove()
    wall = {name: float("inf") for name in ways}
    cpu = dict(wall)
    for _ in range(repeats):
        for name, fn in ways.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    audio = sum(len(w) for _, _, ws in batches for w in ws) / 16000
    padded = sum(p.numel() for p, _, _ in batches) / 16000
    rates = {name: audio / wall[name] for name in ways}
    cpu_rates = {name: audio / max(cpu[name], 1e-9) for name in ways}
    return {"audio_seconds": audio, "utterances": sum(len(ws) for _, _, ws in batches), "batches": len(batches),
            "padding_share": 1 - audio / padded, "encoder_calls_per_batch": counts,
            "audio_s_per_s": rates, "audio_s_per_cpu_s": cpu_rates,
            "batched_vs_alone": rates["batched"] / rates["alone"], "batched_vs_before": rates["batched"] / rates["before"],
            "cpu_batched_vs_alone": cpu_rates["batched"] / cpu_rates["alone"],
            "cpu_batched_vs_before": cpu_rates["batched"] / cpu_rates["before"],
            "max_relative_difference": max(_relative_difference(up, *b) for b in batches)}


def run(sizes: tuple[str, ...] = DEFAULTS["sizes"], repeats: int = DEFAULTS["repeats"], seed: int = DEFAULTS["seed"],
        pr_batch_seconds: float = DEFAULTS["pr_batch_seconds"], pr_batches: int = DEFAULTS["pr_batches"],
        mixed_items: int = DEFAULTS["mixed_items"], crop_items: int = DEFAULTS["crop_items"]) -> dict:
    """Measure every model of `sizes` ("smoke", "full") on every length mix; see the module docstring."""
    started = time.perf_counter()
    mixes = length_mixes(seed, pr_batch_seconds, pr_batches, mixed_items, crop_items)
    rng = np.random.default_rng(seed + 1)
    data = {mix: [_waves(b, rng) for b in batches] for mix, batches in mixes.items()}
    models = {}
    for size in sizes:
        for name, make in _models(size).items():
            torch.manual_seed(seed)
            up = make()
            models[name] = {"batched_forward": up.batched,
                            "mixes": {mix: _case(up, batches, repeats) for mix, batches in data.items()}}
    return {"setup": {"sizes": list(sizes), "repeats": repeats, "seed": seed, "pr_batch_seconds": pr_batch_seconds,
                      "pr_batches": pr_batches, "mixed_items": mixed_items, "crop_items": crop_items,
                      "pr_seconds": PR_SECONDS, "lengths": mixes},
            "models": models, "machine": machine_info(), "wall_seconds": time.perf_counter() - started}


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    threads = r["machine"]["torch_threads"]
    lines = ["ECAPA-TDNN: one padded batch per encoder call (batched) vs one utterance per call (alone) and the "
             "forward it replaced (before: equal lengths together); audio s per CPU s of this process "
             f"({threads} torch thread{'s' if threads > 1 else ''}), batched / alone also per wall s",
             f"{'model':34s} {'mix':6s} {'utt.':>4s} {'pad %':>6s} {'batched':>8s} {'alone':>7s} {'before':>7s} "
             f"{'vs alone':>8s} {'vs before':>9s} {'(wall)':>7s} {'calls':>9s} {'max rel diff':>12s}"]
    for name, m in r["models"].items():
        for mix, c in m["mixes"].items():
            a, k = c["audio_s_per_cpu_s"], c["encoder_calls_per_batch"]
            lines.append(f"{name:34s} {mix:6s} {c['utterances']:>4d} {100 * c['padding_share']:>6.1f} "
                         f"{a['batched']:>8.1f} {a['alone']:>7.1f} {a['before']:>7.1f} {c['cpu_batched_vs_alone']:>8.2f} "
                         f"{c['cpu_batched_vs_before']:>9.2f} {c['batched_vs_alone']:>7.2f} "
                         f"{k['batched']:>3.0f} / {k['alone']:>3.0f} {c['max_relative_difference']:>12.1e}")
    lines.append("calls: encoder calls per batch, batched / alone; max rel diff: max |batched - alone| / max |alone| "
                 "over layers and embeddings")
    return "\n".join(lines)
