"""The built-in synthetic SUPERB-like corpus, spoken by libespeak-ng (`repro.data.espeak`).

`make_corpus(out, config, seed)` writes a corpus folder (see `repro.data.manifest`)
with real speech and real labels for every probing task of the paper:

- PR: sentences labelled with the phonemes libespeak-ng spoke (`phones.txt` is the inventory);
- KS: 1 s clips of the ten Speech Commands keywords, `_unknown_` words and `_silence_`
  cut from generated background-noise files (12 classes);
- IC: spoken commands with action / object / location slots;
- SID: closed-set speaker identification over the closed-set speakers;
- ASV: training = SID's training utterances; dev/test trial lists over held-out speakers;
- ER: four speaking styles (pitch, speed, amplitude) standing in for emotions, in folds.

Speakers are espeak-ng voices (language x variant) with their own pitch and speed.
PR/KS/IC splits are speaker-disjoint, as in the real corpora. Everything random
comes from `seed` and the utterance id, so the same seed gives byte-identical
audio and manifests whatever the number of worker threads.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from repro.audio import SAMPLE_RATE, write_wav
from repro.config.schema import SynthConfig
from repro.config.typed import to_dict
from repro.data import synth_text as T
from repro.data.espeak import Voice, synthesize, voice_library
from repro.data.manifest import Trial, Utterance, manifest_path, trials_path, write_manifest, write_trials
from repro.errors import ConfigError
from repro.provenance import Stamp, complete_record, synthetic_corpus_key
from repro.tasks import TASK_NAMES
from repro.util.atomic import atomic_directory, atomic_write_json, atomic_write_text
from repro.util.hashing import sha256_file
from repro.util.progress import progress_bar

GENERATOR_VERSION = 3  # 2: ER fold splits in the manifest; 3: libespeak-ng through its C API (1: the espeak-ng program)
LANGUAGES = ["en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
KS_CLIP_SAMPLES = SAMPLE_RATE  # 1 s, as in Speech Commands
BACKGROUND_NOISES = ["white_noise", "pink_noise", "brown_noise", "hum"]
BACKGROUND_SECONDS = 10.0


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: a voice plus its role in the splits."""

    id: str
    voice: Voice
    role: str  # "closed" (PR/KS/IC/SID/ER, ASV training) or "asv_dev" / "asv_test" (held out)
    group: str  # train/dev/test for the speaker-disjoint tasks; the ASV split for held-out speakers
    fold: int  # ER fold (1-based) for closed-set speakers, 0 otherwise


@dataclass(frozen=True)
class Job:
    """One clip to render: speech (`text` with `voice`) or background noise (`text` None)."""

    task: str
    id: str
    split: str
    speaker: str
    label: object
    text: str | None
    voice: Voice | None
    clip_samples: int | None = None  # pad or crop to this length (KS)
    fold: int | None = None
    fold_splits: dict[str, str] | None = None


def fold_splits(fold: int, folds: int) -> dict[str, str]:
    """The split of an utterance of `fold` when each of `folds` folds is held out: that fold is
    test, the next one (cyclically) dev, the others train; speaker-disjoint, like IEMOCAP sessions."""
    return {str(held): "test" if fold == held else "dev" if fold == held % folds + 1 else "train"
            for held in range(1, folds + 1)}


def corpus_stamp(config: SynthConfig, seed: int) -> Stamp:
    """What a synthetic corpus made now from (`config`, `seed`) is made from: the settings key of
    those settings (`repro.provenance.synthetic_corpus_key`), the generator's version and the voice
    library that speaks it (`voice_library` fails where libespeak-ng is missing)."""
    return Stamp(synthetic_corpus_key(config, seed), {"generator": GENERATOR_VERSION, "voice_library": voice_library()})


