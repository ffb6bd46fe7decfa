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

What each task's clips are is its module's (`repro.tasks`: `TaskSpec.synthetic`, called with a
`SynthContext`); every registered task with synthetic jobs is made, in registry order.
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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from repro.audio import SAMPLE_RATE, write_wav
from repro.config.schema import SynthConfig
from repro.config.typed import to_dict
from repro.data import synth_text as T
from repro.data.espeak import Voice, synthesize, voice_library
from repro.data.manifest import Trial, Utterance, manifest_path, trials_path, write_manifest, write_trials
from repro.errors import ConfigError
from repro.provenance import Stamp, complete_record, synthetic_corpus_key
from repro.tasks import TASK_NAMES, TASKS, TaskSpec
from repro.tasks.spec import SynthJob
from repro.util.atomic import atomic_directory, atomic_write_json, atomic_write_text
from repro.util.hashing import sha256_file
from repro.util.progress import progress_bar

GENERATOR_VERSION = 3  # 2: ER fold splits in the manifest; 3: libespeak-ng through its C API (1: the espeak-ng program)
LANGUAGES = ["en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
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


Job = SynthJob  # one clip to render (repro.tasks.spec.SynthJob)


@dataclass(frozen=True)
class SynthContext:
    """What a task's `SynthJobs` hooks read: the corpus settings, the seed, the sample rate (Hz) and the
    sentence and vocabulary generator `text` (`repro.data.synth_text`); `voice` gives an utterance its voice."""

    config: SynthConfig
    seed: int
    sample_rate: int = SAMPLE_RATE
    text: ModuleType = T

    def voice(self, speaker: Speaker, uid: str, style: dict[str, float] | None = None) -> Voice:
        """`speaker`'s voice for utterance `uid`, jittered (seeded by the utterance id) and in `style`
        (`synth_text.ER_STYLES`; default neutral)."""
        return _jitter(speaker.voice, _utt_rng(self.seed, uid), style)


def synthetic_tasks() -> list[TaskSpec]:
    """The registered tasks the synthetic corpus makes, in registry order."""
    return [t for t in TASKS.values() if t.synthetic is not None]


def corpus_stamp(config: SynthConfig, seed: int) -> Stamp:
    """What a synthetic corpus made now from (`config`, `seed`) is made from: the settings key of
    those settings (`repro.provenance.synthetic_corpus_key`), the generator's version and the voice
    library that speaks it (`voice_library` fails where libespeak-ng is missing)."""
    inputs = {"generator": GENERATOR_VERSION, "voice_library": voice_library()}
    extra = [t.name for t in synthetic_tasks() if t.name not in TASK_NAMES]
    if extra:  # tasks registered besides the built-in ones are made too
        inputs["tasks"] = extra
    return Stamp(synthetic_corpus_key(config, seed), inputs)


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
    """Every clip of the corpus, in a fixed order: for each closed-set speaker every task's clips (one
    generator per speaker, drawn from in registry order), then each held-out speaker's."""
    ctx = SynthContext(config, seed)
    tasks = [t.synthetic for t in synthetic_tasks()]
    jobs: list[Job] = []
    for s in speakers:
        if s.role == "closed":
            rng = np.random.default_rng([seed, 2, int(s.id[3:])])
            jobs += [j for t in tasks if t.closed for j in t.closed(ctx, s, rng)]
    for s in speakers:
        if s.role != "closed":
            rng = np.random.default_rng([seed, 3, int(s.id[3:])])
            jobs += [j for t in tasks if t.held_out for j in t.held_out(ctx, s, rng)]
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
    ctx = SynthContext(config, seed)
    started = time.perf_counter()
    with atomic_directory(out, replace=True) as tmp:
        for name, wav in noises.items():
            write_wav(tmp / "audio" / "KS" / "_background_noise_" / f"{name}.wav", wav)
        utterances, phones = _render_all(tmp, jobs, ctx, noises, workers or os.cpu_count() or 1, progress)
        for spec in synthetic_tasks():
            if spec.synthetic.derived:
                utterances[spec.name] = spec.synthetic.derived(ctx, utterances)
        for task, utts in utterances.items():
            write_manifest(manifest_path(tmp, task), utts)
        trial_counts = _write_trials(tmp, utterances)
        atomic_write_text(tmp / "phones.txt", "".join(f"{p}\n" for p in phones))
        info = _corpus_info(ctx, stamp, speakers, utterances, phones)
        info["asv_trials"] = trial_counts
        info["hours"] = round(sum(u.duration for utts in utterances.values() for u in utts) / 3600, 4)
        atomic_write_json(tmp / "corpus.json", info)
    if progress:
        print(f"synthetic corpus: {len(jobs)} clips in {time.perf_counter() - started:.1f} s -> {out}")
    return out


def _render_all(tmp: Path, jobs: list[Job], ctx: SynthContext, noises: dict[str, np.ndarray], workers: int,
                progress: bool) -> tuple[dict[str, list[Utterance]], list[str]]:
    """Render every job into `tmp/audio/<task>/<id>.wav` on `workers` threads (written in job order);
    ({task: [Utterance]}, the sorted phonemes spoken in the `phones` tasks)."""
    utterances: dict[str, list[Utterance]] = {t.name: [] for t in synthetic_tasks()}
    phone_tasks = {t.name for t in synthetic_tasks() if t.labels == "phones"}
    phone_counts: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda j: render(j, ctx.seed, ctx.config, noises), jobs)
        for job, (wav, phonemes) in progress_bar(
            zip(jobs, results), total=len(jobs), desc="synth corpus", unit="clip", disable=not progress
        ):
            rel = f"audio/{job.task}/{job.id}.wav"
            write_wav(tmp / rel, wav)
            label = phonemes if job.task in phone_tasks else job.label
            if job.task in phone_tasks:
                phone_counts.update(phonemes)
            utterances[job.task].append(
                Utterance(
                    id=job.id, split=job.split, path=rel, num_samples=len(wav),
                    duration=round(len(wav) / SAMPLE_RATE, 6), speaker=job.speaker, label=label,
                    sha256=sha256_file(tmp / rel), text=job.text, fold=job.fold, fold_splits=job.fold_splits,
                )
            )
    return utterances, sorted(phone_counts)


