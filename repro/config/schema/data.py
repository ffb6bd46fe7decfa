"""Settings of the corpora: the synthetic corpus's size, the real corpora and their subsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from repro.config.schema.common import setting
from repro.config.typed import Range
from repro.tasks import TASKS


@dataclass(frozen=True)
class SynthConfig:
    """Size of the synthetic espeak-ng corpus (see `repro.data.synth`)."""

    RANGES = {**{k: Range(1) for k in ("speakers", "asv_speakers", "asv_dev_speakers", "dev_speakers", "test_speakers",
                                       "pr_per_speaker", "ks_repeats", "ic_per_speaker", "sid_per_speaker",
                                       "er_per_style", "er_folds", "asv_per_speaker")},
              "ks_unknown_per_speaker": Range(0), "ks_silence_per_speaker": Range(0), "snr_db": Range(0, low_open=True)}

    speakers: int = setting(36, "at least 30 voices so SID and ASV have a real population")
    asv_speakers: int = setting(10, "held-out speakers for the ASV trial lists, disjoint from training")
    asv_dev_speakers: int = setting(4, "of the held-out speakers, those whose trials form the dev list")
    dev_speakers: int = setting(4, "speaker-disjoint dev split for PR/KS/IC, as in the real corpora")
    test_speakers: int = setting(4, "speaker-disjoint test split for PR/KS/IC")
    pr_per_speaker: int = setting(8, "phoneme-labelled sentences per speaker")
    ks_repeats: int = setting(1, "recordings of each of the 10 keywords per speaker")
    ks_unknown_per_speaker: int = setting(2, "non-keyword words per speaker (_unknown_)")
    ks_silence_per_speaker: int = setting(1, "noise-only clips per speaker (_silence_)")
    ic_per_speaker: int = setting(8, "spoken commands per speaker")
    sid_per_speaker: int = setting(8, "utterances per closed-set speaker for SID (train/dev/test)")
    er_per_style: int = setting(2, "sentences per speaker and speaking style")
    er_folds: int = setting(5, "speaker-group folds, like IEMOCAP's five sessions")
    asv_per_speaker: int = setting(6, "utterances per held-out speaker for the trial list")
    snr_db: float = setting(35.0, "light white noise so no clip is digital silence")


@dataclass(frozen=True)
class CorpusConfig:
    """Which corpus the profile runs on."""

    kind: Literal["synthetic", "real"]
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass(frozen=True)
class SubsetRule:
    """Which utterances of one task split to keep; the limits apply in this order, each keeping the
    items whose hash rank (sha256 of seed, task and id) is lowest. None keeps everything."""

    speakers: int | None = None
    per_label: int | None = None
    utterances: int | None = None

    def __repr__(self) -> str:
        set_ = ", ".join(f"{k}={v}" for k, v in vars(self).items() if v is not None)
        return f"SubsetRule({set_})"


@dataclass(frozen=True)
class DataConfig:
    """Real corpora: where they live, which corpus serves each task, and the subsets of a profile
    (see `repro.data.prepare`)."""

    RANGES = {"cka_utterances": Range(1), "er_test_fold": Range(1), "er_valid_ratio": Range(0, 1, True, True),
              "asv_min_seconds": Range(0), "workers": Range(1)}

    root: str = setting("data", "downloads and extracted corpora; $REPRO_DATA overrides it")
    lock_file: str = setting(
        "data.lock.json", "sha256 of every verified download and hash of every utterance list; commit it "
        "($REPRO_DATA_LOCK overrides)"
    )
    corpora: dict[str, str] = setting(
        {t.name: t.corpus for t in TASKS.values()}, "the SUPERB corpus of each task (repro/tasks.py)")
    manual_paths: dict[str, str] = setting(
        {}, "folders of user-provided corpora (IEMOCAP, Fluent Speech Commands) when not under the data root"
    )
    subsets: dict[str, dict[str, SubsetRule]] = setting(
        {}, "per task and split, the utterances kept (e.g. the fast profile's smaller training sets); "
        "empty keeps SUPERB's full splits", open=True,
    )
    cka_utterances: int = setting(
        500, "LibriSpeech utterances in the CKA set (manifests/CKA.jsonl); the paper's CKA data is not known",
        open=True,
    )
    cka_split: Literal["train", "dev", "test"] = setting(
        "test", "the PR split (LibriSpeech test-clean) the CKA utterances come from", open=True,
    )
    pr_oov: Literal["error", "spn"] = setting(
        "error", "a word in neither s3prl lexicon: refuse with the list of such words, or label it SPN"
    )
    er_test_fold: int = setting(
        1, "the IEMOCAP session written as the test split (s3prl's default fold1); `fold` keeps every session"
    )
    er_valid_ratio: float = setting(0.2, "s3prl's emotion valid_ratio: dev = a seeded 20% of the training sessions")
    asv_min_seconds: float = setting(
        2.0, "s3prl drops ASV training utterances under 2 s (after sox silence trimming; here on raw length)"
    )
    workers: int = setting(8, "threads reading audio headers and hashing audio files at prepare time")
