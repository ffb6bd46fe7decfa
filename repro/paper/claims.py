"""The paper's findings as computed checks, and comparisons with published reference values.

Each check states its statistic, its pass condition and why that condition;
it is PASS or FAIL on the results present, NOT-RUN when a result it needs is
missing (a check is never PASS for lack of data).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import spearmanr

from repro.paper.results import ResultReader, models_by_family, relative_depth
from repro.tasks import TASKS
from repro.workspace import Workspace
from repro.config.yamlfile import safe_load

REFERENCE_FILE = Path(__file__).resolve().parents[2] / "artifacts" / "reference_values.yaml"


class NotRun(Exception):
    """A check cannot be evaluated (inputs missing); the message says why."""


@dataclass(frozen=True)
class Reads:
    """What a check reads: probe results of `tasks` for the models of `families` (`models_by_family`),
    and CKA pairs (`cka`: `across` speech SSL x speaker SSL, or none)."""

    families: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    cka: str = "none"


@dataclass(frozen=True)
class Claim:
    id: str
    finding: str
    statistic: str
    condition: str
    reason: str
    evaluate: Callable[[Workspace, ResultReader], tuple[str, bool]]
    reads: Reads = Reads()

    @property
    def abstract(self) -> str:
        """The abstract's claim the check belongs to: `C2b` -> `2`."""
        return self.id[1:].rstrip("abcdefghijklmnopqrstuvwxyz")


ALL_FAMILIES = ("speech_ssl", "speaker_ssl", "speaker_sup")


@dataclass
class Outcome:
    id: str
    status: str  # PASS | FAIL | NOT-RUN
    value: str
    finding: str
    statistic: str
    condition: str
    reason: str


def _need(reader: ResultReader, value):
    if reader.missing:
        n = sum(len(v) for v in reader.missing.values())
        targets = ", ".join(f"`{t}`" for t in reader.missing)
        raise NotRun(f"{n} result file(s) missing ({targets})")
    return value


def _family(ws, family: str) -> list[str]:
    models = models_by_family(ws)[family]
    if not models:
        raise NotRun(f"the profile has no {family.replace('_', ' ')} model")
    return models


def _probe(ws, reader, model, task):
    if task not in ws.profile.tasks:
        raise NotRun(f"task {task} is not in the profile")
    return reader.probe(model, task)


def _content_speaker(ws, reader):
    models = ws.profile.models.all()
    if len(models) < 3:
        raise NotRun("needs at least three models")
    content_tasks = [t for t in ws.profile.tasks if TASKS[t].aspect in ("content", "semantics")]
    speaker_tasks = [t for t in ws.profile.tasks if TASKS[t].aspect == "speaker"]
    if not content_tasks or not speaker_tasks:
        raise NotRun("needs a content task (PR, KS, IC) and a speaker task (SID, ASV)")
    res = {(m, t): reader.probe(m, t) for m in models for t in content_tasks + speaker_tasks}
    _need(reader, None)

    def score(m, tasks):
        return np.mean([1 - res[(m, t)]["test"] if res[(m, t)]["metric"] in ("per", "eer") else res[(m, t)]["test"]
                        for t in tasks])

    content = [score(m, content_tasks) for m in models]
    speaker = [score(m, speaker_tasks) for m in models]
    return content, speaker


def c1(ws, reader):
    content, speaker = _content_speaker(ws, reader)
    rho = float(spearmanr(content, speaker).statistic)
    return f"rho = {rho:.2f} over {len(content)} models", rho <= 0.5


def _window_ratio(w: list[float], width: int = 3) -> float:
    w = np.asarray(w, float) / np.sum(w)
    width = min(width, len(w))
    best = max(w[i:i + width].sum() for i in range(len(w) - width + 1))
    return float(best / (width / len(w)))


