"""The probe stage: every (model, task, learning rate) of a profile, its selection on dev, ASV-IDT.

For each (model, task, learning rate) one file `ws.probe_dir(model, task)/lr-<lr>.json` with
dev and test metrics, raw and norm-corrected layer weights, the training curve, the seed and
the provenance stamp (`repro.provenance`; wall time goes to a `.timing.json` beside it, so
result files are byte-stable); `best.json` beside them selects the learning rate on dev.
ASV-IDT (the model's own embedding, cosine, no training) goes to `ws.asv_idt_file(model)`.

A result whose stamp equals the one a run would write now is kept; anything else is trained
again. The functions return what they did (`ProbeOutcome`); printing is the caller's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repro.config.typed import ConfigError, to_dict
from repro.data.manifest import ManifestError, Utterance, load_task, manifest_path, read_corpus_info, read_trials, \
    trials_path
from repro.features.stage import load_profile_upstream, model_info, open_store
from repro.features.pooling import frames_mean
from repro.features.store import FeatureStore
from repro.probing.featurizer import make_featurizer
from repro.probing.fused import Fold, Stacked, evaluate_fused, fusable, train_fused
from repro.probing.sources import StoreFrames, StorePooled, UpstreamFrames, check_layers
from repro.probing.tasks import Task, make_task
from repro.probing.trainer import NonFiniteLoss, Probe, ProbeModel, Split, evaluate, free_device_memory, \
    group_memory, score_trials, train_group
from repro.provenance import Stamp, asv_idt_key, is_complete, probe_key
from repro.remedy import command
from repro.runtime import DistEnv, barrier, resolve_device, tf32_context, writer_lock
from repro.util.locks import output_lock
from repro.tasks import idt_store_kind, task_input, task_spec
from repro.util.atomic import atomic_write_json, check_writable
from repro.util.hashing import sha256_file
from repro.weights import remove_checkpoint
from repro.workspace import Workspace

RESULT_VERSION = 2


@dataclass(frozen=True)
class ProbeOutcome:
    """One result file of the probe stage, and whether it was made now or was up to date."""

    model: str
    task: str
    lr: float | None  # None: the selection (`best.json`) or ASV-IDT
    metric: str
    dev: float | None
    test: float
    path: Path
    skipped: bool
    detail: str = ""  # the selected lr (best.json), the embedding used (ASV-IDT)
    result: dict = field(default_factory=dict, repr=False)  # the result file's content


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


def lr_tag(lr: float) -> str:
    """The file tag of a learning rate: `lr-1e-03` for 0.001, `lr-1.2e-03` for 0.0012.

    The fewest significant digits that give `lr` back exactly, so distinct learning rates never
    share a result file (a value of one significant digit keeps the one-digit tag it always had)."""
    for digits in range(17):
        text = f"{lr:.{digits}e}"
        if float(text) == lr:
            return f"lr-{text}"
    return f"lr-{lr!r}"


class ProbeInputs:
    """Everything the probes of (model, task) need: utterances, task, stores or upstream.

    `input` is the task's input (`repro.tasks.task_input`): frame stores (`cache`), pooled stores
    (`pooled`) or the upstream on the fly (`upstream`). `content` identifies what is read (store
    keys, or the weights and the task's manifest), for the probes' provenance stamps.
    """

    def __init__(self, ws: Workspace, model: str, task_name: str, env: DistEnv | None = None):
        self.ws, self.model, self.task_name = ws, model, task_name
        self.spec = task_spec(task_name)
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
            kind = "pooled" if self.input == "pooled" else "frames"
            self.stores = {s: open_store(ws, model, task_name, s, kind) for s in self.by_split}
            self.layer_info = self.stores["train"].layers
            self.content = {s: st.key for s, st in sorted(self.stores.items())}
        else:
            self.upstream = load_profile_upstream(ws, model, env)
            self.layer_info = self.upstream.layer_info()
            self.content = {"weights": model_info(model, self.upstream)["weights_sha256"],
                            "manifest": sha256_file(manifest_path(ws.corpus_dir, task_name))}
        self.layers = check_layers(len(self.layer_info), self.cfg.layers, f"model {model}")
        self.device = resolve_device(self.cfg.device, "probing.device")
        if self.upstream is not None:
            self.upstream.to(self.device)

    def stamp(self, lr: float | None) -> Stamp:
        """The provenance stamp of the probe of this (model, task) at `lr` (None: the selection)."""
        return Stamp(probe_key(self.ws.profile, self.model, self.task_name, lr), self.content)

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
                                  autocast=extraction.autocast, workers=extraction.num_workers,
                                  length_window=self.cfg.length_window if train else 1)
        store = split_stores[0] if len(split_stores) == 1 else StoreUnion(split_stores)
        if pooled:
            return StorePooled(store, utts, self.layers)
        crop = None
        if train and self.budget.train_crop_seconds:
            crop = int(round(self.budget.train_crop_seconds * self.layer_info[self.layers[0]].frame_rate))
        return StoreFrames(store, utts, self.layers, crop_frames=crop, seed=self.ws.profile.seed)

    def folds(self) -> list[tuple[int | None, dict[str, list[Utterance]]]]:
        """(fold, splits) pairs: a task selected over folds gives one per `probing.er_folds`, with the
        splits the manifest records for that fold; any other task gives its manifest's splits."""
        every = [u for utts in self.by_split.values() for u in utts]
        if self.spec.selection != "folds" or any(u.fold is None for u in every):
            return [(None, self.by_split)]
        path = manifest_path(self.ws.corpus_dir, self.task_name)
        out = []
        for fold in self.cfg.er_folds:
            key = str(fold)
            lacking = [u.id for u in every if not u.fold_splits or key not in u.fold_splits]
            if lacking:
                raise ManifestError(f"{path}: {len(lacking)} utterance(s) have no split for fold {fold} (fold_splits), "
                                    f"e.g. {lacking[:3]}; folds present: {sorted({u.fold for u in every})}; make the "
                                    "corpus again (`repro run --stage corpus --force`) or set probing.er_folds")
            splits = {s: [u for u in every if u.fold_splits[key] == s] for s in ("train", "dev", "test")}
            if not splits["test"]:
                raise ManifestError(f"{path}: no utterance is held out for fold {fold}; set probing.er_folds")
            out.append((fold, splits))
        return out


def _fold_group(inputs: ProbeInputs, splits: dict[str, list[Utterance]], lrs: list[float], fold: int | None):
    """The task, the train / dev / test splits and the probes of `lrs` on one set of splits."""
    task = make_task(inputs.task_name, splits, inputs.info)
    all_stores = list(inputs.stores.values())
    seed = inputs.ws.profile.seed

    def split(name: str, train: bool) -> Split:
        utts = splits[name]
        stores = [inputs.stores[name]] if fold is None and name in inputs.stores else all_stores
        s = Split(utts, inputs.source(utts, stores, task, train), [task.encode(u) for u in utts])
        if inputs.spec.selection == "trials" and name != "train":
            s.trials = read_trials(trials_path(inputs.ws.corpus_dir, name))
        return s

    train, test = split("train", True), split("test", False)
    dev_name = "dev" if splits.get("dev") else None
    if inputs.spec.selection == "trials" and (inputs.cfg.asv_selection == "test" or dev_name is None
                                              or not trials_path(inputs.ws.corpus_dir, "dev").is_file()):
        dev_name = "test"  # SUPERB's ASV protocol: the checkpoint is chosen on the test trials
    if dev_name is None:
        raise ManifestError(f"{manifest_path(inputs.ws.corpus_dir, inputs.task_name)}: task {inputs.task_name} "
                            "has no dev split to select on")
    dev = test if dev_name == "test" else split(dev_name, False)
    dims = [inputs.layer_info[l].dim for l in inputs.layers]
    probes = []
    for lr in lrs:
        torch.manual_seed(seed)  # every probe starts from the weights a solo run of its lr starts from
        featurizer = make_featurizer(dims, inputs.cfg.projection, inputs.cfg.projection_dim, inputs.cfg.layer_norm)
        head = task.make_head(featurizer.output_dim or dims[0], inputs.cfg)
        tag = lr_tag(lr) + (f"-fold{fold}" if fold is not None else "")
        probes.append(Probe(lr, ProbeModel(featurizer, head),
                            inputs.ws.probe_checkpoint_dir(inputs.model, inputs.task_name) / f"{tag}.pt",
                            Stamp(inputs.stamp(lr).settings, {**inputs.content, "fold": fold}).key,
                            fix="delete it (the probe then trains from its start), or train again with "
                                + command("probe", inputs.ws, "-m", inputs.model, "-t", inputs.task_name, "--force")))
    return task, train, dev, test, dev_name, probes


def _train_folds(inputs: ProbeInputs, lrs: list[float], progress: bool, env: DistEnv | None = None,
                 on_eval=None) -> dict[float, list[dict[str, Any]]]:
    """Train the probes of `lrs` on every fold of (model, task); each one's run records (one per fold), by
    lr. Pooled probes (`fused.fusable`) of every fold train as one fused group (`repro.probing.fused`);
    any other group trains fold by fold (`trainer.train_group`)."""
    built = [(fold, _fold_group(inputs, splits, lrs, fold)) for fold, splits in inputs.folds()]
    runs: dict[float, list[dict[str, Any]]] = {lr: [] for lr in lrs}
    if all(fusable(g[0], g[1], g[5]) for _, g in built):
        folds = [Fold(task, train, dev, probes) for _, (task, train, dev, _, _, probes) in built]
        outs = train_fused(folds, inputs.budget, inputs.ws.profile.seed, inputs.device, inputs.cfg.tf32, progress,
                           on_eval, env)
        for (fold, group), fold_outs in zip(built, outs):
            for lr, run in _fold_records(inputs, fold, group, fold_outs, fused=True).items():
                runs[lr].append(run)
        return runs
    for fold, group in built:
        task, train, dev, _, _, probes = group
        outs = train_group(task, probes, train, dev, inputs.budget, inputs.ws.profile.seed, inputs.device,
                           progress, on_eval, env, tf32=inputs.cfg.tf32)
        for lr, run in _fold_records(inputs, fold, group, outs, fused=False).items():
            runs[lr].append(run)
    return runs


def _fold_records(inputs: ProbeInputs, fold: int | None, group: tuple, outs: list[dict[str, Any]],
                  fused: bool) -> dict[float, dict[str, Any]]:
    """The run record of each probe of one fold's group, by lr (a probe that stopped on a non-finite loss:
    `{"failed": <why>}`), its best state loaded and tested."""
    task, train, dev, test, dev_name, probes = group
    failed = {p.lr: out["failed"] for p, out in zip(probes, outs) if out["failed"]}
    kept = [(p, out) for p, out in zip(probes, outs) if p.lr not in failed]
    probes, outs = [p for p, _ in kept], [out for _, out in kept]
    for p, out in zip(probes, outs):
        p.model.load_state_dict(out["best_state"])
    if dev is test or not probes:
        tests = [out["best"] for out in outs]
    elif fused:
        with tf32_context(inputs.cfg.tf32):
            tests = evaluate_fused(task, Stacked(probes, 1, inputs.device), range(len(probes)), test,
                                   inputs.budget.batch_size, inputs.device)
    else:
        tests = evaluate(task, [p.model for p in probes], test, inputs.budget.batch_size, inputs.device,
                         inputs.cfg.tf32)
    return {lr: {"failed": why} for lr, why in failed.items()} | {p.lr: {
        "fold": fold, "dev": out["best"], "test": metric, "best_step": out["best_step"],
        "selected_on": dev_name, "layer_weights": [float(x) for x in p.model.featurizer.layer_weights()],
        "contributions": [float(x) for x in p.model.featurizer.contributions()], "curve": out["curve"],
        "projected": type(p.model.featurizer).__name__ == "ProjectedWeightedSum",
        "pooled": isinstance(train.source, StorePooled) or getattr(train.source, "pooled", False),
    } for p, out, metric in zip(probes, outs, tests)}


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged result is made again


def _outcome(data: dict, path: Path, skipped: bool, detail: str = "") -> ProbeOutcome:
    return ProbeOutcome(data["model"], data["task"], data.get("lr"), data["metric"], data.get("dev"), data["test"],
                        path, skipped, detail, data)


def run_probe(ws: Workspace, model: str, task: str, lr: float, progress: bool = True, env: DistEnv | None = None,
              force: bool = False, inputs: ProbeInputs | None = None) -> ProbeOutcome:
    """Train (or keep, when complete) the probe of (model, task, lr) alone; see `run_probes`."""
    return run_probes(ws, model, task, [lr], progress, env, force, inputs)[0]


def run_probes(ws: Workspace, model: str, task: str, lrs: list[float], progress: bool = True,
               env: DistEnv | None = None, force: bool = False, inputs: ProbeInputs | None = None,
               on_eval=None, device_memory: int | None = None) -> list[ProbeOutcome]:
    """Train (or keep, when complete) the probes of (model, task) at `lrs` and write their result files.

    The learning rates whose results are not complete train together as probe groups of at most
    `probing.max_group` (one forward of each micro-batch for the whole group); the results equal
    those of solo runs; on a GPU (or given `device_memory` bytes) groups are cut further to the
    probes that fit its free memory (`trainer.group_memory`). A probe whose training loss becomes
    non-finite stops alone: the group's others go on and write their results, then `NonFiniteLoss`
    names it. With `env` (a `DistEnv` of several ranks) every rank trains the groups
    together (one gradient all-reduce per step); rank 0 writes the files. `force` trains again from scratch.
    The results of (model, task) have one writer at a time: a second run waits for their lock
    (`repro.runtime.writer_lock`), then keeps what the first one wrote.
    Returns the outcomes in the order of `lrs`.
    """
    inputs = inputs or ProbeInputs(ws, model, task, env)
    folder = ws.probe_dir(model, task)
    with writer_lock(env, ws.lock_file(folder), f"probe results {folder}", ws.profile.distributed.timeout_seconds):
        return _run_probes(ws, model, task, lrs, progress, env, force, inputs, on_eval, device_memory)


def _run_probes(ws: Workspace, model: str, task: str, lrs: list[float], progress: bool, env: DistEnv | None,
                force: bool, inputs: ProbeInputs, on_eval, device_memory: int | None = None) -> list[ProbeOutcome]:
    """`run_probes` under the lock of the results of (model, task)."""
    paths = {lr: ws.probe_dir(model, task) / f"{lr_tag(lr)}.json" for lr in lrs}
    done: dict[float, ProbeOutcome] = {}
    for lr in lrs:
        existing = _read_json(paths[lr])
        if not force and existing is not None and is_complete(existing.get("provenance"), inputs.stamp(lr)):
            done[lr] = _outcome(existing, paths[lr], skipped=True)
    pending = [lr for lr in lrs if lr not in done]
    size = inputs.cfg.max_group or len(pending) or 1
    free = device_memory if device_memory is not None else free_device_memory(inputs.device)
    if free is not None and len(pending) > 0:
        size = min(size, _fitting_group(inputs, pending[0], free))
    failed: list[str] = []
    for group in (pending[i:i + size] for i in range(0, len(pending), size)):
        if force and (env is None or env.is_main):
            for lr in group:
                for ckpt in ws.probe_checkpoint_dir(model, task).glob(f"{lr_tag(lr)}*.pt"):
                    remove_checkpoint(ckpt)
        barrier(env)
        started = time.perf_counter()
        runs = _train_folds(inputs, group, progress, env, on_eval)
        seconds = time.perf_counter() - started
        for lr in group:
            why = [run["failed"] for run in runs[lr] if run.get("failed")]
            if why:  # stopped on a non-finite loss: no result file
                failed.append(why[0])
                continue
            result = _result(inputs, lr, runs[lr])
            if env is None or env.is_main:
                timing = {"wall_seconds": round(seconds, 3), "group": [float(x) for x in group],
                          "device": inputs.device.type}
                if env is not None and env.distributed:
                    timing["ranks"] = env.world_size
                atomic_write_json(paths[lr], result)
                atomic_write_json(paths[lr].with_suffix(".timing.json"), timing)
            done[lr] = _outcome(result, paths[lr], skipped=False)
        barrier(env)
    if failed:
        raise NonFiniteLoss(f"model {model}: " + "; ".join(failed))
    return [done[lr] for lr in lrs]


def _fitting_group(inputs: ProbeInputs, lr: float, free: int) -> int:
    """How many probes of (model, task) fit in `free` bytes of device memory (`trainer.group_memory`,
    counted on the first micro-batch of the first fold); a `ConfigError` when not one does."""
    fold, splits = inputs.folds()[0]
    task, train, _, _, _, (probe,) = _fold_group(inputs, splits, [lr], fold)
    plan = group_memory(task, probe.model, train, inputs.budget, inputs.ws.profile.seed, inputs.device)
    return max(1, plan.fitting(free, inputs.task_name))


def _result(inputs: ProbeInputs, lr: float, runs: list[dict]) -> dict[str, Any]:
    """The result file of one learning rate: its runs (one per fold) and their means."""
    first = runs[0]
    return {
        "version": RESULT_VERSION, "model": inputs.model, "task": inputs.task_name, "lr": lr,
        "seed": inputs.ws.profile.seed, "metric": inputs.spec.metric, "higher_is_better": inputs.spec.higher_is_better,
        "dev": float(np.mean([r["dev"] for r in runs])), "test": float(np.mean([r["test"] for r in runs])),
        "layers": [inputs.layer_info[l].name for l in inputs.layers],
        "layer_weights": np.mean([r["layer_weights"] for r in runs], 0).tolist(),
        "contributions": np.mean([r["contributions"] for r in runs], 0).tolist(),
        "projected": first["projected"], "pooled": first["pooled"], "input": inputs.input,
        "runs": runs, "budget": to_dict(inputs.budget), "provenance": inputs.stamp(lr).as_dict(),
    }


def select_best(ws: Workspace, model: str, task: str, inputs: ProbeInputs | None = None) -> ProbeOutcome:
    """Choose the learning rate on dev among the task's grid and write `best.json`."""
    import json

    grid = ws.profile.probing.tasks[task].lr_grid
    runs = []
    for lr in grid:
        path = ws.probe_dir(model, task) / f"{lr_tag(lr)}.json"
        if not path.is_file():
            raise ManifestError(f"{path}: missing; run {command('probe', ws, '-m', model, '-t', task)}")
        runs.append(json.loads(path.read_text()))
    higher = runs[0]["higher_is_better"]
    best = max(runs, key=lambda r: r["dev"] if higher else -r["dev"])
    stamp = (inputs or ProbeInputs(ws, model, task)).stamp(None)
    summary = {**best, "selected_lr": best["lr"], "provenance": stamp.as_dict(),
               "sweep": [{"lr": r["lr"], "dev": r["dev"], "test": r["test"]} for r in runs]}
    path = ws.probe_dir(model, task) / "best.json"
    with output_lock(ws.lock_file(path.parent), f"probe results {path.parent}"):
        atomic_write_json(path, summary)
    return _outcome({**summary, "lr": None}, path, skipped=False, detail=f"selected lr={best['lr']:g}")


def run_asv_idt(ws: Workspace, model: str, force: bool = False) -> ProbeOutcome | None:
    """ASV with the model's own embedding (cosine, no training): EER on dev and test trials.

    None when the model has no embedding and `probing.asv_idt_without_embedding` is `skip`."""
    kind = idt_store_kind(ws.profile)
    splits = [s for s in ("dev", "test") if trials_path(ws.corpus_dir, s).is_file()]
    if "test" not in splits:
        raise ManifestError(f"{trials_path(ws.corpus_dir, 'test')}: missing; ASV-IDT scores the test trials")
    stores = {s: open_store(ws, model, "ASV", s, kind) for s in splits}
    stamp = Stamp(asv_idt_key(ws.profile, model), {s: st.key for s, st in stores.items()})
    path = ws.asv_idt_file(model)
    with output_lock(ws.lock_file(path), f"ASV-IDT result {path}"):
        return _asv_idt(ws, model, force, stores, stamp, path)


def _asv_idt(ws: Workspace, model: str, force: bool, stores: dict[str, FeatureStore], stamp: Stamp,
             path: Path) -> ProbeOutcome | None:
    """`run_asv_idt` under the lock of its result file."""
    existing = _read_json(path)
    if not force and existing is not None and is_complete(existing.get("provenance"), stamp):
        return _outcome(existing, path, skipped=True, detail=existing["embedding"])
    results = {}
    source = ""
    for split, store in stores.items():
        trials = read_trials(trials_path(ws.corpus_dir, split))
        ids = {t.enroll for t in trials} | {t.test for t in trials}
        if store.meta["embedding_dim"]:
            emb = {u: store.embedding(u) for u in ids}
            source = "embedding"
        elif ws.profile.probing.asv_idt_without_embedding == "mean_last_layer":
            last = store.num_layers - 1
            emb = {u: frames_mean(store.layer(last, u)) for u in ids}
            source = f"mean of layer {store.layers[last].name}"
        else:
            return None
        results[split] = score_trials(emb, trials)
    result = {"version": RESULT_VERSION, "model": model, "task": "ASV-IDT", "metric": "eer",
              "higher_is_better": False, "embedding": source, "dev": results.get("dev"), "test": results["test"],
              "provenance": stamp.as_dict()}
    atomic_write_json(path, result)
    return _outcome(result, path, skipped=False, detail=source)


def require_budgets(profile, tasks: list[str]) -> None:
    """ConfigError unless every task has a probing budget in the profile."""
    missing = [t for t in tasks if t not in profile.probing.tasks]
    if missing:
        raise ConfigError(
            f"profile {profile.name}: tasks {missing} have no budget under 'probing.tasks'; add one per task "
            "(steps, batch_size, lr_grid, eval_every) or remove them from 'tasks'"
        )


def run_all(ws: Workspace, models: list[str] | None = None, tasks: list[str] | None = None,
            lrs: list[float] | None = None, progress: bool = True, env: DistEnv | None = None,
            force: bool = False) -> list[ProbeOutcome]:
    """Every probe of the profile (models x tasks x learning rates), then the selections and ASV-IDT.

    `lrs` trains only those learning rates and selects nothing. With `env` (torchrun) every probe is
    trained by all ranks together; rank 0 writes the results and returns the outcomes (the other
    ranks return theirs too, identical). `force` trains everything again."""
    tasks = list(tasks or ws.profile.tasks)
    require_budgets(ws.profile, tasks)
    bad = [lr for lr in lrs or [] if not lr > 0 or lr == float("inf")]
    if bad:
        raise ConfigError(f"--lr {bad[0]:g}: a learning rate must be a finite number > 0")
    main = env is None or env.is_main
    if main:  # where results and checkpoints go: a read-only folder is met now, not after training
        check_writable(ws.results / "probing")
        check_writable(ws.work / "probes")
    done: list[ProbeOutcome] = []
    for model in models or ws.profile.models.all():
        for task in tasks:
            inputs = ProbeInputs(ws, model, task, env)
            done += run_probes(ws, model, task, list(lrs or ws.profile.probing.tasks[task].lr_grid),
                               progress and main, env, force, inputs)
            if not lrs and main:
                done.append(select_best(ws, model, task, inputs))
        if "ASV" in tasks and not lrs and main:
            idt = run_asv_idt(ws, model, force)
            if idt is not None:
                done.append(idt)
        barrier(env)
    return done

