"""What `repro run --profile P` would do, and its price, without doing any of it (`repro run --dry-run`).

Per stage, every output the run makes is listed as

    complete   on disk, and its recorded settings key is the one the profile gives now
               (`repro.provenance`): the run keeps it
    stale      on disk under another settings key: the run makes it again; the detail names the
               settings that changed where the output records them (a probe's budget, a store's
               precision), or the profile whose settings it was made under
    missing    not on disk (or unfinished): the run makes it

and what remains is priced in GPU-hours on one H100-class GPU by the cost model
(`repro.bench.costmodel`) from the counts recorded in `artifacts/bench/projection.json`
(`make bench` writes it): no model is built or run, nothing is written, no lock is taken.
A settings key says whether an output is acceptable; an output whose key matches is shown
complete even when the inputs it read have since changed (the run itself also compares the
content digests of those inputs and may redo it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from repro.remedy import command, make_line
from repro.workspace import Workspace

STATUSES = ("complete", "stale", "missing")


@dataclass
class Output:
    """One output of a stage: where it is, its status, why, and what prices it.

    `price` is (model, task) as the cost model's terms name them (a CKA pair: `A__B`, task `CKA`),
    `share` the fraction of those terms this output carries (one of a task's learning rates)."""

    stage: str
    path: Path
    status: str
    detail: str = ""
    price: tuple[str, str, str] | None = None  # (model, task, what: probe | features | cka)
    share: float = 1.0


@dataclass
class Plan:
    """The outputs of a profile's run and what blocks it (`notes`: data to fetch, models to train)."""

    profile: str
    outputs: list[Output] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hours: dict[str, float] | None = None  # {"float32": h, "bf16": h} of what remains
    unpriced: list[str] = field(default_factory=list)
    price_source: str = ""

    def counts(self, stage: str | None = None) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for o in self.outputs:
            if stage is None or o.stage == stage:
                out[o.status] += 1
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _made_under(recorded: str | None, key_for) -> str:
    """`made under profile X` when `recorded` is the key another named profile gives, else ''."""
    from repro.config import load_profile, profile_names

    if recorded is None:
        return "made before settings keys were recorded"
    for name in profile_names():
        try:
            if key_for(load_profile(name)) == recorded:
                return f"made under profile '{name}'"
        except Exception:  # a model or task the other profile lacks: that profile did not make it
            continue
    return ""


def _diff(recorded: dict | None, now: dict, prefix: str) -> str:
    if not isinstance(recorded, dict):
        return ""
    keys = sorted(set(recorded) | set(now))
    changed = [f"{prefix}{k}: {recorded.get(k)!r} -> {now.get(k)!r}" for k in keys if recorded.get(k) != now.get(k)]
    return "; ".join(changed)


def _status(recorded: str | None, expected: str, exists: bool, detail_fn) -> tuple[str, str]:
    if not exists:
        return "missing", ""
    if recorded == expected:
        return "complete", ""
    return "stale", detail_fn() or f"settings key {str(recorded)[:12]} recorded, {expected[:12]} now"


# ---- stages ----

def _corpus(ws: Workspace, plan: Plan) -> None:
    from repro.provenance import is_complete, read_stamp, why_not_complete

    recorded = read_stamp(ws.corpus_dir / "corpus.json")
    cfg = ws.profile.corpus
    expected = None
    if cfg.kind == "synthetic":
        from repro.data.synth import corpus_stamp

        try:
            expected = corpus_stamp(cfg.synthetic, ws.profile.seed)
        except Exception as err:  # no espeak-ng voice library: the run says so too
            plan.notes.append(f"the synthetic corpus cannot be made here: {err}")
    else:
        from repro.data.catalog import load_catalog
        from repro.data.download import data_root
        from repro.data.prepare import corpus_stamp, missing_data

        expected = corpus_stamp(ws.profile)
        if not is_complete(recorded, expected):
            root = data_root(ws.profile.data.root)
            problems = missing_data(ws.profile, root=root, catalog=load_catalog())
            if problems:
                plan.notes.append(f"profile '{ws.profile.name}' needs data that is not under {root}: run "
                                  f"`{make_line('data', ws)}` ({command('data fetch', ws)}), then this plan again")
                plan.notes += [f"  - {p}" for p in problems]
    if not (ws.corpus_dir / "corpus.json").is_file():
        status, detail = "missing", ""
    elif expected is not None and is_complete(recorded, expected):
        status, detail = "complete", ""
    else:
        status = "stale"
        detail = why_not_complete(recorded, expected) if expected is not None else "the corpus cannot be made here"
        if detail == "made under other settings":
            detail = "data settings (data.*, tasks, seed) or the synthetic corpus's settings changed"
    plan.outputs.append(Output("corpus", ws.corpus_dir, status, detail))


def _train(ws: Workspace, plan: Plan) -> None:
    from repro import recipes
    from repro.errors import ReproError
    from repro.provenance import is_complete, read_stamp, recorded_settings, trained_model_key, why_not_complete

    for name in [*ws.profile.speaker_training.pipeline_recipes, *ws.profile.ssl_training.pipeline_recipes]:
        path = ws.models_dir / recipes.settings(ws.profile, name).output_name / "model.json"
        recorded = read_stamp(path)
        if not path.is_file():
            plan.outputs.append(Output("train", path, "missing", ""))
            continue
        try:
            expected = recipes.stamp(ws, name)
        except (ReproError, OSError) as err:  # its training data is not there (yet)
            plan.outputs.append(Output("train", path, "stale", f"its training data cannot be read: {err}"))
            continue
        detail = why_not_complete(recorded, expected)
        if detail == "made under other settings":
            detail = _made_under(recorded_settings(recorded), lambda p: trained_model_key(p, name)) or detail
        plan.outputs.append(Output("train", path, "complete" if is_complete(recorded, expected) else "stale", detail))


def _splits(ws: Workspace, task: str) -> list[str]:
    from repro.data.manifest import manifest_path

    path = manifest_path(ws.corpus_dir, task)
    if not path.is_file():
        return []
    splits = set()
    with open(path) as f:
        for line in f:
            if line.strip():
                splits.add(json.loads(line)["split"])
    return sorted(splits)


def _store(ws: Workspace, stage: str, model: str, task: str, split: str, kind: str, price) -> Output:
    from repro.provenance import store_key

    path = ws.store_dir(model, task, split, pooled=kind == "pooled")
    meta = _read_json(path / "meta.json")
    expected = store_key(ws.profile, model, task, kind)
    recorded = meta["info"].get("settings") if isinstance(meta, dict) and isinstance(meta.get("info"), dict) else None

    def detail() -> str:
        own = ""
        if kind == "frames" and isinstance(meta, dict) and meta.get("dtype") != ws.profile.extraction.dtype:
            own = f"extraction.dtype: {meta.get('dtype')!r} -> {ws.profile.extraction.dtype!r}"
        return own or _made_under(recorded, lambda p: store_key(p, model, task, kind))

    status, why = _status(recorded, expected, meta is not None, detail)
    return Output(stage, path, status, why, price)


def _features(ws: Workspace, plan: Plan, tasks: Iterable[str], stage: str, kinds: list[str] | None = None) -> None:
    from repro.tasks import stores_needed

    for model in ws.profile.models.all():
        for task in tasks:
            price_task = "CKA" if stage == "cka" else "ASV-IDT" if task == "ASV" else task
            splits = _splits(ws, task)
            if not splits:  # no manifest yet: the stores of the task, as one output
                if kinds or stores_needed(ws.profile, task, "test"):
                    plan.outputs.append(Output(stage, ws.features_dir / model / task, "missing",
                                               "its splits are known once the corpus stage has run",
                                               (model, price_task, "features")))
                continue
            for split in splits:
                for kind in kinds or stores_needed(ws.profile, task, split):
                    plan.outputs.append(_store(ws, stage, model, task, split, kind, (model, price_task, "features")))
    _share(plan, stage, "features")


def _share(plan: Plan, stage: str, what: str) -> None:
    """Split each (model, task) price evenly among its outputs of `stage`."""
    groups: dict[tuple, list[Output]] = {}
    for o in plan.outputs:
        if o.stage == stage and o.price and o.price[2] == what:
            groups.setdefault(o.price, []).append(o)
    for outs in groups.values():
        for o in outs:
            o.share = 1.0 / len(outs)


def _cka(ws: Workspace, plan: Plan) -> None:
    from repro.provenance import cka_key
    from repro.similarity.stage import default_pairs, result_paths

    _features(ws, plan, [ws.profile.cka.task], "cka", ["frames"])
    stores = {o.price[0]: o for o in plan.outputs if o.stage == "cka" and o.price and o.price[2] == "features"}
    for a, b in default_pairs(ws.profile.models.all()):
        npz, js = result_paths(ws, a, b)
        info = _read_json(js)
        expected = cka_key(ws.profile, a, b)
        recorded = (info.get("provenance") or {}).get("settings") if isinstance(info, dict) else None

        def detail(a=a, b=b, recorded=recorded) -> str:
            stale = [f"{stores[m].path} ({stores[m].detail})" for m in dict.fromkeys((a, b))
                     if m in stores and stores[m].status == "stale"]
            return f"its store {'; '.join(stale)} is stale" if stale else \
                _made_under(recorded, lambda p: cka_key(p, a, b))

        status, detail = _status(recorded, expected, info is not None and npz.is_file(), detail)
        plan.outputs.append(Output("cka", js, status, detail, (f"{a}__{b}", "CKA", "cka")))


def _probe(ws: Workspace, plan: Plan) -> None:
    from repro.config.typed import to_dict
    from repro.probing.runner import lr_tag
    from repro.provenance import asv_idt_key, probe_key

    for model in ws.profile.models.all():
        for task in ws.profile.tasks:
            budget = ws.profile.probing.tasks[task]
            folder = ws.probe_dir(model, task)
            outs = []
            for lr in [*budget.lr_grid, None]:
                path = folder / (f"{lr_tag(lr)}.json" if lr is not None else "best.json")
                data = _read_json(path)
                expected = probe_key(ws.profile, model, task, lr)
                recorded = (data.get("provenance") or {}).get("settings") if isinstance(data, dict) else None

                def detail(data=data, recorded=recorded, lr=lr) -> str:
                    now = {k: v for k, v in to_dict(budget).items() if k != "lr_grid"}
                    old = {k: v for k, v in (data.get("budget") or {}).items() if k != "lr_grid"}
                    return (_diff(old, now, f"probing.tasks.{task}.") if data.get("budget") else "") or \
                        _made_under(recorded, lambda p: probe_key(p, model, task, lr))

                status, why = _status(recorded, expected, data is not None, detail)
                outs.append(Output("probe", path, status, why, (model, task, "probe") if lr is not None else None,
                                   1.0 / len(budget.lr_grid)))
            plan.outputs += outs
        if "ASV" in ws.profile.tasks:
            path = ws.asv_idt_file(model)
            data = _read_json(path)
            expected = asv_idt_key(ws.profile, model)
            recorded = (data.get("provenance") or {}).get("settings") if isinstance(data, dict) else None
            status, why = _status(recorded, expected, data is not None,
                                  lambda: _made_under(recorded, lambda p: asv_idt_key(p, model)))
            plan.outputs.append(Output("probe", path, status, why))


def _paper(ws: Workspace, plan: Plan) -> None:
    report = ws.figures / "REPORT.md"
    plan.outputs.append(Output("paper", ws.figures, "missing" if not report.is_file() else "stale",
                               "figures, tables, checks and report are redrawn by every run (seconds, no GPU)"))


# ---- the price ----

def _cost_terms(profile, bench_dir: Path) -> tuple[list, str]:
    """The cost model's terms for `profile` from the counts in `bench_dir/projection.json` (no model runs)."""
    from repro.bench import costmodel
    from repro.bench.projection import gpu_step_seconds

    record = _read_json(bench_dir / "projection.json")
    if record is None:
        return [], f"no {bench_dir}/projection.json: `make bench` counts the terms the price needs"
    steps, _, gpu_inputs = gpu_step_seconds(bench_dir)
    measured = {k: costmodel.Input(**v) for k, v in record["inputs"].items()}
    measured.update(gpu_inputs)
    model = costmodel.CostModel(profile, record["flops_per_audio_second"], record["head_flops_per_frame"],
                                record["pooled_step_operators"], measured, costmodel.CODE_PATHS,
                                record.get("flop_seconds", 8.0), steps)
    return model.terms(), f"cost model terms from the counts in {bench_dir}/projection.json"


def price(plan: Plan, ws: Workspace, bench_dir: Path = Path("artifacts/bench")) -> None:
    """Fill `plan.hours` with the GPU-hours of the outputs not complete (float32 and bf16)."""
    from repro.bench.costmodel import MODELS

    try:
        terms, plan.price_source = _cost_terms(ws.profile, bench_dir)
    except (KeyError, TypeError, ValueError) as err:
        terms, plan.price_source = [], f"{bench_dir}/projection.json does not fit this version ({err}): `make bench`"
    if not terms:
        return
    by_key: dict[tuple[str, str, str], dict[str, float]] = {}
    for t in terms:
        what = "cka" if "__" in t.model else "features" if t.what.startswith("features:") else "probe"
        row = by_key.setdefault((t.model, t.task, what), {"float32": 0.0, "bf16": 0.0})
        row[t.precision] = row.get(t.precision, 0.0) + t.hours
    hours = {"float32": 0.0, "bf16": 0.0}
    unpriced = set()
    for o in plan.outputs:
        if o.status == "complete" or o.price is None:
            continue
        model, task, what = o.price
        names = model.split("__")
        if any(n not in MODELS for n in names):
            unpriced.add(model)
            continue
        row = by_key.get((model, task, what))
        if row is None and what == "cka":  # the cost model names a pair in one order
            row = by_key.get((f"{names[-1]}__{names[0]}", task, what))
        for p in hours:
            hours[p] += (row or {}).get(p, 0.0) * o.share
    plan.hours = hours
    plan.unpriced = sorted(unpriced)


def make_plan(ws: Workspace, stages: list[str] | None = None, bench_dir: Path = Path("artifacts/bench")) -> Plan:
    """The plan of `repro run` for `ws` (only `stages` when given): reads files, writes nothing."""
    from repro.pipeline import STAGES

    builders = {"corpus": _corpus, "train": _train, "features": lambda w, p: _features(w, p, w.profile.tasks,
                                                                                       "features"),
                "cka": _cka, "probe": _probe, "paper": _paper}
    assert list(builders) == list(STAGES), "a stage without a plan"
    plan = Plan(ws.profile.name)
    for name in stages or list(STAGES):
        builders[name](ws, plan)
    for o in plan.outputs:  # a probe's price is split over its learning rates
        if o.stage == "probe" and o.price:
            o.share = 1.0 / len(ws.profile.probing.tasks[o.price[1]].lr_grid)
    price(plan, ws, bench_dir)
    return plan


def _hours(h: float) -> str:
    return f"{h:.2f}" if h >= 0.01 or h == 0 else f"{h:.2g}"


def lines(plan: Plan, ws: Workspace, show_complete: bool = False, limit: int = 6) -> list[str]:
    """The plan as text: per stage its counts and every output not complete, then the price."""
    out = [f"plan of {command('run', ws)} (nothing is run or written now)"]
    for note in plan.notes:
        out.append(note)
    stages = []
    for o in plan.outputs:
        if o.stage not in stages:
            stages.append(o.stage)
    for stage in stages:
        c = plan.counts(stage)
        out.append(f"{stage}: {c['complete']} complete, {c['stale']} stale, {c['missing']} missing")
        shown = [o for o in plan.outputs if o.stage == stage and (show_complete or o.status != "complete")]
        plain = [o for o in shown if o.status == "missing"]
        for o in shown:
            if o.status != "missing" or show_complete or len(plain) <= limit or o in plain[:limit]:
                out.append(f"  {o.status:8s} {o.path}" + (f"  ({o.detail})" if o.detail else ""))
        if not show_complete and len(plain) > limit:
            out.append(f"  ... and {len(plain) - limit} more missing (--verbose lists every output)")
    if plan.hours is not None:
        precision = "bf16" if ws.profile.extraction.autocast == "bf16" else "float32"
        out.append(f"remaining: {_hours(plan.hours['float32'])} GPU-hours float32, {_hours(plan.hours['bf16'])} GPU-hours "
                   f"bf16 autocast on one H100-class GPU (this profile runs {precision}; {plan.price_source})")
        if plan.unpriced:
            out.append(f"not priced (the cost model knows only the paper's four models): {', '.join(plan.unpriced)}")
    else:
        out.append(f"remaining: not priced ({plan.price_source})")
    return out