def c2a(ws, reader):
    models = _family(ws, "speech_ssl")
    res = {m: _probe(ws, reader, m, "PR") for m in models}
    _need(reader, None)
    ratios = {m: _window_ratio(res[m]["layer_weights"]) for m in models}
    return ", ".join(f"{m}: {r:.2f}x" for m, r in ratios.items()), all(r >= 1.5 for r in ratios.values())


def c2b(ws, reader):
    models = _family(ws, "speech_ssl")
    res = {m: (_probe(ws, reader, m, "PR"), _probe(ws, reader, m, "SID")) for m in models}
    _need(reader, None)
    gaps = {m: relative_depth(pr["layer_weights"]) - relative_depth(sid["layer_weights"]) for m, (pr, sid) in res.items()}
    return ", ".join(f"{m}: {g:+.2f}" for m, g in gaps.items()), all(g >= 0.1 for g in gaps.values())


def _test_by_family(ws, reader, task: str) -> tuple[list[float], list[float]]:
    """The test metric of `task`'s probe of every speech-SSL model, then of every speaker-SSL model."""
    speech, speaker = _family(ws, "speech_ssl"), _family(ws, "speaker_ssl")
    res = {m: _probe(ws, reader, m, task) for m in speech + speaker}
    _need(reader, None)
    return [res[m]["test"] for m in speech], [res[m]["test"] for m in speaker]


def c3a(ws, reader):
    speech, speaker = _test_by_family(ws, reader, "PR")
    worst_speech, best_speaker = max(speech), min(speaker)
    return (f"best speaker-SSL PER {100 * best_speaker:.1f}% vs worst speech-SSL PER {100 * worst_speech:.1f}%",
            best_speaker > worst_speech)


def c3b(ws, reader):
    speech, speaker = _test_by_family(ws, reader, "ASV")
    best_speech, best_speaker = min(speech), min(speaker)
    return (f"best speaker-SSL EER {100 * best_speaker:.2f}% vs best speech-SSL EER {100 * best_speech:.2f}%",
            best_speaker < best_speech)


def c3c(ws, reader):
    speech, speaker = _family(ws, "speech_ssl"), _family(ws, "speaker_ssl")
    models = ws.profile.models.all()
    pairs = [(a, b) if models.index(a) < models.index(b) else (b, a) for a in speech for b in speaker]
    res = {p: reader.cka(*p) for p in pairs}
    _need(reader, None)
    last = {p: float(r["matrix"][-1, -1]) for p, r in res.items()}
    worst = max(last.values())
    return ", ".join(f"{a}/{b}: {v:.2f}" for (a, b), v in last.items()), worst <= 0.5


def c4a(ws, reader):
    models = _family(ws, "speech_ssl")
    res = {m: _probe(ws, reader, m, "PR") for m in models}
    _need(reader, None)
    depth = {m: relative_depth(r["layer_weights"]) for m, r in res.items()}
    return ", ".join(f"{m}: {d:.2f}" for m, d in depth.items()), all(d >= 0.5 for d in depth.values())


