"""What a probing task is, as one record: `TaskSpec`, with the pieces the stages read from it.

A task module (`repro/tasks/pr.py`, ..., or a file of one's own registered with
`repro.tasks.register`) builds one `TaskSpec`:

    spec fields      what is recognised, the labels, head, metric, selection and settings read
    column           its column in the probing table (`Column`: header, error-rate flag)
    corpus_size      the full corpus's hours and utterances per split (the cost projection's table)
    real             how its manifest is prepared from its real corpus (`RealCorpus`), or None
    synthetic        what the synthetic corpus makes for it (`SynthJobs`), or None

The hooks are plain functions that receive a context from the stage that runs them
(`repro.data.prepare.PrepareContext`, `repro.data.synth.SynthContext`), so a task module imports
nothing from a stage and stays readable from every floor of the package. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class Column:
    """The task's column in the probing table: `header` (e.g. `PR PER↓`) and whether its metric is an
    error rate (`error_rate`: lower is better, shown as such in the figures)."""

    header: str
    error_rate: bool


@dataclass(frozen=True)
class Prepared:
    """What a task's real-corpus reader found (before subsets are drawn).

    Attributes:
        items: every candidate utterance (`repro.data.prepare.common.Item`, each with its split).
        labels: the label set recorded in `corpus.json` (None: the training split's labels).
        trials: `{split: [Trial]}` trial lists (tasks with `selection: trials`), else None.
    """

    items: list
    labels: Any = None
    trials: dict | None = None


@dataclass(frozen=True)
class RealCorpus:
    """How a task's manifest is prepared from its real corpus (`TaskSpec.corpus`).

    Attributes:
        read: `read(ctx) -> Prepared`; `ctx` is a `repro.data.prepare.PrepareContext` (the data root,
            the folder being written, the seed, the `data` settings, the manual corpora's folders and
            `ctx.reader`, the reader module of the task's corpus).
        needs: the archive keys (`corpus/archive`) it reads; empty for a corpus the user provides.
        subset_settings: `subset_settings(data) -> dict | None`, the `data.*` values besides the subset
            rule that decide which utterances a split holds (part of the subset lists' lock keys).
        keep: `keep(items) -> items`, applied after the subsets are drawn (SID's closed set).
        drop: `drop(utterances, data, log) -> utterances`, applied once the audio is inspected.
        files: `files(labels) -> {relative path: text}`, extra files of the corpus folder (phones.txt).
    """

    read: Callable[[Any], Prepared]
    needs: tuple[str, ...] = ()
    subset_settings: Callable[[Any], dict | None] | None = None
    keep: Callable[[list], list] | None = None
    drop: Callable[[list, Any, Callable], list] | None = None
    files: Callable[[Any], dict[str, str]] | None = None


@dataclass(frozen=True)
class SynthJob:
    """One clip of the synthetic corpus: speech (`text` spoken by `voice`) or background noise (`text` None).

    `voice` is a `repro.data.espeak.Voice`; `clip_samples` pads or crops the clip to that length."""

    task: str
    id: str
    split: str
    speaker: str
    label: object
    text: str | None
    voice: Any
    clip_samples: int | None = None
    fold: int | None = None
    fold_splits: dict[str, str] | None = None


@dataclass(frozen=True)
class SynthJobs:
    """What the synthetic corpus makes for a task; `ctx` is a `repro.data.synth.SynthContext` (its
    settings, seed, sample rate, voices and the sentence generator `ctx.text`).

    Attributes:
        closed: `closed(ctx, speaker, rng) -> [SynthJob]` for every closed-set speaker, in the corpus's
            speaker order; `rng` is that speaker's generator, shared by the tasks in registry order.
        held_out: `held_out(ctx, speaker, rng) -> [SynthJob]` for every held-out (ASV) speaker.
        derived: `derived(ctx, utterances) -> [Utterance]`, the task's final manifest from every task's
            rendered utterances (`{task: [Utterance]}`), e.g. ASV's training split reusing SID's files.
        labels: `labels(ctx, speakers) -> label set` recorded in `corpus.json` (None: none recorded;
            a `phones` task records the phonemes spoken).
    """

    closed: Callable | None = None
    held_out: Callable | None = None
    derived: Callable | None = None
    labels: Callable | None = None


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
        column: its column in the probing table.
        corpus_size: the full corpus per split: hours (`train`, `dev`, `test` or `all`), `item_seconds`,
            `format`, `utterances` per split, `speakers` where subsets draw speakers (the projection).
        real: how it is prepared from its real corpus (None: not preparable from a real corpus).
        synthetic: what the synthetic corpus makes for it (None: not in the synthetic corpus).
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
    column: Column | None = None
    corpus_size: dict = field(default_factory=dict, compare=False)
    real: RealCorpus | None = field(default=None, compare=False)
    synthetic: SynthJobs | None = field(default=None, compare=False)
