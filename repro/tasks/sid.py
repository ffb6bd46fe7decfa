"""SID, speaker identification: VoxCeleb1's identification split (1,251 speakers, closed set), accuracy
of a mean-pooled head; in the synthetic corpus, sentences of the closed-set speakers."""

from __future__ import annotations

from repro.errors import ConfigError
from repro.tasks.spec import Column, Prepared, RealCorpus, SynthJob, SynthJobs, TaskSpec


def read(ctx) -> Prepared:
    """VoxCeleb1's utterances in the splits of its identification list."""
    return Prepared(ctx.reader.sid_items(ctx.root))


def closed_set(items: list) -> list:
    """Dev and test keep the speakers trained on (the subsets may have dropped some)."""
    train_speakers = {it.speaker for it in items if it.split == "train"}
    return [it for it in items if it.speaker in train_speakers]


def closed(ctx, speaker, rng) -> list[SynthJob]:
    """`synthetic.sid_per_speaker` sentences per closed-set speaker: the last one test, the one before dev."""
    n = ctx.config.sid_per_speaker
    if n < 3:
        raise ConfigError("synthetic.sid_per_speaker must be at least 3 (train, dev and test utterances)")
    jobs = []
    for k in range(n):
        split = "test" if k == n - 1 else "dev" if k == n - 2 else "train"
        uid = f"SID-{speaker.id}-{k:03d}"
        jobs.append(SynthJob("SID", uid, split, speaker.id, speaker.id, ctx.text.random_sentence(rng),
                             ctx.voice(speaker, uid)))
    return jobs


TASK = TaskSpec(
    "SID", "speaker identification", "speaker", "voxceleb1", "class", "utterance", "accuracy", True, True, "dev",
    ("head_dim", "pooled_shortcut"),
    column=Column("SID Acc↑", False),
    corpus_size={"train": 317.1, "dev": 15.8, "test": 18.9, "item_seconds": 8.0, "format": "wav",
                 "utterances": {"train": 138361, "dev": 6904, "test": 8251}, "speakers": 1251},
    real=RealCorpus(read, needs=("voxceleb1/dev", "voxceleb1/test", "voxceleb1/iden-split"), keep=closed_set),
    synthetic=SynthJobs(closed=closed,
                        labels=lambda ctx, speakers: sorted(s.id for s in speakers if s.role == "closed")),
)
