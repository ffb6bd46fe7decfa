"""What the command line prints: one line per thing a stage did, and the end-of-run summary.

Stages return outcomes (`repro.pipeline`); these functions turn them into text and nothing else.
"""

from __future__ import annotations

from typing import Any, Iterable

from repro.workspace import Workspace


def describe(stage: str, outcome: Any, ws: Workspace) -> list[str]:
    """Lines for one outcome of `stage`."""
    return _DESCRIBE[stage](outcome, ws)


def _corpus(o, ws) -> list[str]:
    return [f"{o.kind} corpus at {o.path}"]


def _train(o, ws) -> list[str]:
    where = ws.models_dir / o.name
    if o.metric == "accuracy":  # a speech SSL model pre-trained by masked prediction
        return [f"{o.name} ({o.recipe}): held-out masked-prediction accuracy {100 * o.trained:.1f}% (untrained "
                f"{100 * o.untrained:.1f}%, majority cluster {100 * o.chance:.1f}%) over {o.over} frames -> {where}"]
    return [f"{o.name} ({o.recipe}): EER {100 * o.trained:.2f}% (untrained {100 * o.untrained:.2f}%) on {o.over} "
            f"trials -> {where}"]


def _features(e, ws) -> list[str]:
    if not e.stores:
        return [f"{e.model}: no store needed (every task reads the upstream)"]
    now = (f"{e.audio_seconds:.0f} s of audio extracted now ({e.rate:.1f} audio s / wall s), "
           f"padding {100 * e.padding_fraction:.1f}%") if e.wall_seconds else "all up to date"
    return [f"{e.model}: {len(e.stores)} stores under {ws.features_dir}; {now}"]


def _cka(o, ws) -> list[str]:
    what = "up to date" if o.skipped else "written"
    return [f"cka {o.a} x {o.b}: {o.layers[0]}x{o.layers[1]} layers, {o.items} {o.level} items; {what}: {o.npz}"]


def _probe(o, ws) -> list[str]:
    state = "up to date" if o.skipped else "written"
    if o.task == "ASV-IDT":
        return [f"{o.model} ASV-IDT ({o.detail}): test EER {o.test:.4f}; {state}: {o.path}"]
    if o.lr is None:
        return [f"{o.model} {o.task}: {o.detail}, test {o.metric} {o.test:.4f} -> {o.path}"]
    return [f"{o.model} {o.task} lr={o.lr:g}: dev {o.metric} {o.dev:.4f}, test {o.test:.4f}; {state}"]


def _paper(o, ws) -> list[str]:
    lines = [f"{oid}: " + ", ".join(str(p) for p in paths) for oid, paths in o.rendered.items()]
    return lines + check_table(o.checks) + [f"report: {o.report}", f"checksums: {o.checksums}"]


_DESCRIBE = {"corpus": _corpus, "train": _train, "features": _features, "cka": _cka, "probe": _probe,
             "paper": _paper}


def check_table(result) -> list[str]:
    """The claim checks and reference comparisons as a small table, then the notes."""
    lines = [f"{'check':8s} {'status':8s} value"]
    lines += [f"{c.id:8s} {c.status:8s} {c.value}" for c in result.claims]
    for r in result.references:
        ours = "-" if r["ours"] is None else f"{r['ours']:.2f}"
        ref = "unknown" if r["value"] is None else f"{r['value']:.2f} +/- {r['tolerance']}"
        lines.append(f"{'ref':8s} {r['status']:8s} {r['group']}: {r['model']} {r['task']}: ours {ours}, "
                     f"reference {ref}")
    if result.note:
        lines.append(f"note: {result.note}")
    lines.append(f"details: {result.files[-1]}")
    return lines


def stage_lines(ws: Workspace, run) -> list[str]:
    """Every outcome of one stage of a pipeline run, then its wall time."""
    tag = f"[{ws.profile.name}] {run.stage}:"
    lines = [f"{tag} {line}" for o in run.outcomes for line in describe(run.stage, o, ws)]
    return lines + [f"[{ws.profile.name}] stage {run.stage}: {run.seconds:.1f} s"]


def summary(ws: Workspace, runs: Iterable) -> list[str]:
    """The end of a pipeline run, short enough to read at a glance: wall time per stage, and when
    the paper stage ran, one line per claim check (PASS / FAIL / NOT-RUN) and where the report is.

    For example (`make demo`)::

        [smoke] summary
          stage      seconds
          corpus        22.6
          ...
          all         1466.8
          claim  status   finding
          C1     PASS     How well a model captures content is largely unrelated to ...
          ...
          note: profile smoke does not enforce claims and references: ...
          report: paper_figures/smoke/REPORT.md
    """
    runs = list(runs)
    tag = f"[{ws.profile.name}]"
    lines = [f"{tag} summary", f"  {'stage':9s} {'seconds':>8s}"]
    lines += [f"  {r.stage:9s} {r.seconds:8.1f}" for r in runs]
    lines.append(f"  {'all':9s} {sum(r.seconds for r in runs):8.1f}")
    for r in runs:
        if r.stage == "paper" and r.outcomes:
            checks = r.outcomes[0].checks
            lines.append(f"  {'claim':6s} {'status':8s} finding")
            lines += [f"  {c.id:6s} {c.status:8s} {_short(c.finding, 80)}" for c in checks.claims]
            counts = {s: sum(c.status == s for c in checks.claims) for s in ("PASS", "FAIL", "NOT-RUN")}
            lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; details: {checks.files[-1]}")
            if checks.note:
                lines.append(f"  note: {checks.note}")
            lines.append(f"  report: {r.outcomes[0].report}")
    return lines


def _short(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."
