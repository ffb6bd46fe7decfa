"""`repro train`: train a speaker model with a profile's recipe and publish it.

    work/<profile>/speaker_training/<name>/    checkpoint.pt, train_log.jsonl, timing.json,
                                               failure.json (a rejected run)
    work/<profile>/speaker_training/augmentation/   synthetic noise and RIRs (smoke)
    work/<profile>/models/<name>/              the finished model: weights, model.json,
                                               train_log.jsonl, loss.png

A model is published only when training completed, its EER on the trial list is below the
untrained network's, and (DINO) it has not collapsed; otherwise `failure.json` says why and
`SpeakerTrainingFailed` is raised. `model.json` records the model's stamp (`training_stamp`) as its
`provenance`; a published model whose stamp is complete (`repro.provenance.is_complete`) is reused.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from repro.data.manifest import manifest_path, trials_path
from repro import recipes
from repro.errors import ConfigError, ReproError
from repro.provenance import Stamp, complete_record, trained_model_key
from repro.runtime import DistEnv, barrier, setup, teardown, threads_of, writer_lock
from repro.speaker import data as D
from repro.speaker.augment import Augmenter, NoiseBank, RirBank, augmentation_folder
from repro.speaker.evaluate import TrialSet, collapse_report, embed, trial_eer
from repro.speaker.recipes import BatchMaker, DinoRecipe, Plan, SupervisedRecipe
from repro.remedy import command
from repro.speaker.trainer import CHECKPOINT, LoopSettings, run_loop
from repro.trainlog import TrainLog, publish_or_fail
from repro.util.atomic import atomic_write_json, check_writable
from repro.util.hashing import sha256_file
from repro.weights import remove_checkpoint
from repro.workspace import Workspace

RECIPES = ("supervised", "dino")
MODEL_FORMAT = 1
TRAINER_VERSION = 1
CACHE_AUDIO_BYTES = 512 << 20


class SpeakerTrainingFailed(recipes.TrainingFailed, RuntimeError):
    """A training run whose model must not be used (collapsed, or no better than untrained)."""


def recipe_config(ws: Workspace, recipe: str):
    if recipe not in RECIPES:
        raise ConfigError(f"unknown speaker recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    return recipes.settings(ws.profile, recipe)


def run_dir(ws: Workspace, recipe: str) -> Path:
    recipe_config(ws, recipe)  # one of this package's recipes
    return recipes.run_dir(ws, recipe)


def training_stamp(ws: Workspace, recipe: str) -> Stamp:
    """What the model of `recipe` trained now is made from: its settings key
    (`repro.provenance.trained_model_key`: the recipe's settings, the training and evaluation data
    settings, the seed), the trainer's version and the sha256 of the manifests and trial list it reads."""
    cfg = ws.profile.speaker_training
    recipe_config(ws, recipe)  # one of this package's recipes
    corpus = ws.corpus_dir
    files = [D.training_manifest(ws)[0], manifest_path(corpus, cfg.eval_task), trials_path(corpus, cfg.eval_split)]
    return Stamp(trained_model_key(ws.profile, recipe), {
        "trainer": TRAINER_VERSION, "data": {f.name: sha256_file(f) if f.is_file() else None for f in files}})


def published(ws: Workspace, recipe: str, log=None) -> dict | None:
    """model.json of the published model of `recipe` if its stamp is complete; `log` gets one line
    saying why a published model is not."""
    path = ws.models_dir / recipe_config(ws, recipe).output_name / "model.json"
    return complete_record(path, training_stamp(ws, recipe), "trained again", log)


def _augmenter(ws: Workspace, env: DistEnv) -> Augmenter:
    cfg = ws.profile.speaker_training.augment
    if cfg.synthetic:
        from repro.speaker.synthetic_aug import make_synthetic_augmentation

        folder = ws.work / "speaker_training" / "augmentation"
        if env.is_main:
            make_synthetic_augmentation(folder, ws.profile.seed)
        barrier(env)
        noise_dir, rir_dir = folder / "noise", folder / "rir"
    else:
        noise_dir, rir_dir = augmentation_folder(ws, "noise_dir"), augmentation_folder(ws, "rir_dir")
    snr = {"noise": tuple(cfg.snr_noise), "music": tuple(cfg.snr_music), "speech": tuple(cfg.snr_speech)}
    return Augmenter(NoiseBank.from_folder(noise_dir, snr), RirBank.from_folder(rir_dir))


def train_speaker(ws: Workspace, recipe: str, *, force: bool = False, progress: bool = True,
                  stop_after_step: int | None = None) -> dict:
    """Train (or reuse) the model of `recipe` for profile `ws`; returns its model.json content."""
    rcfg = recipe_config(ws, recipe)
    cfg = ws.profile.speaker_training
    if not force and (info := published(ws, recipe, print if progress else None)) is not None:
        if progress:
            print(f"{rcfg.output_name}: trained model with these settings exists ({ws.models_dir / rcfg.output_name})")
        return info
    with threads_of(ws.profile):
        env = setup(cfg.device, setting="speaker_training.device")
        out = ws.models_dir / rcfg.output_name
        if env.is_main:
            check_writable(ws.models_dir)  # before training, not at publication
        try:
            with writer_lock(env, ws.lock_file(out), f"trained model {out}", ws.profile.distributed.timeout_seconds):
                if not force and (info := published(ws, recipe)) is not None:  # another run trained it meanwhile
                    return info
                return _train(ws, recipe, rcfg, env, progress, stop_after_step, force)
        finally:
            teardown(env)


