"""`repro train --recipe supervised|dino`: train a speaker model and publish it.

    work/<profile>/speaker_training/<name>/    checkpoint.pt, train_log.jsonl, timing.json,
                                               failure.json (a rejected run)
    work/<profile>/speaker_training/augmentation/   synthetic noise and RIRs (smoke)
    work/<profile>/models/<name>/              the finished model: weights, model.json,
                                               train_log.jsonl, loss.png

Every rank of a torchrun launch trains its share of each step (`repro.recipes.speaker.trainer`). A model
is published only when training completed, its EER on the trial list is below the untrained network's,
and (DINO) it has not collapsed; otherwise `failure.json` says why and `repro.recipes.TrainingFailed` is
raised. The rest of the lifecycle (stamp, lock, resume, publication) is `repro.recipes.lifecycle`.
"""

from __future__ import annotations

from repro.data.manifest import manifest_path, trials_path
from repro.recipes.lifecycle import TrainingRecipe
from repro.recipes.speaker import data as D
from repro.recipes.speaker.augment import Augmenter, NoiseBank, RirBank, augmentation_folder
from repro.recipes.speaker.evaluate import TrialSet, collapse_report, embed, trial_eer
from repro.recipes.speaker.recipes import BatchMaker, DinoRecipe, Plan, SupervisedRecipe
from repro.recipes.speaker.trainer import LoopSettings, run_loop
from repro.runtime import DistEnv, barrier
from repro.trainlog import TrainLog
from repro.util.hashing import sha256_file
from repro.workspace import Workspace

CACHE_AUDIO_BYTES = 512 << 20
VOXCELEB2_DEV_SPEAKERS = 5994


def _augmenter(ws: Workspace, env: DistEnv) -> Augmenter:
    cfg = ws.profile.speaker_training.augment
    if cfg.synthetic:
        from repro.recipes.speaker.synthetic_aug import make_synthetic_augmentation

        folder = ws.work / "speaker_training" / "augmentation"
        if env.is_main:
            make_synthetic_augmentation(folder, ws.profile.seed)
        barrier(env)
        noise_dir, rir_dir = folder / "noise", folder / "rir"
    else:
        noise_dir, rir_dir = augmentation_folder(ws, "noise_dir"), augmentation_folder(ws, "rir_dir")
    snr = {"noise": tuple(cfg.snr_noise), "music": tuple(cfg.snr_music), "speech": tuple(cfg.snr_speech)}
    return Augmenter(NoiseBank.from_folder(noise_dir, snr), RirBank.from_folder(rir_dir))


class SpeakerTraining(TrainingRecipe):
    """The speaker recipes (`supervised`, `dino`): ECAPA-TDNN trained on `speaker_training.train_task`,
    judged by the EER on the trial list of `speaker_training.eval_task`."""

    family = "speaker"

    def inputs(self) -> dict:
        """The sha256 of the training manifest, the evaluation manifest and the trial list."""
        cfg, corpus = self.common, self.ws.corpus_dir
        files = [D.training_manifest(self.ws)[0], manifest_path(corpus, cfg.eval_task),
                 trials_path(corpus, cfg.eval_split)]
        return {"data": {f.name: sha256_file(f) if f.is_file() else None for f in files}}

    def fit(self, env: DistEnv, progress: bool, stop_after_step: int | None) -> dict | None:
        ws, rcfg, cfg = self.ws, self.settings, self.common
        utts, speakers = D.load_training_set(ws)
        spe = D.steps_per_epoch(len(utts), rcfg.batch_size)
        total = rcfg.epochs * spe
        D.micro_batch_positions(rcfg.batch_size, cfg.grad_accumulation, 0)  # divisibility check
        if self.name == "supervised":
            r = SupervisedRecipe(rcfg, len(speakers), env, spe, total)
            needs_aug = any(a in ("noise", "reverb") for a in rcfg.augmentations)
            n_mels = rcfg.n_mels
        else:
            r = DinoRecipe(rcfg, env, spe, total)
            needs_aug = rcfg.aug_prob > 0
            n_mels = r.arch.feat_dim
        augmenter = _augmenter(ws, env) if needs_aug else None
        cache = sum(u.num_samples for u in utts) * 4 < CACHE_AUDIO_BYTES
        plan = Plan(rcfg.seed, len(utts), rcfg.batch_size, cfg.grad_accumulation)
        maker = BatchMaker(self.name, rcfg, plan, D.AudioSource(utts, cache), augmenter,
                           [u.speaker for u in utts], n_mels)
        trials = TrialSet.load(ws.corpus_dir, cfg.eval_task, cfg.eval_split) if env.is_main else None
        settings = LoopSettings(total, spe, cfg.grad_accumulation, cfg.num_workers, cfg.log_every, cfg.checkpoint_every,
                                cfg.eval_every_epochs, progress, stop_after_step)
        result = run_loop(r, maker, trials, env, self, settings)
        r.finalize()
        info = self._judge_and_publish(r, trials, env, result, len(utts), len(speakers)) if env.is_main else None
        barrier(env)
        return info

    def _judge_and_publish(self, r, trials: TrialSet, env: DistEnv, result, utterances: int, speakers: int) -> dict:
        rcfg, cfg = self.settings, self.common
        frontend, network = r.eval_network()
        eer = trial_eer(frontend, network, trials, env.device)
        emb = embed(frontend, network, trials.audio, env.device)
        dino = self.name == "dino"
        report = collapse_report(emb, r.eval_head() if dino else None, r.center if dino else None,
                                 rcfg.teacher_temp if dino else 1.0, cfg.collapse_min_embedding_std,
                                 cfg.collapse_min_teacher_kl)
        TrainLog(self.run_dir / "train_log.jsonl", keep_until_step=result.steps).write(
            step=result.steps, epoch=rcfg.epochs, eer=eer, note="final")
        info = self.record(
            steps=result.steps, epochs=rcfg.epochs, batch_size=rcfg.batch_size,
            train={"task": cfg.train_task, "split": cfg.train_split, "utterances": utterances, "speakers": speakers},
            eval={"task": cfg.eval_task, "split": cfg.eval_split, "trials": int(len(trials.target)),
                  "target_trials": int(trials.target.sum())},
            eer={"untrained": round(result.eer_untrained, 6), "trained": round(eer, 6)},
            collapse=report.as_dict())
        problems = list(report.reasons)
        if cfg.require_eer_improvement:
            problems += self.judge("EER", eer, result.eer_untrained, "the untrained network's", lower_is_better=True)
        timing = {"steps_run": result.steps - result.resumed_from, "resumed_from": result.resumed_from,
                  "world_size": env.world_size, "device": str(env.device)}
        return self.publish(info, problems, r.export, f"{rcfg.output_name} ({self.name}): loss and EER", timing)

    def estimate(self, tflops: float, utterances: int | None = None) -> dict:
        """FLOPs and GPU-hours (see `repro.recipes.speaker.cost`); sizes from the training manifest unless
        `utterances` is given (then the speaker count is VoxCeleb2 dev's 5,994)."""
        from repro.recipes.speaker.cost import estimate

        if utterances is None:
            utts, speakers = D.load_training_set(self.ws)
            utterances, n_speakers = len(utts), len(speakers)
        else:
            n_speakers = VOXCELEB2_DEV_SPEAKERS
        return estimate(self.name, self.settings, utterances, n_speakers, tflops)
