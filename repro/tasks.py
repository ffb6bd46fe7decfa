"""The probing tasks, one definition each, read by every stage.

A `TaskSpec` says what a task is (the corpus that serves it, what its labels are, its head,
its metric and direction, whether its head may train on per-utterance layer means, how the
checkpoint is selected on held-out data, and which probing settings its head reads); the
functions below say where a task's probe reads its layers from (`task_input`) and which
feature stores that needs (`stores_needed`). Nothing here imports torch or a stage.

Inputs of a probe (`probing.tasks.<TASK>.input`, else `probing.input`):

    cache     every frame, from a frame store `<split>/`; any task
    pooled    per-layer utterance means, from a pooled store `<split>.pooled/` (KB per utterance);
              mean-pooled heads without layer norm or training crops (KS, IC, ER; SID without crops)
    upstream  layers recomputed by the frozen model at every step (training crops cut from the
              audio); any task, no store

ASV-IDT (the model's own embedding) reads the ASV frame store when ASV reads the cache, else the
ASV pooled stores of the splits with trial lists (dev, test), which hold the embeddings too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from repro.errors import ConfigError

INPUTS = ("cache", "upstream", "pooled")


@dataclass(frozen=True)
class TaskSpec:
    """One probing task.

    Attributes:
        name: the SUPERB abbreviation (`PR`, `KS`, ...).
        title: what is recognised.
        aspect: content, semantics, speaker or paralinguistics (the paper's grouping).
        corpus: the real corpus that serves the task (`data.corpora` defaults to these).
        labels: what an utterance's `label` holds in the manifest: `phones` (a list of phone
            symbols), `class` (one class name), `slots` (a slot -> value mapping) or `speaker`
            (trial splits hold unseen speakers; training speakers are the classes).
        head: `ctc` (frame-wise phone logits), `utterance` (mean over frames, linear maps),
            `slots` (the same, one output per slot) or `xvector` (TDNN, statistics pooling,
            AM-softmax).
        metric: `per` (phone error rate), `accuracy` or `eer` (equal error rate on trial lists).
        higher_is_better: the metric's direction.
        mean_pooled: the head averages frames before anything that does not commute with the
            mean, so it may train on per-layer utterance means (exactly the same maths).
        selection: how the checkpoint and the learning rate are chosen: `dev` (the manifest's
            dev split), `trials` (the dev trial list, or the test trials as SUPERB did with
            `probing.asv_selection: test` or without dev trials), `folds` (cross-validation
            over the manifest's folds, each fold with the dev split recorded for it).
        reads: the `probing.*` settings the head reads (besides the task's budget and the
            settings every probe reads).
        data_reads: the `data.*` settings that shape this task's manifest when it is prepared
            from its real corpus (besides `data.corpora.<task>` and `data.subsets.<task>`).
    """

    name: str
    title: str
    aspect: Literal["content", "semantics", "speaker", "paralinguistics"]
    corpus: str
    labels: Literal["phones", "class", "slots", "speaker"]
    head: Literal["ctc", "utterance", "slots", "xvector"]
    metric: Literal["per", "accuracy", "eer"]
    higher_is_better: bool
    mean_pooled: bool
    selection: Literal["dev", "trials", "folds"]
    reads: tuple[str, ...]
    data_reads: tuple[str, ...] = ()


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("PR", "phoneme recognition", "content", "librispeech", "phones", "ctc", "per", False, False, "dev",
             ("head_dim",), ("data.pr_oov",)),
    TaskSpec("KS", "keyword spotting", "content", "speech-commands", "class", "utterance", "accuracy", True, True,
             "dev", ("head_dim", "pooled_shortcut")),
    TaskSpec("IC", "intent classification", "semantics", "fluent-speech-commands", "slots", "slots", "accuracy",
             True, True, "dev", ("head_dim", "pooled_shortcut")),
    TaskSpec("SID", "speaker identification", "speaker", "voxceleb1", "class", "utterance", "accuracy", True, True,
             "dev", ("head_dim", "pooled_shortcut")),
    TaskSpec("ASV", "automatic speaker verification", "speaker", "voxceleb1", "speaker", "xvector", "eer", False,
             False, "trials", ("xvector_dims", "xvector_embedding_dim", "am_softmax", "asv_selection"),
             ("data.asv_min_seconds",)),
    TaskSpec("ER", "emotion recognition", "paralinguistics", "iemocap", "class", "utterance", "accuracy", True, True,
             "folds", ("head_dim", "pooled_shortcut", "er_folds"), ("data.er_test_fold", "data.er_valid_ratio")),
)}
TASK_NAMES = tuple(TASKS)
MEAN_POOLED_TASKS = tuple(t.name for t in TASKS.values() if t.mean_pooled)
# Settings every probe reads, whatever its task (`probing.<name>`); which input it reads is
# `task_input` (from `probing.input` and `probing.tasks.<task>.input`).
PROBE_READS = ("layer_norm", "projection", "projection_dim", "layers")


def task_spec(name: str) -> TaskSpec:
    """The spec of task `name`; ConfigError listing the tasks for any other name."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; tasks: {', '.join(TASK_NAMES)}") from None


def why_not_pooled(profile, task: str) -> str | None:
    """None when `task` can train on utterance means exactly, else the reason it cannot."""
    budget = profile.probing.tasks.get(task)
    if not task_spec(task).mean_pooled:
        return f"the {task} head does not average its frames"
    if profile.probing.layer_norm:
        return "probing.layer_norm normalises every frame, which does not commute with the mean"
    if budget is not None and budget.train_crop_seconds:
        return f"its training crops (probing.tasks.{task}.train_crop_seconds) need the frames"
    if not profile.probing.pooled_shortcut:
        return "probing.pooled_shortcut is off"
    return None


def task_input(profile, task: str) -> str:
    """The input of `task`: its budget's `input`, else `probing.input`; ConfigError if it cannot be used."""
    budget = profile.probing.tasks.get(task)
    chosen = budget.input if budget is not None and budget.input else profile.probing.input
    if chosen == "pooled":
        reason = why_not_pooled(profile, task)
        if reason:
            raise ConfigError(f"profile {profile.name}: probing.tasks.{task}.input is 'pooled', but {reason}; "
                              "use 'cache' or 'upstream' for this task")
    return chosen


def stores_needed(profile, task: str, split: str | None = None) -> list[str]:
    """Store kinds (`frames`, `pooled`) the profile's probes of `task` read from `split` (None: any split)."""
    if task not in profile.probing.tasks:
        return ["frames"]
    chosen = task_input(profile, task)
    if chosen == "cache":
        return ["frames"]
    if chosen == "pooled":
        return ["pooled"]
    if task == "ASV" and split != "train":  # ASV-IDT scores the dev/test trials with the pooled stores' embeddings
        return ["pooled"]
    return []


def idt_store_kind(profile) -> str:
    """The ASV store kind ASV-IDT reads: frames when ASV reads the cache, else pooled."""
    return "frames" if "ASV" not in profile.probing.tasks or task_input(profile, "ASV") == "cache" else "pooled"
