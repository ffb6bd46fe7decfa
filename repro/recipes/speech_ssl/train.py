"""`repro train --recipe hubert|wavlm`: pre-train a speech SSL model by masked prediction and publish it.

    work/<profile>/ssl_training/targets/<key>.npz   k-means cluster labels of every frame (shared by the
                                                    recipes while their target settings agree)
    work/<profile>/ssl_training/<name>/             checkpoint.pt, train_log.jsonl, timing.json,
                                                    failure.json (a rejected run)
    work/<profile>/models/<name>/                   the finished model: save_pretrained's folder
                                                    (config.json, model.safetensors,
                                                    preprocessor_config.json), model.json, train_log.jsonl,
                                                    loss.png

A step takes `batch_size` training utterances (a seeded permutation per pass), cuts every one to the shortest
of them (at most `crop_seconds`) at a random frame boundary, mixes another utterance of the batch into a
`mix_prob` share of them (WavLM), masks spans of frames (HuBERT's mask_prob and mask_length) and minimises
the cross-entropy of the cluster of each masked frame (`repro.recipes.speech_ssl.model`). The learning rate rises linearly
over `warmup_fraction` of the steps and falls linearly to 0. Every draw is a function of (seed, step), and a
checkpoint holds the networks and the optimizer, so a resumed run equals an uninterrupted one bit for bit (on
one device, one thread count).

The held-out utterances (training utterances kept out of training, never dev or test; whole) give the masked-prediction accuracy
of the untrained and the trained network, beside the majority-cluster rate (the accuracy of always answering
the most frequent cluster of those frames). A model is published only if its accuracy beats that rate
(`ssl_training.require_above_majority`); otherwise `failure.json` says why and `SslTrainingFailed` is raised.
`model.json` records the model's stamp (`training_stamp`) as its `provenance`; a published model whose stamp is
complete (`repro.provenance.is_complete`) is reused.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repro import recipes
from repro.errors import ConfigError, ReproError
from repro.provenance import Stamp, complete_record, trained_model_key
from repro.remedy import command
from repro.runtime import on_rank_zero, setup, teardown
from repro.trainlog import TrainLog, publish_or_fail
from repro.recipes.speech_ssl import prepare as P
from repro.recipes.speech_ssl.model import MaskedPredictor, build_backbone, masked_loss, span_mask
from repro.recipes.speech_ssl.targets import FrameGrid, KMeansSettings, Targets, make_targets, targets_key
from repro.util.atomic import atomic_write_json
from repro.util.progress import progress_bar
from repro.weights import load_checkpoint, remove_checkpoint, save_checkpoint
from repro.workspace import Workspace

RECIPES = ("hubert", "wavlm")
MODEL_FORMAT = 1
TRAINER_VERSION = 1
CHECKPOINT = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"


class SslTrainingFailed(ReproError, RuntimeError):
    """A pre-training run whose model must not be used (no better than the majority-cluster rate)."""


class CheckpointMismatchError(ReproError, ValueError):
    """A checkpoint left by a run with other settings or data."""


class TrainingInterrupted(RuntimeError):
    """Raised by `stop_after_step` to emulate a crash (tests of resuming)."""


def recipe_config(ws: Workspace, recipe: str):
    """The settings of `recipe` (`ssl_training.hubert` or `ssl_training.wavlm`)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown speech SSL recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    return recipes.settings(ws.profile, recipe)


def run_dir(ws: Workspace, recipe: str) -> Path:
    recipe_config(ws, recipe)  # one of this package's recipes
    return recipes.run_dir(ws, recipe)


def frame_grid(recipe: str, arch: dict) -> FrameGrid:
    """The model's frames in samples, from its configuration's CNN (kernels and strides)."""
    import transformers

    from repro.recipes.speech_ssl.model import MODEL_CLASSES

    config = getattr(transformers, MODEL_CLASSES[recipe][0])(**arch)
    return FrameGrid.of_cnn(list(config.conv_kernel), list(config.conv_stride))


