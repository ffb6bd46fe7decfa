"""KS, keyword spotting: Speech Commands v0.01 (ten keywords, `_unknown_`, `_silence_`: 12 classes),
accuracy of a mean-pooled head; in the synthetic corpus, 1 s clips of the same words and noise."""

from __future__ import annotations

from repro.tasks.spec import Column, Prepared, RealCorpus, SynthJob, SynthJobs, TaskSpec


def read(ctx) -> Prepared:
    """Speech Commands' utterances in their official splits, plus the 1 s `_silence_` clips cut (into
    the corpus folder) from its background-noise files."""
    items, labels = ctx.reader.items(ctx.root, ctx.tmp, ctx.seed)
    return Prepared(items, labels)


def closed(ctx, speaker, rng) -> list[SynthJob]:
    """Per closed-set speaker: every keyword `synthetic.ks_repeats` times, `ks_unknown_per_speaker`
    other words (`_unknown_`) and `ks_silence_per_speaker` background-noise clips (`_silence_`), 1 s each."""
    T, clip = ctx.text, ctx.sample_rate  # 1 s, as in Speech Commands
    words = [(w, w) for w in T.KEYWORDS for _ in range(ctx.config.ks_repeats)]
    words += [(str(rng.choice(T.UNKNOWN_WORDS)), T.UNKNOWN_LABEL) for _ in range(ctx.config.ks_unknown_per_speaker)]
    jobs = []
    for k, (word, label) in enumerate(words):
        uid = f"KS-{speaker.id}-{k:03d}"
        jobs.append(SynthJob("KS", uid, speaker.group, speaker.id, label, word, ctx.voice(speaker, uid), clip))
    for k in range(ctx.config.ks_silence_per_speaker):
        uid = f"KS-noise-{speaker.id}-{k:03d}"
        jobs.append(SynthJob("KS", uid, speaker.group, "_noise_", T.SILENCE_LABEL, None, None, clip))
    return jobs


TASK = TaskSpec(
    "KS", "keyword spotting", "content", "speech-commands", "class", "utterance", "accuracy", True, True, "dev",
    ("head_dim", "pooled_shortcut"),
    column=Column("KS Acc↑", False),
    corpus_size={"train": 14.2, "dev": 1.9, "test": 0.9, "item_seconds": 1.0, "format": "wav",
                 "utterances": {"train": 51094, "dev": 6798, "test": 3081}},
    real=RealCorpus(read, needs=("speech-commands/v0.01", "speech-commands/test-v0.01")),
    synthetic=SynthJobs(closed=closed, labels=lambda ctx, speakers: ctx.text.KS_LABELS),
)
