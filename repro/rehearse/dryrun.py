"""`repro rehearse --dry-run`: what a rehearsal of a real profile would make and run, and its price on
the machine of the recorded fast rehearsal, without running or writing anything.

The price is the record's (artifacts/bench/rehearsal.json, `repro.bench.rehearsal`) CPU seconds per
stage, each scaled by the ratio of this rehearsal's outputs of that stage (`repro.plan`: stores,
CKA pairs, probe runs, one per learning rate) to the recorded rehearsal's: a first-order estimate
that ignores the splits' sizes (a profile without subsets reads the whole rehearsal splits).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from repro.rehearse import corpora, profile as rprofile

RECORD = Path("artifacts/bench/rehearsal.json")
SCALED = ("features", "cka", "probe")  # priced by their outputs; the other stages as recorded


def _plan(base: str, ci: bool, folder: Path, scratch: Path):
    """The rehearsal profile of `base` (its file written in `scratch`, its data in `folder`) and its plan."""
    from repro.config import load_profile
    from repro.plan import make_plan
    from repro.workspace import Workspace

    path = scratch / f"{folder.name}.yaml"
    data, shrunk = rprofile.overrides(base, folder, ci)
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    ws = Workspace.for_profile(load_profile(str(path)))
    return ws, make_plan(ws, list(SCALED)), shrunk


def _counts(plan) -> dict[str, int]:
    return {stage: len([o for o in plan.outputs if o.stage == stage]) for stage in SCALED}


def price(planned: dict[str, int], record_path: Path = RECORD) -> tuple[dict[str, float] | None, str]:
    """CPU seconds per stage of a rehearsal with `planned` outputs per stage (of `SCALED`), scaled from the
    record; (None, why) without a record."""
    if not record_path.is_file():
        return None, f"no record of a rehearsal ({record_path}: `repro rehearse --profile fast --record " \
                     f"{record_path.parent}`)"
    record = json.loads(record_path.read_text())
    cpu = record.get("cpu_seconds") or {}
    with tempfile.TemporaryDirectory() as scratch:
        _, plan, _ = _plan(record["profile"], bool(record.get("ci")), Path(scratch) / "recorded", Path(scratch))
    recorded = _counts(plan)
    out = {}
    for stage, seconds in cpu.items():
        if stage != "total":
            ratio = planned[stage] / max(recorded[stage], 1) if stage in SCALED else 1.0
            out[stage] = seconds * ratio
    out["total"] = sum(out.values())
    load = record.get("machine", {}).get("load_average_1min")
    return out, (f"the record of `repro rehearse --profile {record['profile']}` ({cpu.get('total', 0) / 60:.1f} CPU-min "
                 f"on {record['machine'].get('cpu')}, {record['machine'].get('logical_cores')} cores, load {load}), "
                 "features, cka and probe scaled by their outputs")


def lines(base: str, ci: bool = False, train: bool | None = None, record_path: Path = RECORD) -> list[str]:
    """The dry run's text: the profile as given and its rehearsal's name and folders, the sizes, the
    outputs per stage, whether `repro train` runs, the price in CPU-minutes."""
    from repro.config import load_profile
    from repro.workspace import root

    name = rprofile.name_of(base)
    folder = (root("REPRO_WORK") / name).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        ws, plan, shrunk = _plan(base, ci, folder, Path(scratch))
    shrunk.append(corpora.sizes_line(corpora.CI if ci else corpora.Sizes(), ci))
    given = f"file {base}, named '{load_profile(base).name}'" if Path(base).suffix in (".yaml", ".yml") \
        else f"'{base}'"
    out = [f"rehearsal plan of profile {given} (nothing is run or written now)",
           f"rehearsal profile '{name}': {ws.work}/ (its data, data lock and models there), {ws.results}/, "
           f"{ws.figures}/",
           f"models: {', '.join(ws.profile.models.all())}; tasks: {', '.join(ws.profile.tasks)}",
           f"{len(shrunk)} settings shrunk (listed in the report):"]
    out += [f"  {s}" for s in shrunk]
    for stage in SCALED:
        c = plan.counts(stage)
        out.append(f"{stage}: {c['complete'] + c['stale'] + c['missing']} outputs ({c['complete']} complete, "
                   f"{c['stale']} stale, {c['missing']} missing)")
    vox2 = corpora.has_ffmpeg() if train is None else train and corpora.has_ffmpeg()
    out.append("repro train: both speaker recipes on the rehearsal VoxCeleb2" if vox2 else
               "repro train: skipped (" + ("--no-train" if train is False else "no ffmpeg on this machine") + ")")
    cpu, source = price(_counts(plan), record_path)
    if cpu is None:
        out.append(f"price: not known ({source})")
    else:
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in cpu.items() if k != "total" and (vox2 or k != "repro train"))
        total = cpu["total"] - (0 if vox2 else cpu.get("repro train", 0.0))
        out.append(f"price: about {total / 60:.0f} CPU-minutes ({stages}); from {source}")
    return out
