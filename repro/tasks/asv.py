"""ASV, automatic speaker verification: VoxCeleb1 (training on its development speakers, the official
test trials), equal error rate of an x-vector head; in the synthetic corpus, SID's training utterances
for training and trial lists over held-out speakers for dev and test."""

from __future__ import annotations

from dataclasses import asdict

from repro.tasks.spec import Column, Prepared, RealCorpus, SynthJob, SynthJobs, TaskSpec


def read(ctx) -> Prepared:
    """VoxCeleb1's development utterances (train) and the utterances of its trial lists."""
    items, trials = ctx.reader.asv_items(ctx.root)
    return Prepared(items, trials=trials)


def drop_short(utterances: list, data, log) -> list:
    """Training utterances shorter than `data.asv_min_seconds` are left out."""
    short = [u for u in utterances if u.split == "train" and u.duration < data.asv_min_seconds]
    if short:
        log(f"  ASV: dropped {len(short)} training utterance(s) shorter than {data.asv_min_seconds} s")
    return [u for u in utterances if not (u.split == "train" and u.duration < data.asv_min_seconds)]


def held_out(ctx, speaker, rng) -> list[SynthJob]:
    """`synthetic.asv_per_speaker` sentences per held-out speaker (the dev or test trials' speakers)."""
    jobs = []
    for k in range(ctx.config.asv_per_speaker):
        uid = f"ASV-{speaker.id}-{k:03d}"
        jobs.append(SynthJob("ASV", uid, speaker.group, speaker.id, speaker.id, ctx.text.random_sentence(rng),
                             ctx.voice(speaker, uid)))
    return jobs


def derived(ctx, utterances: dict) -> list:
    """ASV trains on the closed-set speakers' SID training utterances (the same files)."""
    train = [u for u in utterances["SID"] if u.split == "train"]
    return [type(u)(**{**asdict(u), "split": "train"}) for u in train] + utterances["ASV"]


TASK = TaskSpec(
    "ASV", "automatic speaker verification", "speaker", "voxceleb1", "speaker", "xvector", "eer", False, False,
    "trials", ("xvector_dims", "xvector_embedding_dim", "am_softmax", "asv_selection"), ("data.asv_min_seconds",),
    column=Column("ASV EER↓", True),
    corpus_size={"train": 340.6, "test": 10.8, "item_seconds": 8.0, "format": "wav",
                 "utterances": {"train": 148642, "test": 4715}, "speakers": 1211},
    real=RealCorpus(read, needs=("voxceleb1/dev", "voxceleb1/test", "voxceleb1/trials"),
                    subset_settings=lambda data: {"asv_min_seconds": data.asv_min_seconds}, drop=drop_short),
    synthetic=SynthJobs(held_out=held_out, derived=derived),
)
