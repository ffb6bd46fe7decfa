"""Benchmark: probe training steps per second by input (`probing.tasks.<T>.input`), same process.

Same data, same head: a randomly initialised WavLM-Base+-sized model (94M parameters, 13 x
768-d layers) over a small synthetic corpus, on this machine's device.

    PR (frame head)    cache: frames from a feature store; upstream: layers recomputed per step
    KS (pooled head)   cache: utterance means computed once from a frame store; pooled: the
                       means read from a pooled store; upstream: recomputed and pooled per step

Probe groups: every learning rate of a task trains on one forward per micro-batch
(`repro.probing.trainer.train_group`). For PR and SID on the upstream (the inputs that recompute
the layers), K = `group` learning rates trained as one group against K solo runs, one after the
other: `group_speedup` is the time of the K solo runs over the group's.

Reported per path: training steps per second (the dev set is one utterance, so the single
evaluation at the end costs little), the one-off setup (building the source: reading the
frames to average them, or the means), the extraction time and bytes on disk per utterance
of the store it reads, and ratios against the on-the-fly path. Each probe from a store is trained
`repeats` times and its fastest run kept: small heads take a few milliseconds per step, which
other work on a shared machine can stretch many times over (idle-waiting compute threads); the
on-the-fly path (seconds per step) runs once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from repro.bench.common import machine_info, work_folder
from repro.config.schema import SynthConfig, TaskBudget

BENCH_SYNTH = SynthConfig(speakers=14, asv_speakers=4, asv_dev_speakers=2, dev_speakers=2, test_speakers=2,
                          pr_per_speaker=1, ks_repeats=1, ks_unknown_per_speaker=1, ks_silence_per_speaker=1,
                          ic_per_speaker=1, sid_per_speaker=3, er_per_style=1, asv_per_speaker=3)
DEFAULTS = {"steps": 20, "fly_steps": 3, "batch_size": 8, "repeats": 3, "group": 4}


def bench_inputs(work: Path, corpus: Path | None, model_name: str, model_config: dict | None) -> tuple:
    """(corpus, upstream, device) of a probing benchmark in `work`: the given corpus or a small synthetic
    one, a random-weight WavLM (Base+ shape, or `model_config`) saved as `work/model_name`, on the device."""
    from repro.bench.extract import base_plus_model
    from repro.data.synth import make_corpus
    from repro.models.hf_ssl import load_hf_ssl
    from repro.runtime import resolve_device

    work.mkdir(parents=True, exist_ok=True)
    corpus = Path(corpus) if corpus else make_corpus(work / "corpus", BENCH_SYNTH, seed=0, progress=False)
    upstream = load_hf_ssl(str(base_plus_model(work / model_name, model_config)))
    device = resolve_device("auto")
    upstream.to(device)
    return corpus, upstream, device


def make_probes(task, source, lrs: list[float], checkpoint: Callable[[float], Path], tag: str) -> list:
    """One freshly seeded probe (featurizer + task head, the smoke profile's probing settings) per learning
    rate, reading `source`'s layers; `checkpoint(lr)` is its checkpoint file."""
    from repro.config import load_profile
    from repro.probing.featurizer import make_featurizer
    from repro.probing.trainer import Probe, ProbeModel

    cfg = load_profile("smoke").probing
    probes = []
    for lr in lrs:
        torch.manual_seed(0)
        model = ProbeModel(make_featurizer(source.dims, "auto", cfg.projection_dim, False),
                           task.make_head(source.dims[0], cfg))
        probes.append(Probe(lr, model, checkpoint(lr), tag))
    return probes


@dataclass(frozen=True)
class _Trial:
    """What a timed probe training reads: the task, its input source and utterances, the steps and batch
    size, the device, and the folder its checkpoints go to."""

    task: Any
    source: Any
    utts: list
    steps: int
    batch_size: int
    device: Any
    work: Path


def _steps_per_second(trial: _Trial, tag: str, repeats: int = 1) -> float:
    """Best of `repeats` trainings of `trial.steps` steps (each from scratch)."""
    return max(_train_rate(trial, f"{tag}-{r}") for r in range(max(1, repeats)))


def _train_rate(trial: _Trial, tag: str) -> float:
    return trial.steps / _train_seconds(trial, tag, [1e-3])


def _train_seconds(trial: _Trial, tag: str, lrs: list[float]) -> float:
    """Wall seconds to train one group of probes (one per learning rate of `lrs`) for `trial.steps` steps."""
    from repro.data.manifest import Trial
    from repro.probing.trainer import Split, TrainContext, train_group

    task, source, utts = trial.task, trial.source, trial.utts
    probes = make_probes(task, source, lrs, lambda lr: trial.work / f"{tag}-{lr:g}.pt", tag)
    train = Split(utts, source, [task.encode(u) for u in utts])
    dev = Split(utts[:1], source, train.targets[:1])
    if task.spec.selection == "trials":  # a target and a non-target trial
        a = utts[0]
        same = next(u for u in utts[1:] if u.speaker == a.speaker)
        other = next(u for u in utts if u.speaker != a.speaker)
        dev = Split([a, same, other], source, [task.encode(u) for u in (a, same, other)],
                    trials=[Trial(True, a.id, same.id), Trial(False, a.id, other.id)])
    budget = TaskBudget(steps=trial.steps, batch_size=trial.batch_size, lr_grid=list(lrs), eval_every=trial.steps)
    start = time.perf_counter()
    train_group(task, probes, train, dev, budget, TrainContext(trial.device, progress=False))
    return time.perf_counter() - start


def _group_speedup(trial: _Trial, tag: str, k: int) -> dict[str, float]:
    """K learning rates: K solo trainings one after the other, then one group; seconds and their ratio."""
    lrs = [10.0 ** -(2 + i) for i in range(k)]
    solo = sum(_train_seconds(trial, f"{tag}-solo", [lr]) for lr in lrs)
    group = _train_seconds(trial, f"{tag}-group", lrs)
    return {"k": k, "steps": trial.steps, "solo_seconds": solo, "group_seconds": group, "speedup": solo / group}


def _store_bytes(store) -> int:
    return sum(store.meta["file_sizes"].values())


def run(work: Path | None = None, steps: int = DEFAULTS["steps"], fly_steps: int = DEFAULTS["fly_steps"],
        batch_size: int = DEFAULTS["batch_size"], corpus: Path | None = None,
        model_config: dict | None = None, repeats: int = DEFAULTS["repeats"],
        group: int = DEFAULTS["group"]) -> dict[str, Any]:
    """Measure and return the figures (see module doc); `corpus` and `model_config` are for tests."""
    from repro.data.manifest import load_task
    from repro.config.schema import ExtractionConfig
    from repro.features.extract import ExtractRun, StoreIdentity, extract
    from repro.probing.sources import OnTheFly, StoreFrames, StorePooled, UpstreamFrames
    from repro.probing.tasks import make_task

    started = time.perf_counter()
    with work_folder(work, "bench-probe-") as work:
        corpus, upstream, device = bench_inputs(work, corpus, "wavlm-base-plus-random", model_config)
        out: dict[str, Any] = {"benchmark": "probe", "machine": machine_info(), "device": str(device),
                               "model": "WavLM Base+ shape, random weights" if not model_config else
                               f"WavLM {model_config}, random weights", "batch_size": batch_size,
                               "steps": {"cache": steps, "pooled": steps, "upstream": fly_steps},
                               "repeats": repeats, "tasks": {}}
        for task_name, pooled in (("PR", False), ("KS", True)):
            utts = [u for u in load_task(corpus, task_name) if u.split == "train"]
            task = make_task(task_name, {"train": utts})
            layers = list(range(upstream.num_layers))
            paths: dict[str, dict] = {}
            kinds = [("cache", False), ("pooled", True)] if pooled else [("cache", False)]
            for name, pooled_store in kinds:
                t0 = time.perf_counter()
                store = extract(upstream, utts, corpus, work / "features" / f"{task_name}-{name}",
                                StoreIdentity({"name": "bench"}, pooled=pooled_store),
                                ExtractionConfig(dtype="float16"), ExtractRun(progress=False))
                extract_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                source = StorePooled(store, utts, layers) if pooled else StoreFrames(store, utts, layers)
                setup = time.perf_counter() - t0
                trial = _Trial(task, source, utts, steps, batch_size, device, work)
                rate = _steps_per_second(trial, f"{task_name}-{name}", repeats)
                paths[name] = {"steps_per_s": rate, "setup_seconds": setup, "extract_seconds": extract_s,
                               "bytes_per_utterance": _store_bytes(store) / len(utts)}
            fly = UpstreamFrames(upstream, corpus, utts, layers, OnTheFly(pooled=pooled, device=device))
            rate = _steps_per_second(_Trial(task, fly, utts, fly_steps, batch_size, device, work), f"{task_name}-fly")
            paths["upstream"] = {"steps_per_s": rate, "setup_seconds": 0.0, "extract_seconds": 0.0,
                                 "bytes_per_utterance": 0.0}
            for p in paths.values():
                p["vs_upstream"] = p["steps_per_s"] / rate
            out["tasks"][task_name] = {"head": "mean-pooled" if pooled else "frames", "utterances": len(utts),
                                       "audio_seconds": sum(u.duration for u in utts), "paths": paths}
        out["groups"] = {}
        for task_name in ("PR", "SID"):
            utts = [u for u in load_task(corpus, task_name) if u.split == "train"]
            task = make_task(task_name, {"train": utts})
            fly = UpstreamFrames(upstream, corpus, utts, list(range(upstream.num_layers)), OnTheFly(device=device))
            trial = _Trial(task, fly, utts, fly_steps, batch_size, device, work)
            out["groups"][task_name] = _group_speedup(trial, f"{task_name}-groups", group)
        out["group_speedup"] = {t: g["speedup"] for t, g in out["groups"].items()}
        out["wall_seconds"] = time.perf_counter() - started
        return out


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = [f"probing benchmark on {r['device']}: {r['model']}, batch {r['batch_size']}; steps/s of each input "
             "(the ratio is against recomputing the layers every step)",
             f"{'task':5s} {'input':9s} {'steps/s':>9s} {'x upstream':>10s} {'setup s':>8s} {'extract s':>9s} "
             f"{'KB/utt':>9s}"]
    for task, t in r["tasks"].items():
        for name, p in t["paths"].items():
            lines.append(f"{task:5s} {name:9s} {p['steps_per_s']:>9.3f} {p['vs_upstream']:>10.1f} "
                         f"{p['setup_seconds']:>8.2f} {p['extract_seconds']:>9.2f} "
                         f"{p['bytes_per_utterance'] / 1e3:>9.1f}")
    for task, g in r.get("groups", {}).items():
        lines.append(f"{task}: {g['k']} learning rates on the upstream, {g['steps']} steps: {g['k']} solo runs "
                     f"{g['solo_seconds']:.1f} s, one group {g['group_seconds']:.1f} s: {g['speedup']:.2f}x")
    return "\n".join(lines)