def plan_speakers(config: SynthConfig, seed: int) -> list[Speaker]:
    """Draw the speakers and their roles; raises ValueError on inconsistent sizes."""
    grid = list(itertools.product(LANGUAGES, VARIANTS))
    closed = config.speakers - config.asv_speakers
    if config.speakers > len(grid):
        raise ConfigError(f"synthetic.speakers={config.speakers}: at most {len(grid)} distinct voices exist")
    if closed < config.dev_speakers + config.test_speakers + 1 or config.asv_dev_speakers >= config.asv_speakers:
        raise ConfigError(
            "synthetic corpus sizes are inconsistent: need speakers - asv_speakers > dev_speakers + test_speakers "
            "and asv_dev_speakers < asv_speakers"
        )
    rng = np.random.default_rng([seed, 1])
    picks = rng.permutation(len(grid))[: config.speakers]
    speakers = []
    for i, gi in enumerate(picks):
        lang, variant = grid[gi]
        voice = Voice(lang, variant, pitch=float(rng.uniform(28, 72)), speed=float(rng.uniform(145, 185)))
        if i < closed:
            group = "dev" if i < config.dev_speakers else "test" if i < config.dev_speakers + config.test_speakers else "train"
            speakers.append(Speaker(f"spk{i:02d}", voice, "closed", group, fold=i % config.er_folds + 1))
        else:
            asv_split = "dev" if i - closed < config.asv_dev_speakers else "test"
            speakers.append(Speaker(f"spk{i:02d}", voice, f"asv_{asv_split}", asv_split, fold=0))
    return speakers


def _utt_rng(seed: int, utt_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(utt_id.encode()).digest()[:8], "little")])


def _jitter(voice: Voice, rng: np.random.Generator, style: dict[str, float] | None = None) -> Voice:
    style = style or T.ER_STYLES["neu"]
    return Voice(
        voice.language,
        voice.variant,
        pitch=voice.pitch + style["pitch"] + rng.uniform(-3, 3),
        speed=voice.speed * style["speed"] * rng.uniform(0.95, 1.05),
        amplitude=style["amplitude"],
    )


def plan_jobs(config: SynthConfig, seed: int, speakers: list[Speaker]) -> list[Job]:
    """Every clip of the corpus, in a fixed order."""
    if config.sid_per_speaker < 3:
        raise ConfigError("synthetic.sid_per_speaker must be at least 3 (train, dev and test utterances)")
    jobs: list[Job] = []
    closed = [s for s in speakers if s.role == "closed"]
    intents = sorted(T.INTENTS)
    for s in closed:
        rng = np.random.default_rng([seed, 2, int(s.id[3:])])
        for k in range(config.pr_per_speaker):
            uid = f"PR-{s.id}-{k:03d}"
            jobs.append(Job("PR", uid, s.group, s.id, None, T.random_sentence(rng), _jitter(s.voice, _utt_rng(seed, uid))))
        words = [(w, w) for w in T.KEYWORDS for _ in range(config.ks_repeats)]
        words += [(str(rng.choice(T.UNKNOWN_WORDS)), T.UNKNOWN_LABEL) for _ in range(config.ks_unknown_per_speaker)]
        for k, (word, label) in enumerate(words):
            uid = f"KS-{s.id}-{k:03d}"
            jobs.append(Job("KS", uid, s.group, s.id, label, word, _jitter(s.voice, _utt_rng(seed, uid)), KS_CLIP_SAMPLES))
        for k in range(config.ks_silence_per_speaker):
            uid = f"KS-noise-{s.id}-{k:03d}"
            jobs.append(Job("KS", uid, s.group, "_noise_", T.SILENCE_LABEL, None, None, KS_CLIP_SAMPLES))
        order = rng.permutation(len(intents))
        for k in range(config.ic_per_speaker):
            intent = intents[order[k % len(intents)]]
            text = str(rng.choice(T.INTENTS[intent]))
            uid = f"IC-{s.id}-{k:03d}"
            label = dict(zip(T.IC_SLOTS, intent))
            jobs.append(Job("IC", uid, s.group, s.id, label, text, _jitter(s.voice, _utt_rng(seed, uid))))
        for k in range(config.sid_per_speaker):
            split = "test" if k == config.sid_per_speaker - 1 else "dev" if k == config.sid_per_speaker - 2 else "train"
            uid = f"SID-{s.id}-{k:03d}"
            jobs.append(Job("SID", uid, split, s.id, s.id, T.random_sentence(rng), _jitter(s.voice, _utt_rng(seed, uid))))
        er_splits = fold_splits(s.fold, config.er_folds)
        for style, params in T.ER_STYLES.items():
            for k in range(config.er_per_style):
                uid = f"ER-{s.id}-{style}-{k:03d}"
                voice = _jitter(s.voice, _utt_rng(seed, uid), params)
                jobs.append(Job("ER", uid, er_splits["1"], s.id, style, T.random_sentence(rng), voice, fold=s.fold,
                                fold_splits=er_splits))
    for s in speakers:
        if s.role == "closed":
            continue
        rng = np.random.default_rng([seed, 3, int(s.id[3:])])
        for k in range(config.asv_per_speaker):
            uid = f"ASV-{s.id}-{k:03d}"
            jobs.append(Job("ASV", uid, s.group, s.id, s.id, T.random_sentence(rng), _jitter(s.voice, _utt_rng(seed, uid))))
    return jobs