def c4b(ws, reader):
    groups = models_by_family(ws)
    models = groups["speaker_ssl"] + groups["speaker_sup"]
    if not models:
        raise NotRun("the profile has no speaker model")
    res = {m: _probe(ws, reader, m, "PR") for m in models}
    _need(reader, None)
    depth = {m: relative_depth(r["contributions"]) for m, r in res.items()}
    return ", ".join(f"{m}: {d:.2f}" for m, d in depth.items()), all(d <= 0.5 for d in depth.values())


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "How well a model captures content is largely unrelated to how good its speaker representation is.",
          "Spearman rank correlation, across all models, between a content score (mean of 1-PER, KS and IC "
          "accuracy) and a speaker score (mean of SID accuracy and 1-EER)",
          "rho <= 0.5",
          "a rank correlation above 0.5 would mean the content ranking largely predicts the speaker ranking "
          "(with four models, at most one of six pairs out of order)", c1,
          Reads(ALL_FAMILIES, ("PR", "KS", "IC", "SID", "ASV"))),
    Claim("C2a", "Specific layers of speech SSL models are partly specialised in linguistic information.",
          "share of the PR layer weight in the best window of 3 adjacent layers, relative to a uniform "
          "weighting (3/L), for each speech SSL model",
          ">= 1.5 for every speech SSL model",
          "weights start uniform; 1.5 times the uniform share in 3 adjacent layers means training moved the "
          "phone probe onto a specific band of layers", c2a,
          Reads(("speech_ssl",), ("PR",))),
    Claim("C2b", "Specific layers of speech SSL models are partly specialised in linguistic information "
          "(and not the ones speaker identity uses).",
          "centre of mass of the PR weights minus that of the SID weights, as a fraction of depth",
          ">= +0.10 for every speech SSL model",
          "a tenth of the depth (1.2 layers of 12) separates the layers content uses from those speaker "
          "identity uses", c2b,
          Reads(("speech_ssl",), ("PR", "SID"))),
    Claim("C3a", "Speaker SSL models tend to disregard linguistic information.",
          "PR phone error rate of the best speaker SSL model vs the worst speech SSL model",
          "speaker SSL PER > every speech SSL PER",
          "disregarding content means even the best speaker SSL model recognises phones worse than any "
          "speech SSL model", c3a,
          Reads(("speech_ssl", "speaker_ssl"), ("PR",))),
    Claim("C3b", "Speaker SSL models have a more sophisticated speaker representation than speech SSL.",
          "ASV equal error rate (SUPERB probe) of the best speaker SSL model vs the best speech SSL model",
          "speaker SSL EER < speech SSL EER", "a better speaker representation verifies speakers better", c3b,
          Reads(("speech_ssl", "speaker_ssl"), ("ASV",))),
    Claim("C3c", "Speaker SSL and speech SSL models diverge in their late layers.",
          "linear CKA between the last layer of each speaker SSL model and the last layer of each speech SSL "
          "model",
          "<= 0.5 for every pair", "below 0.5 the two representations share less than half of their linear "
          "structure", c3c,
          Reads(("speech_ssl", "speaker_ssl"), (), "across")),
    Claim("C4a", "Speech SSL models capture linguistic content progressively in deeper layers.",
          "centre of mass of the PR weights as a fraction of depth, for each speech SSL model",
          ">= 0.5 for every speech SSL model", "content weighted towards the deeper half of the stack", c4a,
          Reads(("speech_ssl",), ("PR",))),
    Claim("C4b", "Speaker models keep phoneme information only in early layers.",
          "centre of mass of the PR contributions (norm-corrected) as a fraction of depth, for each speaker "
          "model (SSL and supervised)",
          "<= 0.5 for every speaker model", "phone information weighted towards the earlier half", c4b,
          Reads(("speaker_ssl", "speaker_sup"), ("PR",))),
)


def evaluate_claims(ws: Workspace) -> list[Outcome]:
    """Every claim check on the results present."""
    out = []
    for c in CLAIMS:
        reader = ResultReader(ws)
        try:
            value, passed = c.evaluate(ws, reader)
            status = "PASS" if passed else "FAIL"
        except NotRun as why:
            value, status = str(why), "NOT-RUN"
        out.append(Outcome(c.id, status, value, c.finding, c.statistic, c.condition, c.reason))
    return out


def load_references(path: Path = REFERENCE_FILE) -> list[dict[str, Any]]:
    """Reference values, each with its group's source."""
    data = safe_load(path.read_text(), str(path))
    return [{**v, "group": group, "source": body["source"]} for group, body in data.items() for v in body["values"]]


