"""The rehearsal profile of a real profile: `extends:` it, keeps every setting, shrinks only sizes.

Shrunk: each probe's steps (one evaluation, at the end), batch size and gradient accumulation; the
subset rules' counts (the rules themselves kept, so that they still choose); the CKA utterance
count and, where the profile caps frames, that cap; the speaker recipes' epochs and batches. Kept:
store dtypes, probing inputs (pooled / upstream), training crops, learning-rate grids, the CKA
subset rule, `num_workers`, autocast, ASV-IDT, the corpora and their splits. `shrunk` lists
every change as `key: real -> rehearsal`, and the rehearsal's report prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from repro.config import ConfigError, load_profile, to_dict

STEPS = 2  # optimiser steps of every probe: one evaluation (eval_every = steps)
MAX_BATCH = 2
MAX_ACCUM = 2
SUBSETS = {"PR": {"train": {"utterances": 8}, "dev": {"utterances": 4}},
           "KS": {"train": {"per_label": 2}, "dev": {"per_label": 1}},
           "IC": {"train": {"utterances": 40}, "dev": {"utterances": 4}},  # every slot value stays in train
           "SID": {"train": {"speakers": 4}, "dev": {"speakers": 4}, "test": {"speakers": 4}},
           "ASV": {"train": {"speakers": 4}}}
CKA_UTTERANCES = 4
CKA_MAX_FRAMES = 600


def name_of(base: str) -> str:
    """The rehearsal profile's name, `rehearse-<name>`: of a profile file, its own name (not its path)."""
    return f"rehearse-{load_profile(base).name if Path(base).suffix in ('.yaml', '.yml') else base}"


def extends_of(base: str) -> str:
    """What the rehearsal profile `extends:`: a built-in profile's name, or a profile file's absolute path
    (the rehearsal profile lives in another folder)."""
    return str(Path(base).resolve()) if Path(base).suffix in (".yaml", ".yml") else base


def overrides(base: str, folder: Path, ci: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The rehearsal's profile file content (`extends: base`) and the shrunk settings, one line each.

    `folder`: the rehearsal's work folder (its data root and data lock file live there)."""
    real = load_profile(base)
    if real.corpus.kind != "real":
        raise ConfigError(f"{base}: corpus.kind is {real.corpus.kind!r}; a rehearsal rehearses a profile of the real "
                          "corpora: fast, full or a profile file extending them")
    shrunk: list[str] = []
    tasks: dict[str, dict] = {}
    for task, b in real.probing.tasks.items():
        t = {"steps": STEPS, "eval_every": STEPS, "batch_size": min(b.batch_size, MAX_BATCH),
             "grad_accum": min(b.grad_accum, MAX_ACCUM)}
        for k, v in t.items():
            if getattr(b, k) != v:
                shrunk.append(f"probing.tasks.{task}.{k}: {getattr(b, k)} -> {v}")
        tasks[task] = t
    data: dict[str, Any] = {"root": str(folder / "data"), "lock_file": str(folder / "data.lock.json"),
                            "cka_utterances": CKA_UTTERANCES}
    shrunk.append(f"data.cka_utterances: {real.data.cka_utterances} -> {CKA_UTTERANCES}")
    if real.data.subsets:  # the same rules, smaller counts
        subsets = {}
        for task, splits in real.data.subsets.items():
            subsets[task] = {}
            for split, rule in splits.items():
                new = SUBSETS.get(task, {}).get(split) or {k: v for k, v in to_dict(rule).items() if v is not None}
                subsets[task][split] = new
                old = {k: v for k, v in to_dict(rule).items() if v is not None}
                if old != new:
                    shrunk.append(f"data.subsets.{task}.{split}: {old} -> {new}")
        data["subsets"] = subsets
    out: dict[str, Any] = {
        "extends": extends_of(base), "name": name_of(base),
        "description": f"REHEARSAL of profile '{base}': synthetic speech in the real corpora's layouts, the real "
                       "model classes at their real sizes with RANDOM weights; every setting kept except sizes. "
                       "Its numbers are not results.",
        "probing": {"tasks": tasks}, "data": data,
    }
    if real.cka.max_frames:
        out["cka"] = {"max_frames": CKA_MAX_FRAMES}
        shrunk.append(f"cka.max_frames: {real.cka.max_frames} -> {CKA_MAX_FRAMES}")
    if ci:  # the worker processes kept, fewer of them: a CI machine has two cores
        out["extraction"] = {"num_workers": 2}
        shrunk.append(f"extraction.num_workers: {real.extraction.num_workers} -> 2 (CI only)")
    st = real.speaker_training
    # DINO: two epochs, the first one the learning-rate warm-up (a warm-up must be shorter than training)
    out["speaker_training"] = {"supervised": {"epochs": 1, "batch_size": 2},
                               "dino": {"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                               "log_every": 1, "eval_every_epochs": 1}
    shrunk += [f"speaker_training.supervised.epochs: {st.supervised.epochs} -> 1",
               f"speaker_training.supervised.batch_size: {st.supervised.batch_size} -> 2",
               f"speaker_training.dino.epochs: {st.dino.epochs} -> 2",
               f"speaker_training.dino.warmup_epochs: {st.dino.warmup_epochs} -> 1",
               f"speaker_training.dino.batch_size: {st.dino.batch_size} -> 2",
               f"speaker_training.eval_every_epochs: {st.eval_every_epochs} -> 1 (an evaluation after each epoch)",
               f"speaker_training.log_every: {st.log_every} -> 1"]
    if ci:  # the trained networks in the CI sizes too (the models the stages load are tiny there as well)
        from repro.rehearse.models import TINY

        head = TINY["dino_head"]
        out["speaker_training"]["supervised"]["arch"] = TINY["ecapa-sup-speechbrain"]
        out["speaker_training"]["dino"].update(arch=TINY["ecapa-dino-wespeaker"], head_out_dim=head["out_dim"],
                                               head_hidden_dim=head["hidden_dim"],
                                               head_bottleneck_dim=head["bottleneck_dim"])
        st_dino = real.speaker_training.dino
        shrunk += ["speaker_training.supervised.arch: the registry's -> tiny (CI only)",
                   "speaker_training.dino.arch: wespeaker's -> tiny (CI only)"]
        shrunk += [f"speaker_training.dino.head_{k}_dim: {getattr(st_dino, f'head_{k}_dim')} -> {head[f'{k}_dim']} "
                   "(CI only)" for k in ("out", "hidden", "bottleneck")]
    return out, shrunk


def write_profile(base: str, folder: Path, ci: bool = False) -> tuple[Path, list[str]]:
    """Write `folder/profile.yaml`; returns its path and the shrunk settings."""
    data, shrunk = overrides(base, folder, ci)
    path = folder / "profile.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    text = "# The rehearsal profile (repro rehearse): the real profile's settings, smaller sizes.\n" + \
        yaml.safe_dump(data, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path, shrunk