def make_background_noises(seed: int) -> dict[str, np.ndarray]:
    """Background-noise recordings (like Speech Commands' `_background_noise_`), [num_samples] each."""
    n = int(BACKGROUND_SECONDS * SAMPLE_RATE)
    rng = np.random.default_rng([seed, 4])
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 1.0)
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # remove the drift
    t = np.arange(n) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 50 * h * t) / h for h in (1, 2, 3, 5)) + 0.05 * rng.standard_normal(n)
    out = {}
    for name, x in zip(BACKGROUND_NOISES, [white, pink, brown, hum]):
        out[name] = (0.3 * x / np.max(np.abs(x))).astype(np.float32)
    return out


def render(job: Job, seed: int, config: SynthConfig, noises: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The waveform [num_samples] (float32, 16 kHz) and phonemes of one job."""
    rng = _utt_rng(seed, job.id)
    if job.text is None:
        name = BACKGROUND_NOISES[int(rng.integers(len(BACKGROUND_NOISES)))]
        src = noises[name]
        start = int(rng.integers(0, len(src) - job.clip_samples))
        return (src[start : start + job.clip_samples] * rng.uniform(0.05, 1.0)).astype(np.float32), []
    speech, phonemes = synthesize(job.text, job.voice)
    speech = _trim_silence(speech)
    if job.clip_samples is not None:
        wav = np.zeros(job.clip_samples, dtype=np.float32)
        if len(speech) > job.clip_samples:
            start = (len(speech) - job.clip_samples) // 2
            speech = speech[start : start + job.clip_samples]
        offset = int(rng.integers(0, job.clip_samples - len(speech) + 1))
        wav[offset : offset + len(speech)] = speech
    else:
        lead, tail = (int(rng.uniform(0.05, 0.3) * SAMPLE_RATE) for _ in range(2))
        wav = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    active = speech[np.abs(speech) > 1e-3]
    rms = float(np.sqrt(np.mean(active**2))) if active.size else 1e-2
    wav = wav + rng.standard_normal(len(wav)).astype(np.float32) * rms / 10 ** (config.snr_db / 20)
    return np.clip(wav, -1.0, 1.0).astype(np.float32), phonemes


def _trim_silence(wav: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(wav) > threshold)
    return wav[idx[0] : idx[-1] + 1] if idx.size else wav


def make_corpus(
    out: str | os.PathLike,
    config: SynthConfig,
    seed: int,
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write the synthetic corpus to folder `out` (atomically) and return its path.

    `corpus.json` records the corpus's stamp (`corpus_stamp`) as its `provenance`. An existing
    corpus whose stamp is complete (`repro.provenance.is_complete`) is kept as it is, unless
    `force`; any other content of `out` is replaced, and a corpus folder that is there but not
    complete is named with the reason in one line.
    """
    out = Path(out)
    stamp = corpus_stamp(config, seed)  # needs the voice library: fails before anything is written
    if not force and complete_record(out / "corpus.json", stamp, "made again", print if progress else None):
        return out
    speakers = plan_speakers(config, seed)
    jobs = plan_jobs(config, seed, speakers)
    noises = make_background_noises(seed)
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    with atomic_directory(out, replace=True) as tmp:
        for name, wav in noises.items():
            write_wav(tmp / "audio" / "KS" / "_background_noise_" / f"{name}.wav", wav)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda j: render(j, seed, config, noises), jobs)
            utterances: dict[str, list[Utterance]] = {t: [] for t in TASK_NAMES}
            phone_counts: Counter[str] = Counter()
            for job, (wav, phonemes) in progress_bar(
                zip(jobs, results), total=len(jobs), desc="synth corpus", unit="clip", disable=not progress
            ):
                rel = f"audio/{job.task}/{job.id}.wav"
                write_wav(tmp / rel, wav)
                label = phonemes if job.task == "PR" else job.label
                if job.task == "PR":
                    phone_counts.update(phonemes)
                utterances[job.task].append(
                    Utterance(
                        id=job.id, split=job.split, path=rel, num_samples=len(wav),
                        duration=round(len(wav) / SAMPLE_RATE, 6), speaker=job.speaker, label=label,
                        sha256=sha256_file(tmp / rel), text=job.text, fold=job.fold, fold_splits=job.fold_splits,
                    )
                )
        # ASV trains on the closed-set speakers' SID training utterances (same files).
        utterances["ASV"] = [
            Utterance(**{**asdict(u), "split": "train"}) for u in utterances["SID"] if u.split == "train"
        ] + utterances["ASV"]
        for task, utts in utterances.items():
            write_manifest(manifest_path(tmp, task), utts)
        trial_counts = {}
        for split in ("dev", "test"):
            held = [u for u in utterances["ASV"] if u.split == split]
            trials = [Trial(a.speaker == b.speaker, a.id, b.id) for a, b in itertools.combinations(held, 2)]
            write_trials(trials_path(tmp, split), trials)
            trial_counts[split] = {"target": sum(t.target for t in trials), "nontarget": sum(not t.target for t in trials)}
        phones = sorted(phone_counts)
        atomic_write_text(tmp / "phones.txt", "".join(f"{p}\n" for p in phones))
        info = {
            "name": "synthetic-espeak",
            "generator_version": GENERATOR_VERSION,
            "voice_library": voice_library(),
            "seed": seed,
            "config": to_dict(config),
            "provenance": stamp.as_dict(),
            "sample_rate": SAMPLE_RATE,
            "speakers": [
                {"id": s.id, "voice": s.voice.spec(), "pitch": round(s.voice.pitch, 3), "speed": round(s.voice.speed, 3),
                 "role": s.role, "group": s.group, "fold": s.fold}
                for s in speakers
            ],
            "labels": {
                "PR": phones,
                "KS": T.KS_LABELS,
                "IC": {slot: sorted({k[i] for k in T.INTENTS}) for i, slot in enumerate(T.IC_SLOTS)},
                "SID": sorted(s.id for s in speakers if s.role == "closed"),
                "ER": list(T.ER_STYLES),
            },
            "counts": {
                task: dict(sorted(Counter(u.split for u in utts).items())) for task, utts in utterances.items()
            },
            "asv_trials": trial_counts,
            "hours": round(sum(u.duration for utts in utterances.values() for u in utts) / 3600, 4),
        }
        atomic_write_json(tmp / "corpus.json", info)
    if progress:
        print(f"synthetic corpus: {len(jobs)} clips in {time.perf_counter() - started:.1f} s -> {out}")
    return out