@dataclass
class Corpus:
    """The pre-training utterances of a recipe: training and held-out, and what the targets are made of."""

    train: list[P.SslUtterance]
    heldout: list[P.SslUtterance]
    grid: FrameGrid
    kmeans: KMeansSettings
    targets_key: str


def corpus(ws: Workspace, recipe: str) -> Corpus:
    """The recipe's utterances and targets key, from the manifests alone (no audio is read)."""
    cfg, st = recipe_config(ws, recipe), ws.profile.ssl_training
    utts = P.training_utterances(ws.corpus_dir, list(st.train_tasks), int(round(cfg.min_seconds * P.SAMPLE_RATE)))
    train, held = P.split_heldout(utts, cfg.heldout_utterances, cfg.seed)
    grid, km = frame_grid(recipe, cfg.arch), KMeansSettings.of(cfg)
    key = targets_key([(u.id, u.sha256) for u in train], [(u.id, u.sha256) for u in held], grid, km)
    return Corpus(train, held, grid, km, key)


def training_stamp(ws: Workspace, recipe: str, data: Corpus | None = None) -> Stamp:
    """What the model of `recipe` pre-trained now is made from: its settings key
    (`repro.provenance.trained_model_key`: the recipe's settings and the manifests' settings), the trainer's
    version and the targets key (the utterances' audio digests, the k-means)."""
    data = data or corpus(ws, recipe)
    return Stamp(trained_model_key(ws.profile, recipe), {"trainer": TRAINER_VERSION, "targets": data.targets_key})


def published(ws: Workspace, recipe: str, log=None) -> dict | None:
    """model.json of the published model of `recipe` if its stamp is complete; `log` gets one line
    saying why a published model is not."""
    path = ws.models_dir / recipe_config(ws, recipe).output_name / "model.json"
    return complete_record(path, training_stamp(ws, recipe), "trained again", log)


# ----------------------------------------------------------------------------- batches


