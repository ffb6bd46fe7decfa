"""Benchmark: probe training steps per second from the feature cache vs the upstream on the fly.

Same data, same head, same process: a randomly initialised WavLM-Base+-sized
model (94M parameters, 13 x 768-d layers) over a small synthetic corpus.
Reported as a ratio (cache / on the fly), for the frame path (PR-like: every
frame enters the head) and the pooled shortcut (KS-like).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import torch

from repro.config import load_profile
from repro.config.schema import SynthConfig, TaskBudget
from repro.data.manifest import load_task
from repro.data.synth import make_corpus
from repro.features.extract import extract
from repro.models.hf_ssl import load_hf_ssl, save_random_hf_ssl
from repro.probing.featurizer import make_featurizer
from repro.probing.sources import StoreFrames, StorePooled, UpstreamFrames
from repro.probing.tasks import make_task
from repro.probing.trainer import ProbeModel, Split, train_probe

BENCH_SYNTH = SynthConfig(speakers=14, asv_speakers=4, asv_dev_speakers=2, dev_speakers=2, test_speakers=2,
                          pr_per_speaker=1, ks_repeats=1, ks_unknown_per_speaker=1, ks_silence_per_speaker=1,
                          ic_per_speaker=1, sid_per_speaker=3, er_per_style=1, asv_per_speaker=3)


def _steps_per_second(task, source, utts, budget, lr, device, work: Path, tag: str) -> float:
    cfg = load_profile("smoke").probing
    dims = source.dims
    torch.manual_seed(0)
    model = ProbeModel(make_featurizer(dims, "auto", cfg.projection_dim, False), task.make_head(dims[0], cfg))
    split = Split(utts, source, [task.encode(u) for u in utts])
    # dev = train: the benchmark measures training throughput; one evaluation at the end
    start = time.perf_counter()
    train_probe(task, model, split, split, budget, lr, 0, work / f"{tag}.pt", tag, device, progress=False)
    return budget.steps / (time.perf_counter() - start)


def run(work: Path, steps: int = 20, batch_size: int = 8) -> dict[str, Any]:
    """Measure and return the figures (see module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(work / "corpus", BENCH_SYNTH, seed=0, progress=False)
    model_dir = work / "wavlm-base-plus-random"
    if not (model_dir / "config.json").is_file():
        save_random_hf_ssl(model_dir, "wavlm", seed=0)  # transformers' defaults are the Base+ shape
    upstream = load_hf_ssl(str(model_dir))
    device = torch.device("cpu")
    out: dict[str, Any] = {"machine": platform.machine(), "threads": torch.get_num_threads(),
                           "model": "WavLM Base+ shape, random weights", "batch_size": batch_size, "steps": steps}
    for task_name, pooled in (("PR", False), ("KS", True)):
        utts = [u for u in load_task(corpus, task_name) if u.split == "train"]
        store = extract(upstream, utts, corpus, work / "features" / task_name, model_info={"name": "bench"},
                        progress=False)
        task = make_task(task_name, {"train": utts})
        budget = TaskBudget(steps=steps, batch_size=batch_size, lr_grid=[1e-3], eval_every=steps)
        layers = list(range(store.num_layers))
        cache = StorePooled(store, utts, layers) if pooled else StoreFrames(store, utts, layers)
        fly = UpstreamFrames(upstream, corpus, utts, layers, pooled=pooled)
        rate_cache = _steps_per_second(task, cache, utts, budget, 1e-3, device, work, f"{task_name}-cache")
        rate_fly = _steps_per_second(task, fly, utts, budget, 1e-3, device, work, f"{task_name}-fly")
        out[task_name] = {"path": "pooled" if pooled else "frames", "cache_steps_per_s": round(rate_cache, 3),
                          "on_the_fly_steps_per_s": round(rate_fly, 3), "ratio": round(rate_cache / rate_fly, 1)}
    return out