def _write_trials(tmp: Path, utterances: dict[str, list[Utterance]]) -> dict[str, dict[str, int]]:
    """Trial lists over every pair of the dev and of the test utterances of the task selected on trials;
    their target and non-target counts per split."""
    counts = {}
    for spec in synthetic_tasks():
        if spec.selection != "trials":
            continue
        for split in ("dev", "test"):
            held = [u for u in utterances[spec.name] if u.split == split]
            trials = [Trial(a.speaker == b.speaker, a.id, b.id) for a, b in itertools.combinations(held, 2)]
            write_trials(trials_path(tmp, split), trials)
            counts[split] = {"target": sum(t.target for t in trials), "nontarget": sum(not t.target for t in trials)}
    return counts


def _corpus_info(ctx: SynthContext, stamp: Stamp, speakers: list[Speaker], utterances: dict[str, list[Utterance]],
                 phones: list[str]) -> dict:
    """`corpus.json`'s content but the trial counts and hours."""
    labels = {}
    for spec in synthetic_tasks():
        if spec.labels == "phones":
            labels[spec.name] = phones
        elif spec.synthetic.labels:
            labels[spec.name] = spec.synthetic.labels(ctx, speakers)
    return {
        "name": "synthetic-espeak",
        "generator_version": GENERATOR_VERSION,
        "voice_library": voice_library(),
        "seed": ctx.seed,
        "config": to_dict(ctx.config),
        "provenance": stamp.as_dict(),
        "sample_rate": SAMPLE_RATE,
        "speakers": [
            {"id": s.id, "voice": s.voice.spec(), "pitch": round(s.voice.pitch, 3), "speed": round(s.voice.speed, 3),
             "role": s.role, "group": s.group, "fold": s.fold}
            for s in speakers
        ],
        "labels": labels,
        "counts": {task: dict(sorted(Counter(u.split for u in utts).items())) for task, utts in utterances.items()},
    }
