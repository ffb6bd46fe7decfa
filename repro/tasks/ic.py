"""IC, intent classification: Fluent Speech Commands (action, object and location slots), accuracy of
a mean-pooled head with one output per slot; in the synthetic corpus, spoken commands with those slots."""

from __future__ import annotations

from repro.tasks.spec import Column, Prepared, RealCorpus, SynthJob, SynthJobs, TaskSpec

CORPUS = "fluent-speech-commands"


def read(ctx) -> Prepared:
    """Fluent Speech Commands' utterances in their official splits (a corpus the user provides); the
    labels are every slot's values."""
    items, values = ctx.reader.items(ctx.manual_dirs[CORPUS], CORPUS)
    return Prepared(items, values)


def closed(ctx, speaker, rng) -> list[SynthJob]:
    """`synthetic.ic_per_speaker` commands per closed-set speaker, cycling through the intents in an order
    drawn for the speaker."""
    T = ctx.text
    intents = sorted(T.INTENTS)
    order = rng.permutation(len(intents))
    jobs = []
    for k in range(ctx.config.ic_per_speaker):
        intent = intents[order[k % len(intents)]]
        text = str(rng.choice(T.INTENTS[intent]))
        uid = f"IC-{speaker.id}-{k:03d}"
        jobs.append(SynthJob("IC", uid, speaker.group, speaker.id, dict(zip(T.IC_SLOTS, intent)), text,
                             ctx.voice(speaker, uid)))
    return jobs


def labels(ctx, speakers) -> dict[str, list[str]]:
    """Every slot's values."""
    T = ctx.text
    return {slot: sorted({k[i] for k in T.INTENTS}) for i, slot in enumerate(T.IC_SLOTS)}


TASK = TaskSpec(
    "IC", "intent classification", "semantics", CORPUS, "slots", "slots", "accuracy", True, True, "dev",
    ("head_dim", "pooled_shortcut"),
    column=Column("IC Acc↑", False),
    corpus_size={"train": 14.7, "dev": 1.9, "test": 2.4, "item_seconds": 2.3, "format": "wav",
                 "utterances": {"train": 23132, "dev": 3118, "test": 3793}},
    real=RealCorpus(read),
    synthetic=SynthJobs(closed=closed, labels=labels),
)
