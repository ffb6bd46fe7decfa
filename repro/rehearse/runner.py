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

import dataclasses
import json
import os
import shutil
import warnings
import time
from pathlib import Path

from repro.paper.rehearsal import MARKER
from repro.rehearse import corpora, models, profile as rprofile
from repro.util.atomic import atomic_directory, atomic_write_json, atomic_write_text

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


def rehearse(base: str, *, ci: bool = False, device: str | None = None, train: bool | None = None,
             progress: bool = True, log=print, record_dir: Path | None = None) -> dict:
    """Rehearse profile `base` (fast or full); returns the rehearsal's record (also REHEARSAL.md)."""
    from repro.config import load_profile
    from repro.workspace import Workspace, check_folder, root

    started, cpu_started = time.perf_counter(), cpu_seconds()
    load_start = _load()
    # the profile's num_workers is kept on any machine; torch warns about it once per store on small ones
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    name = rprofile.name_of(base)
    check_folder(root("REPRO_WORK"), "REPRO_WORK")
    check_folder(root("REPRO_WORK") / name, "REPRO_WORK")
    folder = (root("REPRO_WORK") / name).resolve()
    profile_path, shrunk = rprofile.write_profile(base, folder, ci)
    if device:
        text = profile_path.read_text()
        runtime = {"extraction": {"device": device}, "probing": {"device": device}, "cka": {"device": device}}
        import yaml

        from repro.config.yamlfile import safe_load

        data = safe_load(text, str(profile_path))
        for k, v in runtime.items():
            data.setdefault(k, {}).update(v)
        data["speaker_training"]["device"] = device
        profile_path.write_text(text.split("\n", 1)[0] + "\n" + yaml.safe_dump(data, sort_keys=False))
    sizes = corpora.CI if ci else corpora.Sizes()
    if ci:
        shrunk.append("corpus sizes: the CI sizes (repro.rehearse.corpora.CI); models: tiny configurations")
    else:
        shrunk.append("corpus sizes: repro.rehearse.corpora.Sizes (speakers, utterances per speaker)")
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    mark = [cpu_seconds()]

    def cpu_done(stage: str) -> None:
        now = cpu_seconds()
        cpu[stage], mark[0] = now - mark[0], now
    atomic_write_json(folder / MARKER, {"rehearsal": True, "profile": base, "ci": ci, "shrunk": shrunk,
                                        "weights": "random", "speech": "synthetic (libespeak-ng)"})

    # 1. corpora in their real layouts
    t = time.perf_counter()
    data_root = folder / "data"
    made_path = data_root / ".rehearsal-corpora.json"
    want_vox2 = corpora.has_ffmpeg() if train is None else train and corpora.has_ffmpeg()
    wanted = {"sizes": dataclasses.asdict(sizes), "voxceleb2": want_vox2, "version": corpora.VERSION}
    previous_made = json.loads(made_path.read_text()) if made_path.is_file() else None
    if previous_made is None or previous_made.get("made_with") != json.loads(json.dumps(wanted)):
        with atomic_directory(data_root, replace=True) as tmp:
            made = corpora.make_all(tmp, sizes, 0, voxceleb2=want_vox2, log=log)
            atomic_write_json(tmp / made_path.name, {**made, "made_with": wanted})
        # prepared from the previous corpora, and the lock of their subset lists: made again with these
        shutil.rmtree(folder / "corpus", ignore_errors=True)
        (folder / "data.lock.json").unlink(missing_ok=True)
    made = json.loads(made_path.read_text())
    seconds["corpora"] = time.perf_counter() - t
    cpu_done("corpora")

    # 2. models at their real sizes, random weights; the registry entries overridden by a file
    t = time.perf_counter()
    sources = models.make_models(folder / "upstreams", seed=0, tiny=ci, log=log)
    registry = models.registry_file(folder / "models.yaml", sources, tiny=ci)
    previous = os.environ.get("REPRO_MODEL_REGISTRY", "")
    os.environ["REPRO_MODEL_REGISTRY"] = os.pathsep.join([p for p in previous.split(os.pathsep) if p] + [str(registry)])
    # $REPRO_DATA (the Docker image sets /data) would send the corpus stage to the real corpora
    real_data = os.environ.get("REPRO_DATA")
    os.environ["REPRO_DATA"] = str(data_root)
    seconds["models"] = time.perf_counter() - t
    cpu_done("models")
    try:
        cfg = load_profile(str(profile_path))
        ws = Workspace.for_profile(cfg)
        assert ws.work.resolve() == folder, (ws.work, folder)
        # 3. the corpus stage: `repro data prepare` on the rehearsal corpora
        t = time.perf_counter()
        prepare(ws, made, progress, log)
        seconds["corpus"] = time.perf_counter() - t
        cpu_done("corpus")
        # 4. every other stage of the profile
        from repro.pipeline import run as run_pipeline

        def on_stage(r, env):
            seconds[r.stage] = r.seconds
            cpu_done(r.stage)
            log(f"rehearsal: stage {r.stage} done in {r.seconds:.0f} s")

        run_pipeline(ws, [s for s in ("train", "features", "cka", "probe", "paper")], progress=progress,
                     on_stage=on_stage)
        # 5. `repro train` for both speaker recipes
        trained = train_recipes(ws, want_vox2, train, progress, log, seconds)
        if TRAIN in seconds:
            cpu_done(TRAIN)
    finally:
        if real_data is None:
            os.environ.pop("REPRO_DATA", None)
        else:
            os.environ["REPRO_DATA"] = real_data
        if previous:
            os.environ["REPRO_MODEL_REGISTRY"] = previous
        else:
            os.environ.pop("REPRO_MODEL_REGISTRY", None)
    seconds["total"] = time.perf_counter() - started
    cpu["total"] = cpu_seconds() - cpu_started
    record = {"profile": base, "rehearsal_profile": name, "ci": ci, "seconds": seconds, "cpu_seconds": cpu,
              "load_average_start": load_start, "load_average_end": _load(),
              "disk_bytes": {"work": _du([ws.work]), "results": _du([ws.results]), "figures": _du([ws.figures])},
              "shrunk": shrunk, "corpora": made, "train": trained, "cannot_cover": CANNOT}
    write_report(ws, record)
    if record_dir is not None:
        from repro.bench.rehearsal import record as write_record

        log(f"record: {write_record(record, record_dir)}")
    return record


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


def train_recipes(ws, have_vox2: bool, asked: bool | None, progress: bool, log, seconds: dict) -> dict:
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

    t = time.perf_counter()
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
    seconds[TRAIN] = time.perf_counter() - t
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

