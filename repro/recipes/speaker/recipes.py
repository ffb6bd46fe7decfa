"""The two recipes as objects the trainer drives: supervised AAM-softmax and DINO.

A recipe owns its networks, optimizer settings and schedules, computes the loss of a
micro-batch, and says which network (and front-end) gives the evaluation embeddings.
The micro-batches themselves are made by `BatchMaker` (picklable, so it can run in
data-loading worker processes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from repro.config.schema import DinoRecipeConfig, SupervisedRecipeConfig
from repro.errors import ConfigError
from repro.models.dino_head import DinoHead
from repro.runtime import DistEnv, all_reduce_sum
from repro.recipes.speaker import augment as A
from repro.recipes.speaker import data as D
from repro.recipes.speaker import dino as dn


# ----------------------------------------------------------------------------- batches


@dataclass
class Plan:
    """How steps map to samples (see `repro.recipes.speaker.data`)."""

    seed: int
    num_utterances: int
    batch_size: int
    accumulation: int

    def positions(self, micro: int) -> range:
        return D.micro_batch_positions(self.batch_size, self.accumulation, micro)


class BatchMaker:
    """Builds micro-batch `micro` of step `step`: chunks, augmentation, features."""

    def __init__(self, recipe: str, cfg, plan: Plan, source: D.AudioSource, augmenter: A.Augmenter | None,
                 labels: list[int], n_mels: int):
        self.recipe, self.cfg, self.plan, self.source = recipe, cfg, plan, source
        self.augmenter, self.labels, self.n_mels = augmenter, labels, n_mels
        self._frontend = None

    def frontend(self):
        if self._frontend is None:
            from repro.models.ecapa import SpeechbrainFbank
            from repro.recipes.speaker.fbank import BatchedKaldiFbank

            self._frontend = (SpeechbrainFbank(self.n_mels) if self.recipe == "supervised"
                              else BatchedKaldiFbank(self.n_mels, dither=self.cfg.dither))
        return self._frontend

    def __call__(self, step: int, micro: int) -> dict[str, Tensor]:
        p = self.plan
        utts = D.step_utterances(p.seed, step, p.num_utterances, p.batch_size)
        with torch.no_grad():
            if self.recipe == "supervised":
                return self._supervised(step, utts, p.positions(micro))
            return self._dino(step, utts, p.positions(micro))

    def _supervised(self, step: int, utts: np.ndarray, positions: range) -> dict[str, Tensor]:
        cfg = self.cfg
        length = int(round(cfg.chunk_seconds * 16000))
        waves, labels = [], []
        for pos in positions:
            rng = D.sample_rng(self.plan.seed, step, pos)
            u = int(utts[pos])
            chunk = self.source.chunk(u, length, rng)
            copies = [chunk] if cfg.concat_original else []
            for kind in cfg.augmentations:
                copies.append(self._augment(kind, chunk, rng))
            waves += copies
            labels += [self.labels[u]] * len(copies)
        wav = torch.from_numpy(np.stack(waves).astype(np.float32))
        return {"feats": self.frontend()(wav), "labels": torch.tensor(labels, dtype=torch.long)}

    def _augment(self, kind: str, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if kind == "noise":
            return self.augmenter.noise(wav, rng)
        if kind == "reverb":
            return self.augmenter.reverb(wav, rng)
        if kind == "drop_freq":
            return A.drop_freq(wav, rng)
        if kind == "drop_chunk":
            return A.drop_chunk(wav, rng)
        raise ConfigError(f"unknown augmentation {kind!r}")

    def _dino(self, step: int, utts: np.ndarray, positions: range) -> dict[str, Tensor]:
        cfg = self.cfg
        g_len, l_len = D.frames_to_samples(cfg.global_frames), D.frames_to_samples(cfg.local_frames)
        glob, loc, g_gen, l_gen = [], [], [], []
        for pos in positions:
            rng = D.sample_rng(self.plan.seed, step, pos)
            u = int(utts[pos])
            for _ in range(cfg.global_chunks):
                glob.append(self._crop(u, g_len, rng))
                g_gen.append(torch.Generator().manual_seed(int(rng.integers(2**62))))
            for _ in range(cfg.local_chunks):
                loc.append(self._crop(u, l_len, rng))
                l_gen.append(torch.Generator().manual_seed(int(rng.integers(2**62))))
        g = self.frontend()(torch.from_numpy(np.stack(glob)), g_gen)  # [B * crops, T, F], sample-major
        l = self.frontend()(torch.from_numpy(np.stack(loc)), l_gen)
        # -> crop-major (all samples of crop 0 first), as the loss expects
        b = len(positions)
        g = g.reshape(b, cfg.global_chunks, *g.shape[1:]).transpose(0, 1).reshape(-1, *g.shape[1:])
        l = l.reshape(b, cfg.local_chunks, *l.shape[1:]).transpose(0, 1).reshape(-1, *l.shape[1:])
        return {"global": g, "local": l}

    def _crop(self, u: int, length: int, rng: np.random.Generator) -> np.ndarray:
        wav = self.source.chunk(u, length, rng)
        if self.augmenter is not None and self.cfg.aug_prob > 0:
            wav = self.augmenter.noise_or_reverb(wav, rng, self.cfg.aug_prob)
        return wav.astype(np.float32)


class MicroBatches(torch.utils.data.Dataset):
    """Item j = micro-batch `micro_batches[j % M]` of step `start + j // M` (M = len(micro_batches),
    this rank's share of every step; a pure function: safe in workers)."""

    def __init__(self, maker: BatchMaker, start_step: int, total_steps: int, micro_batches: list[int]):
        self.maker, self.start, self.total, self.micro_batches = maker, start_step, total_steps, micro_batches

    def __len__(self) -> int:
        return (self.total - self.start) * len(self.micro_batches)

    def __getitem__(self, j: int) -> dict[str, Tensor]:
        m = len(self.micro_batches)
        return self.maker(self.start + j // m, self.micro_batches[j % m])


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def micro_batch_loader(maker: BatchMaker, start_step: int, total_steps: int, micro_batches: list[int],
                       workers: int):
    """A DataLoader over the micro-batches `micro_batches` of every step from `start_step` on."""
    return torch.utils.data.DataLoader(
        MicroBatches(maker, start_step, total_steps, micro_batches), batch_size=None, shuffle=False,
        num_workers=workers, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False)


# ----------------------------------------------------------------------------- recipes


class SupervisedModel(nn.Module):
    """speechbrain ECAPA-TDNN + cosine classifier; `forward(feats [B,T,F])` -> cosines `[B, 1, C]`."""

    def __init__(self, embedding_model: nn.Module, classifier: nn.Module):
        super().__init__()
        self.embedding_model = embedding_model
        self.classifier = classifier

    def forward(self, feats: Tensor) -> Tensor:
        return self.classifier(self.embedding_model(feats))


def triangular_lr(step: int, base: float, peak: float, step_size: int) -> float:
    """speechbrain's `CyclicLRScheduler` (mode triangular): from `base` up to `peak` over `step_size` steps and back."""
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    return base + (peak - base) * max(0.0, 1 - x)


class SupervisedRecipe:
    """ECAPA-TDNN + AAM-softmax (speechbrain's `AdditiveAngularMargin` inside `LogSoftmaxWrapper`)."""

    name = "supervised"
    metrics = ("accuracy",)  # besides the loss, averaged over a step's micro-batches in the log

    def __init__(self, cfg: SupervisedRecipeConfig, n_speakers: int, env: DistEnv, steps_per_epoch: int,
                 total_steps: int):
        from speechbrain.lobes.models.ECAPA_TDNN import Classifier
        from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

        from repro.models.ecapa import speechbrain_ecapa

        if not cfg.concat_original and not cfg.augmentations:
            raise ConfigError("supervised recipe: concat_original is false and there are no augmentations")
        self.cfg, self.env = cfg, env
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        torch.manual_seed(cfg.seed)
        self.arch = {**cfg.arch, "input_size": cfg.n_mels}
        embedding = speechbrain_ecapa(self.arch)
        classifier = Classifier(input_size=int(cfg.arch.get("lin_neurons", 192)), out_neurons=n_speakers)
        self.model = SupervisedModel(embedding, classifier).to(env.device)
        self.criterion = LogSoftmaxWrapper(AdditiveAngularMargin(margin=cfg.margin, scale=cfg.scale))

    @property
    def trainable(self) -> nn.Module:
        return self.model

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """Every network that runs training-mode forwards (BatchNorm running statistics)."""
        return (self.model,)

    def make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def set_schedule(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        lr = triangular_lr(step, self.cfg.base_lr, self.cfg.lr, self.cfg.lr_step_size)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return {"lr": lr}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        out = model(batch["feats"])
        loss = self.criterion(out, batch["labels"][:, None])
        acc = float((out[:, 0].argmax(-1) == batch["labels"]).float().mean())
        return loss, {"accuracy": acc}

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def finalize(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])

    def eval_network(self) -> tuple[nn.Module, nn.Module]:
        """(front-end, embedding network) of the model being trained."""
        from repro.models.ecapa import SpeechbrainFbank

        return SpeechbrainFbank(self.cfg.n_mels), self.model.embedding_model

    def export(self, folder) -> dict:
        """Write speechbrain's files (`embedding_model.ckpt`, `classifier.ckpt`); returns model.json fields."""
        from repro.models.ecapa import save_ecapa_checkpoint
        from repro.util.atomic import atomic_path

        save_ecapa_checkpoint(folder, self.model.embedding_model)
        with atomic_path(folder / "classifier.ckpt") as tmp:
            torch.save(self.model.classifier.state_dict(), tmp)
        return {"kind": "speechbrain_ecapa", "frontend": "speechbrain", "arch": self.arch,
                "weights_file": "embedding_model.ckpt"}


class DinoRecipe:
    """Student/teacher DINO on wespeaker's ECAPA-TDNN (see `repro.recipes.speaker.dino`)."""

    name = "dino"
    metrics = ("teacher_entropy",)

    def __init__(self, cfg: DinoRecipeConfig, env: DistEnv, steps_per_epoch: int, total_steps: int):
        from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch

        self.cfg, self.env = cfg, env
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.arch = WespeakerEcapaArch.from_dict(cfg.arch)
        torch.manual_seed(cfg.seed)

        def build() -> dn.DinoStudent:
            head = DinoHead(self.arch.embed_dim, cfg.head_out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                               cfg.head_layers, cfg.head_use_bn, cfg.norm_last_layer)
            return dn.DinoStudent(WespeakerEcapa(self.arch), head)

        self.student = build()
        self.teacher = build()
        self.teacher.load_state_dict(self.student.state_dict())
        self.student.to(env.device)
        self.teacher.to(env.device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.center = torch.zeros(1, cfg.head_out_dim, device=env.device)
        scale = cfg.batch_size / cfg.lr_base_batch
        warm = cfg.warmup_epochs * steps_per_epoch
        self.lr = dn.cosine_schedule(cfg.lr * scale, cfg.min_lr * scale, total_steps, warm)
        self.wd = dn.cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total_steps)
        self.momentum = dn.cosine_schedule(cfg.momentum_teacher, 1.0, total_steps)
        self.temps = dn.teacher_temperatures(cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.epochs,
                                             cfg.warmup_teacher_temp_ratio)
        self.num_avg = max(1, min(cfg.num_avg, cfg.epochs))
        self.avg_sum: dict[str, Tensor] = {}
        self.avg_count = 0
        self._center_sum = torch.zeros(1, cfg.head_out_dim, device=env.device)
        self._center_n = 0
        self.last_entropy = float("nan")

    @property
    def trainable(self) -> nn.Module:
        return self.student

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """Student and teacher: the teacher normalises with its batch statistics too (wespeaker)."""
        return (self.student, self.teacher)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def make_optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(dn.param_groups(module), lr=0.0, momentum=self.cfg.sgd_momentum)

    def set_schedule(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        for k, g in enumerate(optimizer.param_groups):
            g["lr"] = float(self.lr[step])
            if k == 0:
                g["weight_decay"] = float(self.wd[step])
        return {"lr": float(self.lr[step]), "teacher_temp": float(self.temps[self.epoch_of(step)]),
                "momentum": float(self.momentum[step])}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        g, l = batch["global"], batch["local"]
        student = model(g, l)
        with torch.no_grad():
            teacher = self.teacher(g)
        loss, entropy = dn.dino_loss(student, teacher, self.center, self.cfg.global_chunks, self.cfg.student_temp,
                                     float(self.temps[self.epoch_of(step)]))
        self._center_sum += teacher.sum(dim=0, keepdim=True)
        self._center_n += teacher.shape[0]
        self.last_entropy = entropy
        return loss, {"teacher_entropy": entropy}

    def before_step(self, step: int) -> None:
        dn.clip_per_parameter(self.student, self.cfg.clip_grad)
        if self.epoch_of(step) < self.cfg.freeze_last_layer_epochs:
            for p in self.student.projection_head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        dn.ema_update(self.teacher, self.student, float(self.momentum[step]))
        count = torch.tensor([float(self._center_n)], device=self.center.device)
        stats = torch.cat([self._center_sum.reshape(-1), count])
        all_reduce_sum(stats, self.env)
        batch_center = stats[:-1].reshape(1, -1) / stats[-1]
        self.center = self.center * self.cfg.center_momentum + batch_center * (1 - self.cfg.center_momentum)
        self._center_sum.zero_()
        self._center_n = 0

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """Accumulate the teacher of each of the last `num_avg` epochs (wespeaker's model averaging)."""
        if epoch >= self.cfg.epochs - self.num_avg:
            for k, v in self.teacher.state_dict().items():
                v = v.detach().double()
                self.avg_sum[k] = self.avg_sum[k] + v if k in self.avg_sum else v.clone()
            self.avg_count += 1

    def averaged_teacher(self) -> dn.DinoStudent:
        """The teacher averaged over the last `num_avg` epochs (the current teacher if none yet)."""
        if not self.avg_count:
            return self.teacher
        import copy

        avg = copy.deepcopy(self.teacher)
        own = avg.state_dict()
        avg.load_state_dict({k: (v / self.avg_count).to(own[k].dtype) if own[k].is_floating_point()
                             else torch.round(v / self.avg_count).to(own[k].dtype) for k, v in self.avg_sum.items()})
        return avg

    def finalize(self) -> None:
        self.final = self.averaged_teacher()

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(), "center": self.center,
                "avg_sum": self.avg_sum, "avg_count": self.avg_count}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.center = state["center"].to(self.env.device)
        self.avg_sum = dict(state["avg_sum"])
        self.avg_count = int(state["avg_count"])

    def eval_network(self) -> tuple[nn.Module, nn.Module]:
        from repro.models.ecapa import KaldiFbank

        teacher = getattr(self, "final", self.teacher)
        return KaldiFbank(self.arch.feat_dim), teacher.backbone

    def eval_head(self) -> nn.Module:
        return getattr(self, "final", self.teacher).projection_head

    def export(self, folder) -> dict:
        """Write `avg_model.pt` in wespeaker's layout (backbone + projection_head); returns model.json fields."""
        from repro.util.atomic import atomic_path

        teacher = getattr(self, "final", self.teacher)
        state = {k: v.detach().cpu() for k, v in teacher.wespeaker_state_dict().items()}
        with atomic_path(folder / "avg_model.pt") as tmp:
            torch.save(state, tmp)
        return {"kind": "wespeaker_ecapa", "frontend": "kaldi", "arch": self.arch.to_dict(),
                "weights_file": "avg_model.pt"}