class Batches:
    """Step `s` -> (waveforms `[B, L]` float32, targets `[B, T]` int64, mask `[B, T]` bool); a pure function."""

    def __init__(self, cfg, audio: P.AudioBank, targets: Targets, grid: FrameGrid):
        self.cfg, self.audio, self.targets, self.grid = cfg, audio, targets, grid
        self.crop = int(round(cfg.crop_seconds * P.SAMPLE_RATE))
        P.steps_per_epoch(len(audio), cfg.batch_size)  # batch no larger than the corpus

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, grid = self.cfg, self.grid
        idx = P.step_utterances(cfg.seed, step, len(self.audio), cfg.batch_size)
        rng = P.step_rng(cfg.seed, step, 0)
        length = min(self.crop, *(self.audio.utts[int(u)].num_samples for u in idx))
        frames = grid.frames(length)
        waves, labels = [], []
        for u in idx:
            wav = self.audio[int(u)]
            k = int(rng.integers(0, (len(wav) - length) // grid.hop + 1))
            waves.append(wav[k * grid.hop : k * grid.hop + length])
            labels.append(self.targets.labels(int(u))[k : k + frames])
        wavs = np.stack(waves).astype(np.float32)
        if cfg.mix_prob > 0:
            wavs = mix_utterances(wavs, P.step_rng(cfg.seed, step, 1), cfg.mix_prob, cfg.mix_max_fraction,
                                  tuple(cfg.mix_snr_db))
        mask = span_mask((len(idx), frames), cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks,
                         int(rng.integers(2**32)))
        return torch.from_numpy(wavs), torch.from_numpy(np.stack(labels)), torch.from_numpy(mask)


def mix_utterances(wavs: np.ndarray, rng: np.random.Generator, prob: float, max_fraction: float,
                   snr_db: tuple[float, float]) -> np.ndarray:
    """WavLM's utterance mixing: into each crop, with probability `prob`, add a segment of another crop of the
    batch, at most `max_fraction` of its length, at a random place, scaled so that the energy ratio of the
    primary crop to the segment is uniform in `snr_db` (dB). `wavs` `[B, L]`; the clean crops are the sources."""
    out = wavs.copy()
    b, length = wavs.shape
    if b < 2:
        return out
    longest = max(1, int(max_fraction * length))
    for i in range(b):
        if rng.random() >= prob:
            continue
        j = int(rng.integers(b - 1))
        j += j >= i
        n = int(rng.integers(1, longest + 1))
        src, dst = int(rng.integers(0, length - n + 1)), int(rng.integers(0, length - n + 1))
        seg = wavs[j, src : src + n].astype(np.float64)
        ratio = float(rng.uniform(*snr_db))
        e_primary = float(np.mean(wavs[i].astype(np.float64) ** 2)) + 1e-8
        e_seg = float(np.mean(seg**2)) + 1e-8
        scale = math.sqrt(e_primary / (e_seg * 10 ** (ratio / 10)))
        out[i, dst : dst + n] += (scale * seg).astype(np.float32)
    return out


def lr_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up over `warmup_fraction` of the steps to `peak`, then linear decay to 0 (fairseq's
    `polynomial_decay` with power 1, HuBERT's schedule)."""
    warm = max(1, int(round(warmup_fraction * total)))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


@torch.no_grad()
def heldout_accuracy(model: MaskedPredictor, cfg, audio: P.AudioBank, targets: Targets, grid: FrameGrid,
                     device: torch.device) -> dict[str, float]:
    """Masked-prediction accuracy over the held-out utterances (each whole, masked with seeded spans), and the
    majority-cluster rate of the same frames (the accuracy of always answering their most frequent cluster)."""
    was = model.training
    model.eval()
    correct, total, counts = 0, 0, np.zeros(cfg.clusters, np.int64)
    for i in range(len(audio)):
        wav = audio[i]
        frames = grid.frames(len(wav))
        mask = span_mask((1, frames), cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks,
                         int(np.random.default_rng([cfg.seed, 97, i]).integers(2**32)))
        lab = targets.labels(i)
        logits = model(torch.from_numpy(wav[None]).to(device), torch.from_numpy(mask).to(device))
        pred = logits.argmax(-1)[0].cpu().numpy()
        m = mask[0]
        correct += int((pred[m] == lab[m]).sum())
        total += int(m.sum())
        counts += np.bincount(lab[m], minlength=cfg.clusters)
    model.train(was)
    return {"masked_accuracy": correct / max(1, total), "majority_rate": float(counts.max()) / max(1, total),
            "masked_frames": total}


# ----------------------------------------------------------------------------- training


def train_ssl(ws: Workspace, recipe: str, *, force: bool = False, progress: bool = True,
              stop_after_step: int | None = None) -> dict | None:
    """Train (or reuse) the model of `recipe` for profile `ws`; its model.json (None on ranks other than 0)."""
    cfg, st = recipe_config(ws, recipe), ws.profile.ssl_training
    if not force and (info := published(ws, recipe, print if progress else None)) is not None:
        if progress:
            print(f"{cfg.output_name}: trained model with these settings exists ({ws.models_dir / cfg.output_name})")
        return info
    env = setup(st.device, setting="ssl_training.device")
    out: list[dict] = []
    try:
        on_rank_zero(env, f"{recipe} pre-training",
                     lambda: out.append(_train(ws, recipe, env.device, force, progress, stop_after_step)),
                     ws.profile.distributed.timeout_seconds)
    finally:
        teardown(env)
    return out[0] if out else None


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(ws: Workspace, recipe: str, device: torch.device, force: bool, progress: bool,
           stop_after_step: int | None) -> dict:
    cfg, st = recipe_config(ws, recipe), ws.profile.ssl_training
    started, cpu_started = time.perf_counter(), time.process_time()
    data = corpus(ws, recipe)
    stamp = training_stamp(ws, recipe, data)
    key = stamp.key  # the resume key of a checkpoint
    rdir = run_dir(ws, recipe)
    rdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = rdir / CHECKPOINT
    if force:
        remove_checkpoint(ckpt_path)
    train_audio, held_audio = P.AudioBank(data.train), P.AudioBank(data.heldout)
    with _threads(st.threads):
        train_t, held_t = make_targets(train_audio, held_audio, data.grid, data.kmeans,
                                       ws.work / "ssl_training" / "targets", data.targets_key,
                                       f"ssl_training.{recipe}")
        arch = {**cfg.arch, "mask_time_prob": cfg.mask_prob, "mask_time_length": cfg.mask_length,
                "mask_time_min_masks": cfg.mask_min_masks}
        model = MaskedPredictor(build_backbone(recipe, arch, cfg.seed), cfg.clusters, cfg.final_dim,
                                cfg.logit_temp).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
        start, acc0 = 0, None
        if ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path, "delete it (the training then starts from scratch), or train again "
                                   f"with {command('train', ws, '--recipe', recipe, '--force')}", device)
            if ckpt.get("config_hash") != key or int(ckpt["step"]) > cfg.steps:
                raise CheckpointMismatchError(
                    f"{ckpt_path}: checkpoint of another configuration (settings or data changed since it was "
                    "written); delete it or retrain from scratch with "
                    + command("train", ws, "--recipe", recipe, "--force"))
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start, acc0 = int(ckpt["step"]), dict(ckpt["heldout_untrained"])
            if progress:
                print(f"resuming {recipe} from step {start} of {cfg.steps} ({ckpt_path})")
        log = TrainLog(rdir / "train_log.jsonl", keep_until_step=start)
        if acc0 is None:
            acc0 = heldout_accuracy(model, cfg, held_audio, held_t, data.grid, device)
            log.write(step=0, heldout_accuracy=acc0["masked_accuracy"], note="untrained")
        batches = Batches(cfg, train_audio, train_t, data.grid)
        model.train()
        bar = progress_bar(total=cfg.steps, initial=start, desc=f"train {recipe}", unit="step", disable=not progress)
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_fraction)
            for g in optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, 17, step]).generate_state(1)[0]))  # dropout
            wavs, targets, mask = (t.to(device) for t in batches(step))
            loss, metrics = masked_loss(model(wavs, mask), targets, mask, cfg.unmasked_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            done = step + 1
            bar.update(1)
            if done % st.log_every == 0 or done == cfg.steps:
                log.write(step=done, loss=float(loss.detach()), lr=lr, **metrics)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if done % st.checkpoint_every == 0 or done == cfg.steps:
                _save(ckpt_path, model, optimizer, done, acc0, key)
            if stop_after_step is not None and done == stop_after_step:
                bar.close()
                raise TrainingInterrupted(f"stopped after step {done}")
        bar.close()
        acc = heldout_accuracy(model, cfg, held_audio, held_t, data.grid, device)
    log.write(step=cfg.steps, heldout_accuracy=acc["masked_accuracy"], note="final")
    return _judge_and_publish(ws, recipe, model, data, stamp, acc0, acc, (started, cpu_started), start)


def _save(path: Path, model, optimizer, step: int, acc0: dict, key: str) -> None:
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "heldout_untrained": acc0, "config_hash": key}
    save_checkpoint(state, path)


