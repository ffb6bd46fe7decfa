"""ER, emotion recognition: IEMOCAP (four emotions, five sessions as folds), accuracy of a mean-pooled
head; in the synthetic corpus, four speaking styles (pitch, speed, amplitude) in folds of speakers."""

from __future__ import annotations

from repro.tasks.spec import Column, Prepared, RealCorpus, SynthJob, SynthJobs, TaskSpec

CORPUS = "iemocap"


def read(ctx) -> Prepared:
    """IEMOCAP's utterances of the four emotions (a corpus the user provides), with their folds."""
    items, labels = ctx.reader.items(ctx.manual_dirs[CORPUS], CORPUS, ctx.data.er_test_fold, ctx.data.er_valid_ratio)
    return Prepared(items, labels)


def fold_splits(fold: int, folds: int) -> dict[str, str]:
    """The split of an utterance of `fold` when each of `folds` folds is held out: that fold is
    test, the next one (cyclically) dev, the others train; speaker-disjoint, like IEMOCAP sessions."""
    return {str(held): "test" if fold == held else "dev" if fold == held % folds + 1 else "train"
            for held in range(1, folds + 1)}


def closed(ctx, speaker, rng) -> list[SynthJob]:
    """`synthetic.er_per_style` sentences per closed-set speaker and style, in the speaker's fold."""
    splits = fold_splits(speaker.fold, ctx.config.er_folds)
    jobs = []
    for style, params in ctx.text.ER_STYLES.items():
        for k in range(ctx.config.er_per_style):
            uid = f"ER-{speaker.id}-{style}-{k:03d}"
            voice = ctx.voice(speaker, uid, params)
            jobs.append(SynthJob("ER", uid, splits["1"], speaker.id, style, ctx.text.random_sentence(rng), voice,
                                 fold=speaker.fold, fold_splits=splits))
    return jobs


TASK = TaskSpec(
    "ER", "emotion recognition", "paralinguistics", CORPUS, "class", "utterance", "accuracy", True, True, "folds",
    ("head_dim", "pooled_shortcut", "er_folds"), ("data.er_test_fold", "data.er_valid_ratio"),
    column=Column("ER Acc↑", False),
    corpus_size={"all": 7.0, "item_seconds": 4.6, "format": "wav", "utterances": {"all": 5531}},
    real=RealCorpus(read, subset_settings=lambda data: {"er_test_fold": data.er_test_fold,
                                                        "er_valid_ratio": data.er_valid_ratio}),
    synthetic=SynthJobs(closed=closed, labels=lambda ctx, speakers: list(ctx.text.ER_STYLES)),
)
