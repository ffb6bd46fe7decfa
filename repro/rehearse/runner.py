"""`repro rehearse --profile fast|full`: the profile's every stage on rehearsal corpora and random-weight
models at the real sizes, in folders of its own.

    work/rehearse-<profile>/
        REHEARSAL.json         what this folder is (every report made from it says so)
        profile.yaml           the rehearsal profile (`repro.rehearse.profile`)
        data/                  its data root: the corpora in their real layouts (`repro.rehearse.corpora`)
        data.lock.json         its data lock file (the real one, data.lock.json, is never touched)
        upstreams/, models.yaml  the models and the registry file added through $REPRO_MODEL_REGISTRY
        corpus/, features/, probes/, ...   what the pipeline writes, as for any profile
    results/rehearse-<profile>/, paper_figures/rehearse-<profile>/  likewise
    paper_figures/rehearse-<profile>/REHEARSAL.md  the rehearsal's report: stages, seconds, disk, the
                                                   shrunk settings, what a rehearsal cannot cover

The corpus stage is `prepare_corpus`, the code `repro data prepare` runs, with two differences a
rehearsal corpus needs: the corpora's published counts (IEMOCAP's 5,531 utterances, the committed
utterance lists of VoxCeleb1-O and IEMOCAP) are replaced by the rehearsal corpus's own. Then
`repro.pipeline.run` runs every other stage. An interrupted rehearsal resumes like any run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path

from repro.paper.rehearsal import MARKER
from repro.rehearse import corpora, models, profile as rprofile
from repro.util.atomic import atomic_directory, atomic_write_json, atomic_write_text
from repro.util.environ import restore_environ, saved_environ

TRAIN = "repro train"  # the key of `repro train`'s seconds (the pipeline's own `train` stage has its own)
CANNOT = [
    "downloads from the real hosts (OpenSLR, TensorFlow, Hugging Face, VoxCeleb mirrors) and their checksums",
    "the real corpora's published counts and committed utterance lists (replaced by the rehearsal corpus's own)",
    "the published weights (random weights of the same classes and sizes: loading, shapes and dtypes are "
    "exercised, numbers are meaningless)",
    "CUDA kernels, autocast and GPU memory when run on a CPU (`repro rehearse --device cuda` on the GPU machine "
    "runs the same stages there)",
    "the real corpora's sizes and length distribution: the time and memory of the real run (see `repro run "
    "--dry-run` for the price)",
]
# why the speaker tasks' numbers (ASV's EER, SID's accuracy, `repro train`'s judgement) say nothing here
EASY_SPEAKERS = (
    "Each synthetic speaker is one espeak-ng voice: the same formants, pitch, speed and loudness in every utterance. "
    "Speakers differ by trivial cues (an utterance's mean log-mel spectrum, or its loudness alone, separates the "
    "trial list's speakers without error), so ASV's EER is 0 even for a random-weight or untrained network; "
    "an EER of 0 here, like every other number beside this file, means nothing about any model.")


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished child processes (data-loading
    workers, ffmpeg, espeak-ng): on a shared machine the measure of work that waiting for a core does not inflate."""
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _du(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    return total


class _Clock:
    """Wall and CPU seconds (`cpu_seconds`) of each stage, in the order the stages end."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()

    def lap(self, stage: str, wall: float | None = None) -> None:
        """`stage` ended now; its wall seconds are `wall` when the stage measured them itself."""
        now, now_cpu = time.perf_counter(), cpu_seconds()
        self.seconds[stage] = now - self._wall if wall is None else wall
        self.cpu[stage] = now_cpu - self._cpu
        self._wall, self._cpu = now, now_cpu


def rehearse(base: str, *, ci: bool = False, device: str | None = None, train: bool | None = None,
             progress: bool = True, log=print, record_dir: Path | None = None) -> dict:
    """Rehearse profile `base` (fast, full or a profile file of the real corpora); returns the rehearsal's
    record (also REHEARSAL.md)."""
    started, cpu_started, load_start = time.perf_counter(), cpu_seconds(), _load()
    # the profile's num_workers is kept on any machine; torch warns about it once per store on small ones
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    folder = work_folder(base)
    sizes = corpora.CI if ci else corpora.Sizes()
    profile_path, shrunk = write_rehearsal_profile(base, folder, ci, device)
    clock = _Clock()
    atomic_write_json(folder / MARKER, {"rehearsal": True, "profile": base, "ci": ci, "shrunk": shrunk,
                                        "weights": "random", "speech": "synthetic (libespeak-ng)"})
    want_vox2 = corpora.has_ffmpeg() if train is None else train and corpora.has_ffmpeg()
    made = make_corpora(folder, sizes, want_vox2, log)  # 1. corpora in their real layouts
    clock.lap("corpora")
    # 2. models at their real sizes, random weights; the registry entries overridden by a file
    sources = models.make_models(folder / "upstreams", seed=0, tiny=ci, log=log)
    registry = models.registry_file(folder / "models.yaml", sources, tiny=ci)
    clock.lap("models")
    with rehearsal_environment(registry, folder / "data"):
        ws = _workspace(profile_path, folder)
        trained = run_stages(ws, made, (want_vox2, train), progress, log, clock)
    clock.seconds["total"] = time.perf_counter() - started
    clock.cpu["total"] = cpu_seconds() - cpu_started
    record = {"profile": base, "rehearsal_profile": ws.profile.name, "ci": ci, "seconds": clock.seconds,
              "cpu_seconds": clock.cpu, "load_average_start": load_start, "load_average_end": _load(),
              "disk_bytes": {"work": _du([ws.work]), "results": _du([ws.results]), "figures": _du([ws.figures])},
              "shrunk": shrunk, "corpora": made, "train": trained, "cannot_cover": CANNOT}
    write_report(ws, record)
    if record_dir is not None:
        from repro.bench.rehearsal import record as write_record

        log(f"record: {write_record(record, record_dir)}")
    return record


def work_folder(base: str) -> Path:
    """`work/rehearse-<name>` of real profile `base` (its folder checked as any profile's)."""
    from repro.workspace import check_folder, root

    name = rprofile.name_of(base)
    check_folder(root("REPRO_WORK"), "REPRO_WORK")
    check_folder(root("REPRO_WORK") / name, "REPRO_WORK")
    return (root("REPRO_WORK") / name).resolve()


def write_rehearsal_profile(base: str, folder: Path, ci: bool, device: str | None) -> tuple[Path, list[str]]:
    """`folder/profile.yaml` (`repro.rehearse.profile`), every stage on `device` when given; returns its
    path and the shrunk settings, the corpus sizes last."""
    profile_path, shrunk = rprofile.write_profile(base, folder, ci)
    if device:
        import yaml

        from repro.config.yamlfile import safe_load

        text = profile_path.read_text()
        data = safe_load(text, str(profile_path))
        for k in ("extraction", "probing", "cka", "speaker_training"):
            data.setdefault(k, {})["device"] = device
        profile_path.write_text(text.split("\n", 1)[0] + "\n" + yaml.safe_dump(data, sort_keys=False))
    shrunk.append(corpora.sizes_line(corpora.CI if ci else corpora.Sizes(), ci))
    return profile_path, shrunk


def make_corpora(folder: Path, sizes: corpora.Sizes, voxceleb2: bool, log) -> dict:
    """The corpora under `folder/data`, made again only when their sizes or makers changed (then the
    corpus prepared from the previous ones and the data lock of their subset lists go too); returns
    what was made (`corpora.make_all`)."""
    data_root = folder / "data"
    made_path = data_root / ".rehearsal-corpora.json"
    wanted = {"sizes": dataclasses.asdict(sizes), "voxceleb2": voxceleb2, "version": corpora.VERSION}
    previous = json.loads(made_path.read_text()) if made_path.is_file() else None
    if previous is None or previous.get("made_with") != json.loads(json.dumps(wanted)):
        with atomic_directory(data_root, replace=True) as tmp:
            made = corpora.make_all(tmp, sizes, 0, voxceleb2=voxceleb2, log=log)
            atomic_write_json(tmp / made_path.name, {**made, "made_with": wanted})
        shutil.rmtree(folder / "corpus", ignore_errors=True)
        (folder / "data.lock.json").unlink(missing_ok=True)
    return json.loads(made_path.read_text())


@contextlib.contextmanager
def rehearsal_environment(registry: Path, data_root: Path):
    """$REPRO_MODEL_REGISTRY with the rehearsal's registry file added and $REPRO_DATA set to its data root
    ($REPRO_DATA, /data in the Docker image, would send the corpus stage to the real corpora); both as
    they were afterwards."""
    saved = saved_environ(("REPRO_MODEL_REGISTRY", "REPRO_DATA"))
    previous = [p for p in (saved["REPRO_MODEL_REGISTRY"] or "").split(os.pathsep) if p]
    os.environ["REPRO_MODEL_REGISTRY"] = os.pathsep.join([*previous, str(registry)])
    os.environ["REPRO_DATA"] = str(data_root)
    try:
        yield
    finally:
        restore_environ(saved)


def _workspace(profile_path: Path, folder: Path):
    from repro.config import load_profile
    from repro.workspace import Workspace

    ws = Workspace.for_profile(load_profile(str(profile_path)))
    assert ws.work.resolve() == folder, (ws.work, folder)
    return ws


def run_stages(ws, made: dict, train: tuple[bool, bool | None], progress: bool, log, clock: _Clock) -> dict:
    """The corpus stage (`repro data prepare` on the rehearsal corpora), every other stage of the profile,
    then `repro train` of both speaker recipes (`train`: the rehearsal VoxCeleb2 made, and --train/--no-train);
    returns what `train_recipes` did."""
    from repro.pipeline import run as run_pipeline

    prepare(ws, made, progress, log)
    clock.lap("corpus")

    def on_stage(r, env):
        clock.lap(r.stage, r.seconds)
        log(f"rehearsal: stage {r.stage} done in {r.seconds:.0f} s")

    run_pipeline(ws, ["train", "features", "cka", "probe", "paper"], progress=progress, on_stage=on_stage)
    trained = train_recipes(ws, *train, progress, log)
    if "skipped" not in trained:
        clock.lap(TRAIN)
    return trained


def rehearsal_catalog(made: dict):
    """The data catalogue with IEMOCAP's published counts replaced by the rehearsal corpus's."""
    from repro.data.catalog import ErCounts, load_catalog

    catalog = load_catalog()
    iem = catalog.corpus("iemocap")
    counts = made["iemocap"]
    expect = [dataclasses.replace(e, min_count=min(e.min_count, counts["total"])) if e.min_count else e
              for e in iem.expect]
    er = ErCounts(counts["total"], {str(k): v for k, v in counts["per_session"].items()}, counts["per_label"],
                  "the rehearsal corpus (repro.rehearse.corpora)")
    corpora_ = dict(catalog.corpora)
    corpora_["iemocap"] = dataclasses.replace(iem, expect=expect, er_counts=er)
    return dataclasses.replace(catalog, corpora=corpora_)


def prepare(ws, made: dict, progress: bool, log) -> None:
    from repro.data.prepare import Sources, prepare_corpus
    from repro.util.locks import output_lock

    with output_lock(ws.lock_file(ws.corpus_dir), f"corpus {ws.corpus_dir}"):
        prepare_corpus(ws.corpus_dir, ws.profile, progress=progress, log=log,
                       sources=Sources(catalog=rehearsal_catalog(made), committed=[]))


def train_recipes(ws, have_vox2: bool, asked: bool | None, progress: bool, log) -> dict:
    """`repro train` of both speaker recipes on the rehearsal VoxCeleb2, a few steps each."""
    if asked is False:
        return {"skipped": "not asked (--no-train)"}
    if not have_vox2:
        reason = "no ffmpeg on this machine: the rehearsal VoxCeleb2 (.m4a) cannot be made or converted"
        log(f"rehearsal: repro train skipped: {reason}")
        return {"skipped": reason}
    from repro import recipes
    from repro.data.download import data_root
    from repro.data.prepare.voxceleb2 import convert_voxceleb2

    convert_voxceleb2(data_root(ws.profile.data.root), workers=2, progress=progress)  # `repro data prepare-vox2`
    out = {}
    for recipe in ("supervised", "dino"):
        try:
            info = recipes.train(ws, recipe, progress=progress)
            out[recipe] = {"run": str(recipes.run_dir(ws, recipe)), "published": info is not None,
                           "steps": info and info["steps"], "utterances": info and info["train"]["utterances"]}
        except recipes.TrainingFailed as err:  # trained and judged: a few steps on synthetic speech may not beat
            # the untrained network, and then the model is rightly not published
            out[recipe] = {"run": str(recipes.run_dir(ws, recipe)), "published": False, "judged": str(err)}
        log(f"rehearsal: repro train --recipe {recipe}: {json.dumps(out[recipe])}")
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def write_report(ws, record: dict) -> Path:
    """`paper_figures/rehearse-<profile>/REHEARSAL.md` and `.json`."""
    lines = [f"# REHEARSAL of profile `{record['profile']}` (not results)", "",
             "Synthetic speech in the real corpora's layouts and formats; the real model classes "
             + ("in tiny configurations (--ci)" if record["ci"] else "at their real sizes")
             + " with random seeded weights; the profile's settings with only sizes shrunk. The figures, tables "
             "and checks beside this file show that every stage runs, not what any model learns.", "",
             EASY_SPEAKERS, "",
             "## Seconds per stage", ""]
    lines += [f"- {k}: {v:.0f} s" for k, v in record["seconds"].items()]
    lines += ["", "## Disk", ""] + [f"- {k}: {_gib(v)}" for k, v in record["disk_bytes"].items()]
    lines += ["", "## Sizes shrunk (every other setting is the profile's)", ""] + [f"- {s}" for s in record["shrunk"]]
    lines += ["", "## repro train", "", f"- {json.dumps(record['train'])}"]
    lines += ["", "## What a rehearsal cannot cover", ""] + [f"- {c}" for c in record["cannot_cover"]]
    ws.figures.mkdir(parents=True, exist_ok=True)
    path = ws.figures / "REHEARSAL.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    atomic_write_json(ws.figures / "REHEARSAL.json", record)
    return path