def _judge_and_publish(ws, recipe, model, data: Corpus, stamp: Stamp, acc0, acc, clocks, resumed_from) -> dict:
    from transformers import Wav2Vec2FeatureExtractor

    cfg, st = recipe_config(ws, recipe), ws.profile.ssl_training
    rdir = run_dir(ws, recipe)
    elapsed, cpu = time.perf_counter() - clocks[0], time.process_time() - clocks[1]
    atomic_write_json(rdir / "timing.json", {"wall_seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1),
                                             "steps_run": cfg.steps - resumed_from, "resumed_from": resumed_from,
                                             "device": str(next(model.parameters()).device),
                                             "threads": st.threads or torch.get_num_threads()})
    r6 = lambda v: round(float(v), 6)  # noqa: E731
    info = {
        "format": MODEL_FORMAT, "name": cfg.output_name, "recipe": recipe, "profile": ws.profile.name,
        "kind": "hf_pretrained", "class": type(model.backbone).__name__,
        "provenance": stamp.as_dict(),
        "steps": cfg.steps, "batch_size": cfg.batch_size, "clusters": cfg.clusters,
        "train": {"tasks": list(st.train_tasks), "split": P.TRAIN_SPLIT, "utterances": len(data.train),
                  "seconds": round(sum(u.num_samples for u in data.train) / P.SAMPLE_RATE, 1)},
        "heldout": {"utterances": len(data.heldout), "masked_frames": acc["masked_frames"],
                    "majority_rate": r6(acc["majority_rate"]),
                    "masked_accuracy": {"untrained": r6(acc0["masked_accuracy"]),
                                        "trained": r6(acc["masked_accuracy"])}},
    }
    problems = []
    if st.require_above_majority and not acc["masked_accuracy"] > acc["majority_rate"]:
        problems = [f"held-out masked-prediction accuracy {acc['masked_accuracy']:.4f} is not above the "
                    f"majority-cluster rate {acc['majority_rate']:.4f}"]

    def failure(message: str) -> SslTrainingFailed:
        return SslTrainingFailed(f"{recipe} pre-training of '{cfg.output_name}' failed and its model is not used: "
                                 f"{message}; change ssl_training.{recipe} or retrain with --force)")

    def write(folder: Path) -> dict:
        model.backbone.save_pretrained(folder)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=P.SAMPLE_RATE, padding_value=0.0, do_normalize=False,
                                 return_attention_mask=True).save_pretrained(folder)
        return {"weights_file": WEIGHTS_FILE}

    return publish_or_fail(rdir, ws.models_dir / cfg.output_name, info, problems, failure, write,
                           f"{cfg.output_name} ({recipe}): masked-prediction loss")


