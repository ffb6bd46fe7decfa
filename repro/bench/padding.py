"""Benchmark (counted, not timed): the padding of PR's training forwards on LibriSpeech's lengths.

For the full and fast profiles' PR budgets (batch size B, gradient accumulation G, steps,
`probing.length_window` W), on train-clean-100's pinned length distribution
(`repro.bench.lengths`, `artifacts/bench/librispeech_lengths.json`):

- a training split of the profile's size is given lengths at evenly spaced quantiles of the
  histogram (bin centres, at 0.1 s), in a seeded order (a manifest's order is independent of length);
- its micro-batches are the trainer's own (`repro.probing.sources.micro_batch`, the profile's seed,
  micro-batch G s + a of step s), for the first `steps` steps of the budget (or all of them);
- **before**: each micro-batch forwarded alone, padded to its longest item;
- **after**: the forwards `repro.probing.length_window.plan_chunks` makes of each slot's windows of
  W steps, each padded to its longest item.

Reported: the padding share (1 - valid / padded audio, as extraction reports it), the padded audio over
the valid audio (the factor the cost model multiplies, `repro.bench.costmodel`), and, for the
direct forwards, the analytic expectation of the same factor (`lengths.padded_mean`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from repro.bench import lengths as lengths_mod
from repro.bench.common import machine_info

SPLIT = "train-clean-100"
DEFAULTS = {"steps": 0}  # every step of each budget (seconds)
QUICK_STEPS = 4096  # what the cost model counts itself when there is no padding.json


def split_lengths(utterances: int, seed: int = 0) -> list[int]:
    """Samples (16 kHz) of `utterances` utterances at evenly spaced quantiles of train-clean-100's
    histogram, in a seeded order."""
    centres, p = lengths_mod._histogram(lengths_mod.load()["splits"][SPLIT])
    cdf = np.cumsum(p)
    q = (np.arange(utterances) + 0.5) / utterances
    seconds = centres[np.minimum(np.searchsorted(cdf, q), len(centres) - 1)]
    order = np.random.default_rng([seed, utterances]).permutation(utterances)
    return np.round(seconds[order] * lengths_mod.SAMPLE_RATE).astype(int).tolist()


def measure(utterances: int, batch_size: int, grad_accum: int, steps: int, window: int, seed: int = 0) -> dict:
    """Padding of the first `steps` training steps' forwards, micro-batches alone and windowed (module doc)."""
    from repro.probing.length_window import plan_chunks, window_steps
    from repro.probing.sources import micro_batch

    samples = split_lengths(utterances, seed)
    sums = {"alone": [0, 0], "windowed": [0, 0]}  # [valid, padded] samples

    def add(kind: str, forwards: list[list[int]]) -> None:
        sums[kind][0] += sum(map(sum, forwards))
        sums[kind][1] += sum(len(f) * max(f) for f in forwards)

    start = 0
    while start < steps:
        span = window_steps(start, window, steps)
        for a in range(grad_accum):
            batches = [[samples[i] for i in micro_batch(utterances, batch_size, seed, s * grad_accum + a)]
                       for s in span]
            add("alone", batches)
            add("windowed", [[batches[m][i] for m, i in chunk] for chunk in plan_chunks(batches, batch_size)])
        start = span.stop
    out = {k: {"padding_share": 1 - v / p, "padded_over_valid": p / v, "valid_hours": v / 16000 / 3600}
           for k, (v, p) in sums.items()}
    split = lengths_mod.load()["splits"][SPLIT]
    out["alone"]["expected_padded_over_valid"] = lengths_mod.padded_mean(split, batch_size) / \
        lengths_mod.mean_seconds(split)
    return out


def run(steps: int = DEFAULTS["steps"]) -> dict[str, Any]:
    """PR's training padding for the full and fast profiles (module doc)."""
    from repro.bench.costmodel import CORPUS
    from repro.config import load_profile
    from repro.bench.costmodel import corpus_for

    started = time.perf_counter()
    profiles = {}
    for name in ("full", "fast"):
        profile = load_profile(name)
        b = profile.probing.tasks["PR"]
        utterances = corpus_for(profile)["PR"]["utterances"]["train"]
        n = min(steps, b.steps) if steps else b.steps
        profiles[name] = {
            "utterances": utterances, "batch_size": b.batch_size, "grad_accum": b.grad_accum,
            "length_window": profile.probing.length_window, "steps_counted": n, "budget_steps": b.steps,
            **measure(utterances, b.batch_size, b.grad_accum, n, profile.probing.length_window, profile.seed)}
    return {"benchmark": "padding", "machine": machine_info(), "split": SPLIT,
            "full_split_utterances": CORPUS["PR"]["utterances"]["train"], "profiles": profiles,
            "wall_seconds": time.perf_counter() - started}


def table(r: dict) -> str:
    lines = [f"PR training forwards on LibriSpeech {r['split']} lengths (counted from the pinned histogram):",
             f"{'profile':8s} {'B x G':>7s} {'W':>3s} {'steps':>7s} {'padding alone':>14s} {'windowed':>9s} "
             f"{'padded/valid alone':>19s} {'windowed':>9s} {'expected alone':>15s}"]
    for name, p in r["profiles"].items():
        a, w = p["alone"], p["windowed"]
        lines.append(f"{name:8s} {p['batch_size']:>3d} x {p['grad_accum']:<1d} {p['length_window']:>3d} "
                     f"{p['steps_counted']:>7d} {100 * a['padding_share']:>13.1f}% {100 * w['padding_share']:>8.1f}% "
                     f"{a['padded_over_valid']:>19.3f} {w['padded_over_valid']:>9.3f} "
                     f"{a['expected_padded_over_valid']:>15.3f}")
    return "\n".join(lines)
