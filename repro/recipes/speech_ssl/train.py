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
the cross-entropy of the cluster of each masked frame (`repro.recipes.speech_ssl.model`). The learning rate
rises linearly over `warmup_fraction` of the steps and falls linearly to 0. Every draw is a function of (seed, step), and a
checkpoint holds the networks and the optimizer, so a resumed run equals an uninterrupted one bit for bit (on
one device, one thread count).

The held-out utterances (training utterances kept out of training, never dev or test; whole) give the masked-prediction accuracy
of the untrained and the trained network, beside the majority-cluster rate (the accuracy of always answering
the most frequent cluster of those frames). A model is published only if its accuracy beats that rate
(`ssl_training.require_above_majority`); otherwise `failure.json` says why and `repro.recipes.TrainingFailed`
is raised. Under torchrun rank 0 trains alone. The rest of the lifecycle (stamp, lock, resume, publication) is
`repro.recipes.lifecycle`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from repro.recipes.lifecycle import TrainingRecipe
from repro.recipes.speech_ssl import prepare as P
from repro.recipes.speech_ssl.model import MaskedPredictor, build_backbone, masked_loss, span_mask
from repro.recipes.speech_ssl.targets import FrameGrid, KMeansSettings, Targets, make_targets, targets_key
from repro.runtime import DistEnv, set_threads
from repro.trainlog import TrainLog
from repro.util.progress import progress_bar
from repro.workspace import Workspace

WEIGHTS_FILE = "model.safetensors"


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
    cfg, st = getattr(ws.profile.ssl_training, recipe), ws.profile.ssl_training
    utts = P.training_utterances(ws.corpus_dir, list(st.train_tasks), int(round(cfg.min_seconds * P.SAMPLE_RATE)))
    train, held = P.split_heldout(utts, cfg.heldout_utterances, cfg.seed)
    grid, km = frame_grid(recipe, cfg.arch), KMeansSettings.of(cfg)
    key = targets_key([(u.id, u.sha256) for u in train], [(u.id, u.sha256) for u in held], grid, km)
    return Corpus(train, held, grid, km, key)


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


# ----------------------------------------------------------------------------- the recipe


