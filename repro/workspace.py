"""Where a profile's files live.

    work/<profile>/corpus/            the corpus (synthetic, or prepared real manifests)
    work/<profile>/models/<name>/     generated or trained models
    work/<profile>/features/<model>/<task>/<split>/   feature stores (<split>.pooled/: utterance means)
    work/<profile>/probes/<model>/<task>/             probe checkpoints
    work/<profile>/.locks/            one lock file per output being written (`repro.util.locks`)
    results/<profile>/probing/<model>/<task>/         probe results (lr-*.json, best.json); ASV-IDT.json
    results/<profile>/cka/<A>__<B>.{npz,json}         CKA results
    paper_figures/<profile>/          figures, tables, report

Each of the three folders of a profile holds `.profile.json`: the profile file that made it and its
settings key (`repro.ownership`).

<model> is `model_folder(name)`: a registry name as it is, and any other name (a
`path/to/file.py:factory` plug-in) made into one safe folder name, so that every output of a
plug-in lands in the same places as a registered model's.

The three roots default to `work`, `results` and `paper_figures` under the
current folder; `$REPRO_WORK`, `$REPRO_RESULTS` and `$REPRO_FIGURES` move them
(the Docker image mounts them as volumes).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from repro.config import ConfigError, ProfileConfig, load_profile
from repro.errors import shown


@dataclass(frozen=True)
class Workspace:
    """The folders of one profile."""

    profile: ProfileConfig
    work_root: Path
    results_root: Path
    figures_root: Path

    @classmethod
    def for_profile(cls, profile: str | ProfileConfig) -> "Workspace":
        """The folders of `profile` (a name, a file path or a loaded profile) under the roots of the
        environment (`ROOTS`). ConfigError when a root, or the profile's folder in it, is not a folder."""
        cfg = load_profile(profile) if isinstance(profile, str) else profile
        roots = [root(var) for var in ROOTS]
        for var, path in zip(ROOTS, roots):
            check_folder(path, var)
            check_folder(path / cfg.name, var)
        return cls(cfg, *roots)

    @property
    def work(self) -> Path:
        return self.work_root / self.profile.name

    @property
    def corpus_dir(self) -> Path:
        return self.work / "corpus"

    @property
    def models_dir(self) -> Path:
        return self.work / "models"

    @property
    def features_dir(self) -> Path:
        return self.work / "features"

    @property
    def results(self) -> Path:
        return self.results_root / self.profile.name

    @property
    def figures(self) -> Path:
        return self.figures_root / self.profile.name

    def owner_files(self) -> list[Path]:
        """The owner record (`OWNER_FILE`, `repro.ownership`) of each of the profile's three folders."""
        return [self.work / OWNER_FILE, self.results / OWNER_FILE, self.figures / OWNER_FILE]

    def store_dir(self, model: str, task: str, split: str, pooled: bool = False) -> Path:
        """Feature store of `model` over one task split (`<split>.pooled`: its per-layer utterance means)."""
        return under(self.features_dir, model_folder(model), task, f"{split}.pooled" if pooled else split)

    def probe_dir(self, model: str, task: str) -> Path:
        """Result files of the probes of (`model`, `task`): `lr-*.json` and `best.json`."""
        return under(self.results / "probing", model_folder(model), task)

    def asv_idt_file(self, model: str) -> Path:
        """The ASV-IDT result of `model` (its own embedding, cosine scoring)."""
        return under(self.results / "probing", model_folder(model), "ASV-IDT.json")

    def probe_checkpoint_dir(self, model: str, task: str) -> Path:
        """Checkpoints of the probes of (`model`, `task`) while they train."""
        return under(self.work / "probes", model_folder(model), task)

    def cka_file(self, a: str, b: str, ext: str) -> Path:
        """`results/<profile>/cka/<A>__<B>.<ext>` (`ext`: npz or json; folder names may hold dots)."""
        return under(self.results / "cka", f"{model_folder(a)}__{model_folder(b)}.{ext}")

    def lock_file(self, output: str | os.PathLike) -> Path:
        """The lock of an output this profile writes (`repro.util.locks.output_lock`).

        `work/<profile>/.locks/<name>.lock`, the name made of the output's last path parts and eight
        hex digits of the sha256 of its absolute path: every run that writes the same output
        (whatever its current folder) takes the same lock.
        """
        full = Path(output).resolve()
        tail = "_".join(full.parts[-4:])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tail).strip("._")[-80:] or "output"
        return self.work / ".locks" / f"{safe}-{hashlib.sha256(str(full).encode()).hexdigest()[:8]}.lock"

    def cka_shard_dir(self, a: str, b: str) -> Path:
        """Per-rank CKA statistics of a pair under torchrun."""
        return under(self.work / "cka_shards", f"{model_folder(a)}__{model_folder(b)}")


OWNER_FILE = ".profile.json"  # in each folder of a profile: the profile file that made it (`repro.ownership`)

# The environment variable of each root and its default folder (under the current folder).
ROOTS = {"REPRO_WORK": "work", "REPRO_RESULTS": "results", "REPRO_FIGURES": "paper_figures"}


def root(var: str) -> Path:
    """The root folder `$var` names, else its default (`ROOTS`)."""
    return Path(os.environ.get(var) or ROOTS[var])


def check_folder(path: Path, var: str) -> None:
    """ConfigError (one line) when `path`, a root or a profile's folder in it, exists and is not a folder
    (a file, or a link to one): naming it, and `$var` when the variable set it."""
    if path.exists() and not path.is_dir():
        given = f"${var}={os.environ[var]}: " if os.environ.get(var) else ""
        raise ConfigError(f"{given}{path} is a file, not a folder; point ${var} at a folder (the outputs go "
                          f"there), or move the file away")


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def under(root: Path, *names: str) -> Path:
    """`root/names[0]/names[1]/...`, where each name (a task, a split, a model's folder) is one folder
    or file name, and the path, its symbolic links followed, stays under `root` (followed too).

    ConfigError otherwise: a name like `..`, `a/b` or `/abs` (from a command line or a file) never
    builds a path outside the profile's folders, nor does a link put in place of one of them."""
    for name in names:
        if not isinstance(name, str) or not _SAFE.fullmatch(name):
            raise ConfigError(f"{shown(name)}: not a name (of a task, split or model) that names one folder under "
                              f"{root}; use letters, digits, '.', '_' and '-', starting with a letter or digit")
    path = root.joinpath(*names)
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        link = next((p for p in [root.joinpath(*names[:i + 1]) for i in range(len(names))] if p.is_symlink()), path)
        raise ConfigError(f"{link}: a symbolic link that leads outside {root} (to {real}); remove it (the run then "
                          "makes the folder there), or link the whole of its parent folder instead")
    return path


def model_folder(name: str) -> str:
    """The folder name of model `name` in every output.

    A name made only of letters, digits, `.`, `_` and `-` (every registry name) is kept as it
    is. Any other name (`path/to/my_model.py:factory`) becomes its safe characters followed by
    eight hex digits of the name's sha256, so two different names never share a folder:
    `my_model.py:factory` -> `my_model.py_factory-1f0c3a9b`.
    """
    if _SAFE.fullmatch(name):
        return name
    tail = name.rsplit("/", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tail).strip("._") or "model"
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
