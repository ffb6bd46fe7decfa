"""Running the probes of a profile and writing their result files.

For each (model, task, learning rate) one file
`results/<profile>/probing/<model>/<task>/lr-<lr>.json` with dev and test
metrics, raw and norm-corrected layer weights, the training curve, the config
hash and the seed (wall time goes to a `.timing.json` beside it, so result
files are byte-stable); `best.json` beside them selects the learning rate on
dev. ASV-IDT (the model's own embedding, cosine, no training) goes to
`results/<profile>/probing/<model>/ASV-IDT.json`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repro.config.typed import ConfigError, to_dict
from repro.data.manifest import ManifestError, Utterance, load_task, read_corpus_info, read_trials, trials_path
from repro.features.store import FeatureStore, StoreError
from repro.models.registry import resolve_spec, spec_identity
from repro.probing.featurizer import make_featurizer
from repro.probing.inputs import idt_store_kind, task_input
from repro.probing.sources import StoreFrames, StorePooled, UpstreamFrames, check_layers
from repro.probing.tasks import Task, make_task
from repro.probing.trainer import ProbeModel, Split, evaluate, score_trials, train_probe
from repro.runtime import barrier, resolve_device
from repro.util.atomic import atomic_write_json
from repro.util.hashing import config_hash
from repro.workspace import Workspace

RESULT_VERSION = 1


class StoreUnion:
    """Several feature stores of one model seen as one (ER folds span the manifest's splits)."""

    def __init__(self, stores: list[FeatureStore]):
        self.stores = stores
        self.layers = stores[0].layers
        self.path = stores[0].path.parent
        self._owner = {uid: store for store in stores for uid in store.ids}

    def __contains__(self, uid: str) -> bool:
        return uid in self._owner

    def num_frames(self, l: int, uid: str) -> int:
        return self._owner[uid].num_frames(l, uid)

    def layer(self, l: int, uid: str) -> np.ndarray:
        return self._owner[uid].layer(l, uid)


def profile_hash(profile, model: str, task: str, lr: float | None = None) -> str:
    """Hash of every profile setting a probe result depends on, computable without data or models.

    Figures and tables compare it with the result files they read, to refuse results made
    under another configuration.
    """
    extraction = {k: v for k, v in to_dict(profile.extraction).items() if k not in ("device", "num_workers")}
    probing = {k: v for k, v in to_dict(profile.probing).items() if k not in ("tasks", "device")}
    budget = to_dict(profile.probing.tasks[task]) if task in profile.probing.tasks else None
    return config_hash({"version": RESULT_VERSION, "model": spec_identity(model), "task": task, "lr": lr,
                        "seed": profile.seed, "corpus": to_dict(profile.corpus), "extraction": extraction,
                        "probing": probing, "budget": budget,
                        "ecapa_layers": to_dict(profile.models.ecapa_layers)})


def _lr_tag(lr: float) -> str:
    return f"lr-{lr:.0e}"


class ProbeInputs:
    """Everything a probe of (model, task) needs: utterances, task, stores or upstream.

    `input` is the task's input (`repro.probing.inputs.task_input`): frame stores (`cache`),
    pooled stores (`pooled`) or the upstream on the fly (`upstream`).
    """

    def __init__(self, ws: Workspace, model: str, task_name: str, env=None):
        self.ws, self.model, self.task_name = ws, model, task_name
        self.cfg = ws.profile.probing
        require_budgets(ws.profile, [task_name])
        self.budget = self.cfg.tasks[task_name]
        self.input = task_input(ws.profile, task_name)
        utts = load_task(ws.corpus_dir, task_name)
        self.by_split = {s: [u for u in utts if u.split == s] for s in sorted({u.split for u in utts})}
        self.info = read_corpus_info(ws.corpus_dir)
        self.upstream = None
        self.stores: dict[str, FeatureStore] = {}
        if self.input in ("cache", "pooled"):
            for split in self.by_split:
                path = ws.store_dir(model, task_name, split, pooled=self.input == "pooled")
                try:
                    self.stores[split] = FeatureStore(path)
                except StoreError as err:
                    raise StoreError(f"{err}; create it with `repro extract --profile {ws.profile.name} "
                                     f"-m {model} -t {task_name}`") from None
            self.layer_info = self.stores["train"].layers
            self.store_keys = {s: st.key for s, st in sorted(self.stores.items())}
        else:
            from repro.features.stage import load_profile_upstream, model_info

            self.upstream = load_profile_upstream(ws, model, env)
            self.layer_info = self.upstream.layer_info()
            self.store_keys = {"upstream": model_info(model, self.upstream)["weights_sha256"]}
        self.layers = check_layers(len(self.layer_info), self.cfg.layers, f"model {model}")
        self.device = resolve_device(self.cfg.device)
        if self.upstream is not None:
            self.upstream.to(self.device)

    def source(self, utts: list[Utterance], split_stores: list[FeatureStore], task: Task, train: bool):
        pooled = task.pooled and self.cfg.pooled_shortcut and not self.cfg.layer_norm and not (
            train and self.budget.train_crop_seconds)
        if self.upstream is not None:
            crop = None
            if train and self.budget.train_crop_seconds:  # cut from the audio, as s3prl does
                crop = int(round(self.budget.train_crop_seconds * self.upstream.sample_rate))
            extraction = self.ws.profile.extraction
            return UpstreamFrames(self.upstream, self.ws.corpus_dir, utts, self.layers, pooled=pooled,
                                  device=self.device, crop_samples=crop, seed=self.ws.profile.seed,
                                  autocast=extraction.autocast, workers=extraction.num_workers)
        store = split_stores[0] if len(split_stores) == 1 else StoreUnion(split_stores)
        if pooled:
            return StorePooled(store, utts, self.layers)
        crop = None
        if train and self.budget.train_crop_seconds:
            crop = int(round(self.budget.train_crop_seconds * self.layer_info[self.layers[0]].frame_rate))
        return StoreFrames(store, utts, self.layers, crop_frames=crop, seed=self.ws.profile.seed)

    def run_key(self, lr: float, fold: int | None = None) -> str:
        return config_hash({
            "version": RESULT_VERSION, "model": self.model, "task": self.task_name, "lr": lr, "fold": fold,
            "seed": self.ws.profile.seed, "budget": to_dict(self.budget),
            "probing": {k: v for k, v in to_dict(self.cfg).items() if k not in ("tasks", "device")},
            "features": self.store_keys,
        })


def _folds(inputs: ProbeInputs) -> list[tuple[int | None, dict[str, list[Utterance]]]]:
    """(fold, splits) pairs: ER with folds gives one per configured fold; everything else one."""
    every = [u for utts in inputs.by_split.values() for u in utts]
    if inputs.task_name != "ER" or any(u.fold is None for u in every):
        return [(None, inputs.by_split)]
    out = []
    for fold in inputs.cfg.er_folds:
        test = [u for u in every if u.fold == fold]
        rest = [u for u in every if u.fold != fold]
        if not test:
            raise ManifestError(f"task ER: no utterance in fold {fold}; folds present: {sorted({u.fold for u in every})}")
        rng = np.random.default_rng([inputs.ws.profile.seed, fold])
        dev_mask = np.zeros(len(rest), bool)
        dev_mask[rng.permutation(len(rest))[: int(round(inputs.cfg.er_dev_fraction * len(rest)))]] = True
        out.append((fold, {"train": [u for u, d in zip(rest, dev_mask) if not d],
                           "dev": [u for u, d in zip(rest, dev_mask) if d], "test": test}))
    return out


def _train_one(inputs: ProbeInputs, splits: dict[str, list[Utterance]], lr: float, fold: int | None,
               progress: bool, env=None) -> dict[str, Any]:
    task = make_task(inputs.task_name, splits, inputs.info)
    all_stores = list(inputs.stores.values())
    seed = inputs.ws.profile.seed

    def split(name: str, train: bool) -> Split:
        utts = splits[name]
        stores = [inputs.stores[name]] if fold is None and name in inputs.stores else all_stores
        s = Split(utts, inputs.source(utts, stores, task, train), [task.encode(u) for u in utts])
        if inputs.task_name == "ASV" and name != "train":
            s.trials = read_trials(trials_path(inputs.ws.corpus_dir, name))
        return s

    train, test = split("train", True), split("test", False)
    dev_name = "dev" if "dev" in splits else None
    if inputs.task_name == "ASV" and (inputs.cfg.asv_selection == "test" or dev_name is None
                                      or not trials_path(inputs.ws.corpus_dir, "dev").is_file()):
        dev_name = "test"  # SUPERB's ASV protocol: the checkpoint is chosen on the test trials
    if dev_name is None:
        raise ManifestError(f"task {inputs.task_name}: no dev split to select on")
    dev = test if dev_name == "test" else split(dev_name, False)
    torch.manual_seed(seed)
    dims = [inputs.layer_info[l].dim for l in inputs.layers]
    featurizer = make_featurizer(dims, inputs.cfg.projection, inputs.cfg.projection_dim, inputs.cfg.layer_norm)
    head = task.make_head(featurizer.output_dim or dims[0], inputs.cfg)
    model = ProbeModel(featurizer, head)
    tag = _lr_tag(lr) + (f"-fold{fold}" if fold is not None else "")
    ckpt = inputs.ws.work / "probes" / inputs.model / inputs.task_name / f"{tag}.pt"
    out = train_probe(task, model, train, dev, inputs.budget, lr, seed, ckpt, inputs.run_key(lr, fold),
                      inputs.device, progress, env=env)
    model.load_state_dict(out["best_state"])
    test_metric = out["best"] if dev is test else evaluate(task, model, test, inputs.budget.batch_size, inputs.device)
    return {
        "fold": fold, "dev": out["best"], "test": test_metric, "best_step": out["best_step"],
        "selected_on": dev_name, "layer_weights": [float(x) for x in featurizer.layer_weights()],
        "contributions": [float(x) for x in featurizer.contributions()], "curve": out["curve"],
        "metric": task.metric, "higher_is_better": task.higher_is_better,
        "projected": type(featurizer).__name__ == "ProjectedWeightedSum",
        "pooled": isinstance(train.source, StorePooled) or getattr(train.source, "pooled", False),
    }


def result_dir(ws: Workspace, model: str, task: str) -> Path:
    return ws.results / "probing" / model / task


def run_probe(ws: Workspace, model: str, task: str, lr: float, progress: bool = True, env=None) -> dict[str, Any]:
    """Train (or reuse) the probe of (model, task, lr) and write its result file.

    With `env` (a `DistEnv` of several ranks) every rank trains the probe together
    (DistributedDataParallel) and returns the result; rank 0 writes the files.
    """
    inputs = ProbeInputs(ws, model, task, env)
    key = inputs.run_key(lr)
    path = result_dir(ws, model, task) / f"{_lr_tag(lr)}.json"
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing.get("config_hash") == key:
            return existing
    started = time.perf_counter()
    runs = [_train_one(inputs, splits, lr, fold, progress, env) for fold, splits in _folds(inputs)]
    first = runs[0]
    spec = resolve_spec(model)
    result = {
        "version": RESULT_VERSION, "model": model, "family": spec.family, "task": task, "lr": lr,
        "seed": ws.profile.seed, "metric": first["metric"], "higher_is_better": first["higher_is_better"],
        "dev": float(np.mean([r["dev"] for r in runs])), "test": float(np.mean([r["test"] for r in runs])),
        "layers": [inputs.layer_info[l].name for l in inputs.layers],
        "layer_weights": np.mean([r["layer_weights"] for r in runs], 0).tolist(),
        "contributions": np.mean([r["contributions"] for r in runs], 0).tolist(),
        "projected": first["projected"], "pooled": first["pooled"], "input": inputs.input,
        "runs": runs, "budget": to_dict(inputs.budget), "config_hash": key, "features": inputs.store_keys,
        "profile_hash": profile_hash(ws.profile, model, task, lr),
    }
    if env is None or env.is_main:
        timing = {"wall_seconds": round(time.perf_counter() - started, 3), "device": inputs.device.type}
        if env is not None and env.distributed:
            timing["ranks"] = env.world_size
        atomic_write_json(path, result)
        atomic_write_json(path.with_suffix(".timing.json"), timing)
    if env is not None:
        barrier(env)
    return result


def select_best(ws: Workspace, model: str, task: str) -> dict[str, Any]:
    """Choose the learning rate on dev among the task's grid and write `best.json`."""
    cfg = ws.profile.probing.tasks[task]
    runs = []
    for lr in cfg.lr_grid:
        path = result_dir(ws, model, task) / f"{_lr_tag(lr)}.json"
        if not path.is_file():
            raise StoreError(f"{path}: missing; run `repro probe --profile {ws.profile.name} -m {model} -t {task}`")
        runs.append(json.loads(path.read_text()))
    higher = runs[0]["higher_is_better"]
    best = max(runs, key=lambda r: r["dev"] if higher else -r["dev"])
    summary = {**best, "selected_lr": best["lr"],
               "sweep": [{"lr": r["lr"], "dev": r["dev"], "test": r["test"]} for r in runs]}
    atomic_write_json(result_dir(ws, model, task) / "best.json", summary)
    return summary


def run_asv_idt(ws: Workspace, model: str) -> dict[str, Any] | None:
    """ASV with the model's own embedding (cosine, no training): EER on dev and test trials."""
    results = {}
    for split in ("dev", "test"):
        tpath = trials_path(ws.corpus_dir, split)
        if not tpath.is_file():
            continue
        store = FeatureStore(ws.store_dir(model, "ASV", split, pooled=idt_store_kind(ws.profile) == "pooled"))
        trials = read_trials(tpath)
        ids = {t.enroll for t in trials} | {t.test for t in trials}
        if store.meta["embedding_dim"]:
            emb = {u: store.embedding(u) for u in ids}
            source = "embedding"
        elif ws.profile.probing.asv_idt_without_embedding == "mean_last_layer":
            last = store.num_layers - 1
            emb = {u: np.asarray(store.layer(last, u), np.float64).mean(0) for u in ids}
            source = f"mean of layer {store.layers[last].name}"
        else:
            return None
        results[split] = score_trials(emb, trials)
    result = {"version": RESULT_VERSION, "model": model, "family": resolve_spec(model).family, "task": "ASV-IDT",
              "metric": "eer", "higher_is_better": False, "embedding": source,
              "dev": results.get("dev"), "test": results["test"],
              "profile_hash": profile_hash(ws.profile, model, "ASV-IDT")}
    atomic_write_json(ws.results / "probing" / model / "ASV-IDT.json", result)
    return result


def require_budgets(profile, tasks: list[str]) -> None:
    """ConfigError unless every task has a probing budget in the profile."""
    missing = [t for t in tasks if t not in profile.probing.tasks]
    if missing:
        raise ConfigError(
            f"profile {profile.name}: tasks {missing} have no budget under 'probing.tasks'; add one per task "
            "(steps, batch_size, lr_grid, eval_every) or remove them from 'tasks'"
        )


def run_all(ws: Workspace, models: list[str] | None = None, tasks: list[str] | None = None,
            progress: bool = True, env=None) -> None:
    """Every probe of the profile (all models x tasks x learning rates), then the selections and ASV-IDT.

    With `env` (torchrun) every probe is trained by all ranks together; rank 0 writes the results."""
    require_budgets(ws.profile, tasks or ws.profile.tasks)
    main = env is None or env.is_main
    for model in models or ws.profile.models.all():
        for task in tasks or ws.profile.tasks:
            for lr in ws.profile.probing.tasks[task].lr_grid:
                run_probe(ws, model, task, lr, progress and main, env)
            if main:
                select_best(ws, model, task)
        if "ASV" in (tasks or ws.profile.tasks) and main:
            run_asv_idt(ws, model)
        if env is not None:
            barrier(env)
