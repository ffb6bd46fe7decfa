"""PR, phoneme recognition: LibriSpeech train-clean-100 / dev-clean / test-clean, phone error rate
of a CTC head; in the synthetic corpus, sentences labelled with the phonemes libespeak-ng spoke."""

from __future__ import annotations

from repro.tasks.spec import Column, Prepared, RealCorpus, SynthJob, SynthJobs, TaskSpec

SPLITS = ("train", "dev", "test")


def read(ctx) -> Prepared:
    """Every LibriSpeech utterance of the three splits, labelled with its phones; the labels are the
    phone inventory (s3prl's phoneme vocabulary)."""
    items, vocab = ctx.reader.items(ctx.root, list(SPLITS), ctx.data.pr_oov)
    return Prepared(items, vocab)


def phones_file(labels: list[str]) -> dict[str, str]:
    """`phones.txt`: the phone inventory, one a line."""
    return {"phones.txt": "".join(f"{p}\n" for p in labels)}


def closed(ctx, speaker, rng) -> list[SynthJob]:
    """`synthetic.pr_per_speaker` random sentences per closed-set speaker (labelled when rendered)."""
    jobs = []
    for k in range(ctx.config.pr_per_speaker):
        uid = f"PR-{speaker.id}-{k:03d}"
        jobs.append(SynthJob("PR", uid, speaker.group, speaker.id, None, ctx.text.random_sentence(rng),
                             ctx.voice(speaker, uid)))
    return jobs


TASK = TaskSpec(
    "PR", "phoneme recognition", "content", "librispeech", "phones", "ctc", "per", False, False, "dev",
    ("head_dim",), ("data.pr_oov",),
    column=Column("PR PER↓", True),
    corpus_size={"train": 100.6, "dev": 5.4, "test": 5.4, "item_seconds": 12.7, "format": "flac",
                 "utterances": {"train": 28539, "dev": 2703, "test": 2620},
                 "lengths": {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}},
    real=RealCorpus(read, needs=("librispeech/train-clean-100", "librispeech/dev-clean", "librispeech/test-clean",
                                 "librispeech-lexicon/lexicon-200k", "librispeech-lexicon/lexicon-allothers",
                                 "librispeech-lexicon/phoneme-vocab"),
                    files=phones_file),
    synthetic=SynthJobs(closed=closed),
)