# ----------------------------------------------------------------------------- the recipe interface


def train(ws: Workspace, recipe: str, *, force: bool = False, progress: bool = True) -> dict | None:
    """The recipe interface (`repro.recipes`): train (or keep) the model of `recipe`."""
    return train_ssl(ws, recipe, force=force, progress=progress)


def estimate(ws: Workspace, recipe: str, tflops: float, utterances: int | None = None) -> dict:
    """FLOPs and GPU-hours of `recipe`: the FLOPs of one step (forward and backward of one crop of
    `crop_seconds`, counted by torch's FlopCounterMode, times `batch_size`) times `steps`. `utterances` (default:
    the training manifests' count) only sets how many passes over the data the steps make."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = recipe_config(ws, recipe)
    if utterances is None:
        utterances = len(corpus(ws, recipe).train)
    model = MaskedPredictor(build_backbone(recipe, dict(cfg.arch), cfg.seed), cfg.clusters, cfg.final_dim,
                            cfg.logit_temp).train()
    grid = frame_grid(recipe, cfg.arch)
    length = int(round(cfg.crop_seconds * P.SAMPLE_RATE))
    frames = grid.frames(length)
    wav = torch.zeros(1, length)
    mask = torch.from_numpy(span_mask((1, frames), cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, cfg.seed))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = masked_loss(model(wav, mask), torch.zeros(1, frames, dtype=torch.long), mask, cfg.unmasked_weight)
        loss.backward()
    per_step = float(counter.get_total_flops()) * cfg.batch_size
    total = per_step * cfg.steps
    return {"recipe": recipe, "steps": cfg.steps, "batch_size": cfg.batch_size, "utterances": utterances,
            "passes": cfg.steps * cfg.batch_size / max(1, utterances), "crop_seconds": cfg.crop_seconds,
            "flops_per_step": per_step, "total_flops": total, "assumed_tflops": tflops,
            "gpu_hours": total / (tflops * 1e12) / 3600}