class SslPretraining(TrainingRecipe):
    """The speech SSL recipes (`hubert`, `wavlm`): masked prediction of k-means targets, judged by the held-out
    masked-prediction accuracy against the majority-cluster rate."""

    family = "speech SSL"
    activity = "pre-training"
    change = "ssl_training.{name}"
    rank_zero_only = True
    refuses_other_checkpoints = True

    @cached_property
    def data(self) -> Corpus:
        return corpus(self.ws, self.name)

    def inputs(self) -> dict:
        """The targets key (the utterances' audio digests, the frame grid, the k-means)."""
        return {"targets": self.data.targets_key}

    def fit(self, env: DistEnv, progress: bool, stop_after_step: int | None) -> dict:
        cfg, st, data = self.settings, self.common, self.data
        set_threads(st.threads)  # the recipe's own count (the runtime's is restored after the run)
        train_audio, held_audio = P.AudioBank(data.train), P.AudioBank(data.heldout)
        train_t, held_t = make_targets(train_audio, held_audio, data.grid, data.kmeans,
                                       self.ws.work / "ssl_training" / "targets", data.targets_key,
                                       f"ssl_training.{self.name}")
        arch = {**cfg.arch, "mask_time_prob": cfg.mask_prob, "mask_time_length": cfg.mask_length,
                "mask_time_min_masks": cfg.mask_min_masks}
        model = MaskedPredictor(build_backbone(self.name, arch, cfg.seed), cfg.clusters, cfg.final_dim,
                                cfg.logit_temp).to(env.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                      weight_decay=cfg.weight_decay)
        start, acc0 = 0, None
        if (ckpt := self.resume(env, cfg.steps)) is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start, acc0 = int(ckpt["step"]), dict(ckpt["heldout_untrained"])
            if progress:
                print(f"resuming {self.name} from step {start} of {cfg.steps} ({self.checkpoint})")
        log = TrainLog(self.run_dir / "train_log.jsonl", keep_until_step=start)
        if acc0 is None:
            acc0 = heldout_accuracy(model, cfg, held_audio, held_t, data.grid, env.device)
            log.write(step=0, heldout_accuracy=acc0["masked_accuracy"], note="untrained")
        steps = _Steps(model, optimizer, Batches(cfg, train_audio, train_t, data.grid), log)
        steps.run(self, env, start, acc0, progress, stop_after_step)
        acc = heldout_accuracy(model, cfg, held_audio, held_t, data.grid, env.device)
        log.write(step=cfg.steps, heldout_accuracy=acc["masked_accuracy"], note="final")
        return self._judge_and_publish(model, acc0, acc, start, env)

    def _judge_and_publish(self, model: MaskedPredictor, acc0: dict, acc: dict, resumed_from: int,
                           env: DistEnv) -> dict:
        from transformers import Wav2Vec2FeatureExtractor

        cfg, st, data = self.settings, self.common, self.data
        r6 = lambda v: round(float(v), 6)  # noqa: E731
        info = self.record(
            kind="hf_pretrained", **{"class": type(model.backbone).__name__},
            steps=cfg.steps, batch_size=cfg.batch_size, clusters=cfg.clusters,
            train={"tasks": list(st.train_tasks), "split": P.TRAIN_SPLIT, "utterances": len(data.train),
                   "seconds": round(sum(u.num_samples for u in data.train) / P.SAMPLE_RATE, 1)},
            heldout={"utterances": len(data.heldout), "masked_frames": acc["masked_frames"],
                     "majority_rate": r6(acc["majority_rate"]),
                     "masked_accuracy": {"untrained": r6(acc0["masked_accuracy"]),
                                         "trained": r6(acc["masked_accuracy"])}})
        problems = []
        if st.require_above_majority:
            problems = self.judge("held-out masked-prediction accuracy", acc["masked_accuracy"],
                                  acc["majority_rate"], "the majority-cluster rate", lower_is_better=False)

        def write(folder: Path) -> dict:
            model.backbone.save_pretrained(folder)
            Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=P.SAMPLE_RATE, padding_value=0.0,
                                     do_normalize=False, return_attention_mask=True).save_pretrained(folder)
            return {"weights_file": WEIGHTS_FILE}

        timing = {"steps_run": cfg.steps - resumed_from, "resumed_from": resumed_from,
                  "device": str(next(model.parameters()).device)}
        return self.publish(info, problems, write, f"{cfg.output_name} ({self.name}): masked-prediction loss", timing)

    def estimate(self, tflops: float, utterances: int | None = None) -> dict:
        """FLOPs and GPU-hours: the FLOPs of one step (forward and backward of one crop of `crop_seconds`,
        counted by torch's FlopCounterMode, times `batch_size`) times `steps`. `utterances` (default: the
        training manifests' count) only sets how many passes over the data the steps make."""
        from torch.utils.flop_counter import FlopCounterMode

        cfg, recipe = self.settings, self.name
        if utterances is None:
            utterances = len(self.data.train)
        model = MaskedPredictor(build_backbone(recipe, dict(cfg.arch), cfg.seed), cfg.clusters, cfg.final_dim,
                                cfg.logit_temp).train()
        length = int(round(cfg.crop_seconds * P.SAMPLE_RATE))
        frames = frame_grid(recipe, cfg.arch).frames(length)
        mask = torch.from_numpy(span_mask((1, frames), cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks, cfg.seed))
        counter = FlopCounterMode(display=False)
        with counter:
            loss, _ = masked_loss(model(torch.zeros(1, length), mask), torch.zeros(1, frames, dtype=torch.long), mask,
                                  cfg.unmasked_weight)
            loss.backward()
        per_step = float(counter.get_total_flops()) * cfg.batch_size
        total = per_step * cfg.steps
        return {"recipe": recipe, "steps": cfg.steps, "batch_size": cfg.batch_size, "utterances": utterances,
                "passes": cfg.steps * cfg.batch_size / max(1, utterances), "crop_seconds": cfg.crop_seconds,
                "flops_per_step": per_step, "total_flops": total, "assumed_tflops": tflops,
                "gpu_hours": total / (tflops * 1e12) / 3600}


@dataclass
class _Steps:
    """The optimisation steps of a pre-training run: learning-rate schedule, seeded dropout, clipping, log."""

    model: MaskedPredictor
    optimizer: torch.optim.Optimizer
    batches: Batches
    log: TrainLog

    def run(self, life: SslPretraining, env: DistEnv, start: int, acc0: dict, progress: bool,
            stop_after_step: int | None) -> None:
        """Steps `start` to `steps`, checkpointing (`life.save`) every `checkpoint_every` steps and at the end."""
        cfg, st, model, optimizer = life.settings, life.common, self.model, self.optimizer
        model.train()
        bar = progress_bar(total=cfg.steps, initial=start, desc=f"train {life.name}", unit="step", disable=not progress)
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_fraction)
            for g in optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(int(np.random.SeedSequence([cfg.seed, 17, step]).generate_state(1)[0]))  # dropout
            wavs, targets, mask = (t.to(env.device) for t in self.batches(step))
            loss, metrics = masked_loss(model(wavs, mask), targets, mask, cfg.unmasked_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            done = step + 1
            bar.update(1)
            if done % st.log_every == 0 or done == cfg.steps:
                self.log.write(step=done, loss=float(loss.detach()), lr=lr, **metrics)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if done % st.checkpoint_every == 0 or done == cfg.steps:
                life.save({"step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "heldout_untrained": acc0}, env)
            if stop_after_step == done:
                bar.close()
            life.interrupt_at(stop_after_step, done)
        bar.close()
