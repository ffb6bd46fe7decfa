"""What the probes of one (model, task) read: the utterances of each split (or each fold), the task,
the feature stores or the upstream, the probes' sources, and the probes of a group themselves."""

from __future__ import annotations

import numpy as np
import torch

from repro.config.typed import ConfigError
from repro.data.manifest import ManifestError, Utterance, load_task, manifest_path, read_corpus_info, read_trials, \
    trials_path
from repro.features.stage import load_profile_upstream, model_info, open_store
from repro.features.store import FeatureStore
from repro.probing.featurizer import make_featurizer
from repro.probing.sources import OnTheFly, StoreFrames, StorePooled, UpstreamFrames, check_layers
from repro.probing.tasks import Task, make_task
from repro.probing.trainer import Probe, ProbeModel, Split
from repro.provenance import Stamp, probe_key, resume_key
from repro.remedy import command
from repro.runtime import DistEnv, resolve_device
from repro.tasks import task_input, task_spec
from repro.util.hashing import sha256_file
from repro.workspace import Workspace


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
            return UpstreamFrames(self.upstream, self.ws.corpus_dir, utts, self.layers, OnTheFly(
                pooled, self.device, crop, self.ws.profile.seed, extraction.autocast, extraction.num_workers,
                self.cfg.length_window if train else 1))
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


def fold_group(inputs: ProbeInputs, splits: dict[str, list[Utterance]], lrs: list[float], fold: int | None):
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
                            resume_key(Stamp(inputs.stamp(lr).settings, {**inputs.content, "fold": fold})),
                            fix="delete it (the probe then trains from its start), or train again with "
                                + command("probe", inputs.ws, "-m", inputs.model, "-t", inputs.task_name, "--force")))
    return task, train, dev, test, dev_name, probes


def require_budgets(profile, tasks: list[str]) -> None:
    """ConfigError unless every task has a probing budget in the profile."""
    missing = [t for t in tasks if t not in profile.probing.tasks]
    if missing:
        raise ConfigError(
            f"profile {profile.name}: tasks {missing} have no budget under 'probing.tasks'; add one per task "
            "(steps, batch_size, lr_grid, eval_every) or remove them from 'tasks'"
        )