def _train(ws: Workspace, recipe: str, rcfg, env: DistEnv, progress: bool, stop_after_step: int | None,
           force: bool = False) -> dict:
    cfg = ws.profile.speaker_training
    started, cpu_started = time.perf_counter(), time.process_time()
    stamp = training_stamp(ws, recipe)
    utts, speakers = D.load_training_set(ws)
    spe = D.steps_per_epoch(len(utts), rcfg.batch_size)
    total = rcfg.epochs * spe
    D.micro_batch_positions(rcfg.batch_size, cfg.grad_accumulation, 0)  # divisibility check
    if recipe == "supervised":
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
    maker = BatchMaker(recipe, rcfg, plan, D.AudioSource(utts, cache), augmenter,
                       [u.speaker for u in utts], n_mels)
    trials = TrialSet.load(ws.corpus_dir, cfg.eval_task, cfg.eval_split) if env.is_main else None
    rdir = run_dir(ws, recipe)
    rdir.mkdir(parents=True, exist_ok=True)
    if force and env.is_main:  # trained again from scratch: never from a checkpoint
        remove_checkpoint(rdir / CHECKPOINT)
    barrier(env)
    settings = LoopSettings(total, spe, cfg.grad_accumulation, cfg.num_workers, cfg.log_every, cfg.checkpoint_every,
                            cfg.eval_every_epochs, stamp.key, progress, stop_after_step,
                            checkpoint_fix=_checkpoint_fix(ws, recipe))
    result = run_loop(r, maker, trials, env, rdir, settings)
    r.finalize()
    info = None
    if env.is_main:
        info = _judge_and_publish(ws, recipe, r, rcfg, trials, env, result, stamp, utts, speakers,
                                  (started, cpu_started))
    barrier(env)
    return info


def _checkpoint_fix(ws: Workspace, recipe: str) -> str:
    """What to do about a resume checkpoint that cannot be used: training stops, never resumes from it."""
    return f"delete it (the training then starts from scratch), or train again with " \
           f"{command('train', ws, '--recipe', recipe, '--force')}"


def _judge_and_publish(ws, recipe, r, rcfg, trials, env, result, stamp, utts, speakers, clocks) -> dict:
    cfg = ws.profile.speaker_training
    rdir = run_dir(ws, recipe)
    frontend, network = r.eval_network()
    eer = trial_eer(frontend, network, trials, env.device)
    emb = embed(frontend, network, trials.audio, env.device)
    head = r.eval_head() if recipe == "dino" else None
    temp = rcfg.teacher_temp if recipe == "dino" else 1.0
    report = collapse_report(emb, head, r.center if recipe == "dino" else None, temp,
                             cfg.collapse_min_embedding_std, cfg.collapse_min_teacher_kl)
    TrainLog(rdir / "train_log.jsonl", keep_until_step=result.steps).write(
        step=result.steps, epoch=rcfg.epochs, eer=eer, note="final")
    elapsed, cpu = time.perf_counter() - clocks[0], time.process_time() - clocks[1]
    atomic_write_json(rdir / "timing.json", {"wall_seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1),
                                             "steps_run": result.steps - result.resumed_from,
                                             "resumed_from": result.resumed_from, "world_size": env.world_size,
                                             "device": str(env.device), "threads": torch.get_num_threads()})
    info = {
        "format": MODEL_FORMAT, "name": rcfg.output_name, "recipe": recipe, "profile": ws.profile.name,
        "provenance": stamp.as_dict(), "steps": result.steps, "epochs": rcfg.epochs, "batch_size": rcfg.batch_size,
        "train": {"task": cfg.train_task, "split": cfg.train_split, "utterances": len(utts), "speakers": len(speakers)},
        "eval": {"task": cfg.eval_task, "split": cfg.eval_split, "trials": int(len(trials.target)),
                 "target_trials": int(trials.target.sum())},
        "eer": {"untrained": round(result.eer_untrained, 6), "trained": round(eer, 6)},
        "collapse": report.as_dict(),
    }
    problems = list(report.reasons)
    if cfg.require_eer_improvement and not eer < result.eer_untrained:
        problems.append(f"EER {eer:.4f} is not below the untrained network's {result.eer_untrained:.4f}")
    def failure(message: str) -> SpeakerTrainingFailed:
        return SpeakerTrainingFailed(f"{recipe} training of '{rcfg.output_name}' failed and its model is not used: "
                                     f"{message}; change the settings or retrain with --force)")

    return publish_or_fail(rdir, ws.models_dir / rcfg.output_name, info, problems, failure, r.export,
                           f"{rcfg.output_name} ({recipe}): loss and EER")


def train(ws: Workspace, recipe: str, *, force: bool = False, progress: bool = True) -> dict | None:
    """The recipe interface (`repro.recipes`): train (or keep) the model of `recipe`."""
    return train_speaker(ws, recipe, force=force, progress=progress)


def estimate(ws: Workspace, recipe: str, tflops: float, utterances: int | None = None) -> dict:
    """FLOPs and GPU-hours of `recipe` (see `repro.speaker.cost`); sizes from the training manifest
    unless `utterances` is given (then the speaker count is VoxCeleb2 dev's 5,994)."""
    from repro.speaker.cost import estimate

    cfg = ws.profile.speaker_training
    if utterances is None:
        utts, speakers = D.load_training_set(ws)
        utterances, n_speakers = len(utts), len(speakers)
    else:
        n_speakers = VOXCELEB2_DEV_SPEAKERS
    return estimate(recipe, recipe_config(ws, recipe), utterances, n_speakers, tflops)


VOXCELEB2_DEV_SPEAKERS = 5994