def compare_references(ws: Workspace, path: Path = REFERENCE_FILE) -> list[dict[str, Any]]:
    """Our test metric (%) next to each reference value of a model in the profile."""
    models = set(ws.profile.models.all())
    rows = []
    for ref in load_references(path):
        if ref["model"] not in models:
            continue
        row = {**ref, "ours": None}
        if ref["value"] is None:
            rows.append({**row, "status": "NOT-RUN", "why": "reference value unknown"})
            continue
        reader = ResultReader(ws)
        r = reader.asv_idt(ref["model"]) if ref["task"] == "ASV-IDT" else (
            reader.probe(ref["model"], ref["task"]) if ref["task"] in ws.profile.tasks else None)
        if r is None:
            rows.append({**row, "status": "NOT-RUN", "why": "result missing"})
            continue
        ours = 100 * r["test"]
        ok = abs(ours - ref["value"]) <= ref["tolerance"]
        rows.append({**row, "ours": round(ours, 2), "status": "PASS" if ok else "FAIL", "why": ""})
    return rows


def write_checks(ws: Workspace, claims: list[Outcome], refs: list[dict[str, Any]]) -> list[Path]:
    """`checks.json` and `checks.md` under the profile's figures folder."""
    from repro.util.atomic import atomic_write_json, atomic_write_text

    ws.figures.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ws.figures / "checks.json", {"claims": [asdict(c) for c in claims], "references": refs})
    atomic_write_text(ws.figures / "checks.md", checks_markdown(ws, claims, refs))
    return [ws.figures / "checks.json", ws.figures / "checks.md"]


def checks_markdown(ws: Workspace, claims: list[Outcome], refs: list[dict[str, Any]]) -> str:
    cfg = ws.profile.paper
    lines = ["| check | status | value | finding | pass condition |", "|---|---|---|---|---|"]
    lines += [f"| {c.id} | {c.status} | {c.value} | {c.finding} | {c.condition} |" for c in claims]
    lines += ["", "Statistics and reasons:", ""]
    lines += [f"- **{c.id}**: {c.statistic}; pass if {c.condition}: {c.reason}." for c in claims]
    if not cfg.enforce_claims:
        lines += ["", f"Claim checks are reported but not enforced for the {ws.profile.name} profile "
                      f"({cfg.enforcement_note})."]
    lines += ["", "| reference | model | task | ours (%) | reference (%) | tolerance | status |",
              "|---|---|---|---|---|---|---|"]
    for r in refs:
        ours = "–" if r["ours"] is None else f"{r['ours']:.2f}"
        value = "unknown" if r["value"] is None else f"{r['value']:.2f}"
        tol = "–" if r.get("tolerance") is None else f"±{r['tolerance']}"
        lines.append(f"| {r['group']} | {r['model']} | {r['task']} | {ours} | {value} | {tol} | {r['status']} |")
    if not refs:
        lines.append("| – | no model of this profile has a reference value | | | | | NOT-RUN |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CheckReport:
    """The claim checks and reference comparisons of a profile, and whether they fail it.

    `failed` is True when an enforced kind of check (`paper.enforce_claims`,
    `paper.enforce_references`) has a FAIL; `note` says which kinds the profile does not enforce."""

    claims: list[Outcome]
    references: list[dict[str, Any]]
    failed: bool
    note: str
    files: list[Path]


def check(ws: Workspace) -> CheckReport:
    """Evaluate the claims and references, write `checks.json` / `checks.md`, and judge them."""
    claims, refs = evaluate_claims(ws), compare_references(ws)
    files = write_checks(ws, claims, refs)
    cfg = ws.profile.paper
    failed = (cfg.enforce_claims and any(c.status == "FAIL" for c in claims)) or (
        cfg.enforce_references and any(r["status"] == "FAIL" for r in refs))
    off = [k for k, on in (("claims", cfg.enforce_claims), ("references", cfg.enforce_references)) if not on]
    note = ""
    if off:
        note = f"profile {ws.profile.name} does not enforce {' and '.join(off)}" + (
            f": {cfg.enforcement_note}" if cfg.enforcement_note else "")
    return CheckReport(claims, refs, failed, note, files)
