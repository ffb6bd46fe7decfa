"""Every output of a profile, recorded and verified: exactly by sha256, numeric results also by value.

Covered: the corpus's manifests, `corpus.json` and `phones.txt` under
`work/<profile>/corpus/` (the manifests hold every audio file's sha256; for the
synthetic corpus each audio file is also hashed and compared with them), result
files under `results/<profile>/` (wall-time files `*.timing.json` excluded) and
figures/tables under `paper_figures/<profile>/` (the report and provenance,
which name the git commit and the machine, excluded).

The record of a profile is committed in `artifacts/checksums/`:

    <profile>.sha256        `<sha256>  <output name>` for every output (as `sha256sum` writes)
    <profile>.values.jsonl  one JSON object per numeric output (`VALUE_RULES`): its values,
                            floats written exactly (shortest round-trip form), non-finite
                            floats as "nan", "inf", "-inf"
    <profile>.numerics.json the CPU and CPU settings (`repro.cpu_numerics.state`) of the runs
                            that computed the outputs, as they noted them in the work folder

With pinned CPU numerics (`runtime.pinned_cpu_numerics`, the smoke profile) every output but the
CKA sums is the same bytes on any x86-64 CPU. A record made with pinned numerics and outputs made
without (or the other way round) cannot be compared by bytes: `numerics_mismatch` says so in one
line, with how to rerun, instead of listing every trained output as changed (`--by-value` compares
them by value instead).

`verify` accepts an output whose sha256 matches (exact), or, for a numeric output
whose bytes differ, one whose values all lie within the rule's absolute tolerance
of the recorded ones (within tolerance, reported with the largest difference and
where it is); anything else is changed, with the comparison that failed and by how
much. Numbers are compared, never re-rounded: a canonical rounding would put
values that sit near a rounding edge on either side of it.

Tolerances are measured, not chosen: tests/measure_tolerances.py records in `TOLERANCE_RECORD`
how far the numeric outputs move when only the order of their float64 sums changes
(`sum_order_tolerance`) and when the CPU code paths change (`code_path_tolerance`), and each
tolerance is a stated margin times such a spread.

Which outputs are compared how on an x86-64 CPU, and why:

- `results/cka/*.npz` (CKA matrices, bootstrap intervals): within SUM_ORDER_MARGIN x the measured
  spread of reordered sums. They are ratios of float64 sums (`X^T X`, `Y^T Y`, `X^T Y`) whose
  summation order follows the CPU's BLAS kernels (OpenBLAS, not pinned), so another machine
  changes their last bits. Non-float arrays (layer names) and shapes are compared exactly.
- `results/cka/*.json` (the same matrix, written rounded to 6 decimals, with the
  run's settings): numbers within 1.5e-6, everything else exactly. A value within
  rounding noise of a rounding edge may round the other way (one unit of the 6th decimal);
  the `.npz` beside it holds the full values.
- everything else exactly: the synthetic corpus (integer PCM and text, no float
  arithmetic: identical on any machine, the `PORTABLE` part), probe results, figures and tables
  (pinned numerics: the same bits on any x86-64 CPU).

When bytes cannot match (`bytes_cannot_match`: a GPU computed a stage, another architecture,
or neither side pinned and the CPUs differ), `report` compares by value as `machine_comparison`
says: the corpus exactly; the CKA of models no run trains within `code_path_tolerance`;
everything drawn from a model the run trains (a last-bit difference grows through training,
measured) by its structure only, value differences being expected machine differences, counted
in one line apart from real changes. The summary names the CPU and settings of the record and of
the run.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from repro.errors import MissingInputError
from repro.paper.tolerances import (CODE_PATH_MARGIN, RECORD_DIR, SUM_ORDER_MARGIN, TOLERANCE_RECORD,  # noqa: F401
                                    VALUE_RULES, ValueRule, _compare_json, _compare_npz, _Largest, _walk_json,
                                    code_path_tolerance, compare_values, format_values,
                                    measured_spreads, parse_values, read_values, sum_order_tolerance, value_rule)
from repro.remedy import command, make_line, profile_argument
from repro.util.atomic import atomic_write_text
from repro.util.hashing import sha256_file
from repro.workspace import Workspace

UNCHECKED = ("REPORT.md", "provenance.json", "CHECKSUMS.sha256")
PORTABLE = ("corpus/",)


@dataclass(frozen=True)
class Outcome:
    """How one output compares with the record: `exact`, `within` (tolerance), `changed`, `missing`, `extra`,
    or, when bytes cannot match (`by_value`), `machine`: an expected machine difference (an output drawn
    from a model this run trained, whose structure matches the record)."""

    name: str
    status: Literal["exact", "within", "changed", "missing", "extra", "machine"]
    detail: str = ""


def output_files(ws: Workspace) -> dict[str, Path]:
    """Checked outputs by their stable name (`results/...` or `figures/...`)."""
    files = {}
    corpus = ws.corpus_dir
    for name in ("corpus.json", "phones.txt"):
        if (corpus / name).is_file():
            files[f"corpus/{name}"] = corpus / name
    if (corpus / "manifests").is_dir():
        for p in sorted((corpus / "manifests").iterdir()):
            if p.is_file():
                files[f"corpus/manifests/{p.name}"] = p
    for prefix, root in (("results", ws.results), ("figures", ws.figures)):
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(".timing.json") and p.name not in UNCHECKED \
                    and not p.name.startswith("."):
                files[f"{prefix}/{p.relative_to(root).as_posix()}"] = p
    return files


def compute(ws: Workspace) -> dict[str, str]:
    """name -> sha256 of every checked output."""
    return {name: sha256_file(p) for name, p in output_files(ws).items()}


def format_record(sums: dict[str, str]) -> str:
    return "".join(f"{h}  {name}\n" for name, h in sorted(sums.items()))


def parse_record(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip():
            h, name = line.split(maxsplit=1)
            out[name.strip()] = h
    return out


def compute_values(ws: Workspace) -> dict[str, Any]:
    """name -> values of every output that a `VALUE_RULES` entry covers."""
    return {name: read_values(p, rule.kind) for name, p in output_files(ws).items() if (rule := value_rule(name))}


# --- record and verify ---------------------------------------------------------------------------

def write_current(ws: Workspace) -> Path:
    """`paper_figures/<profile>/CHECKSUMS.sha256` for the outputs present."""
    path = ws.figures / "CHECKSUMS.sha256"
    atomic_write_text(path, format_record(compute(ws)))
    return path


def record_path(ws: Workspace) -> Path:
    return RECORD_DIR / f"{ws.profile.name}.sha256"


def values_path(ws: Workspace) -> Path:
    return RECORD_DIR / f"{ws.profile.name}.values.jsonl"


def numerics_path(ws: Workspace) -> Path:
    """`<profile>.numerics.json`: the CPU and CPU settings (`repro.cpu_numerics.state`) the recorded
    outputs were computed with."""
    return RECORD_DIR / f"{ws.profile.name}.numerics.json"


def run_numerics(ws: Workspace) -> list[dict]:
    """The CPU settings that computed the outputs of `ws` (the work folder's note, written by every
    run's `repro.runtime.session`); empty when there is none."""
    from repro.runtime import NUMERICS_NOTE

    try:
        return list(json.loads((ws.work / NUMERICS_NOTE).read_text())["states"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def recorded_numerics(ws: Workspace) -> list[dict]:
    try:
        return list(json.loads(numerics_path(ws).read_text())["states"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def record(ws: Workspace) -> Path:
    """Store the current checksums, the values of the numeric outputs and the CPU settings that computed
    them (`numerics_path`) as the profile's record."""
    atomic_write_text(values_path(ws), format_values(compute_values(ws)))
    atomic_write_text(numerics_path(ws), json.dumps({"states": run_numerics(ws)}, indent=1, sort_keys=True) + "\n")
    path = record_path(ws)
    atomic_write_text(path, format_record(compute(ws)))
    return path


def _pinned(states: list[dict]) -> bool | None:
    """True / False when every state agrees on pinned numerics, None when unknown or mixed."""
    kinds = {bool(s.get("pinned")) for s in states}
    return kinds.pop() if len(kinds) == 1 else None


def numerics_mismatch(ws: Workspace) -> str | None:
    """One line when the record was computed with pinned CPU numerics and these outputs without (or the
    other way round, or with both), so that their bytes cannot be compared; None otherwise."""
    want, have = recorded_numerics(ws), run_numerics(ws)
    if not want or not have:
        return None
    w, h = _pinned(want), _pinned(have)
    if w is not None and w == h:
        return None
    how = {True: "with pinned CPU numerics", False: "without pinned CPU numerics", None: "with and without them"}
    rerun = (f"{make_line('clean', ws)} && make demo" if profile_argument(ws) == "smoke"
             else f"{make_line('clean', ws)} && {make_line('reproduce', ws)}")
    fix = ("with runtime.pinned_cpu_numerics: true and without REPRO_PINNED_CPU_NUMERICS=0" if w
           else "with runtime.pinned_cpu_numerics: false")
    return (f"the record {record_path(ws)} was made {how[w]} and these outputs {how[h]} "
            f"({', '.join(s.get('cpu', '?') for s in have)}): their bytes cannot be compared; rerun "
            f"`{fix}`: {rerun}, then verify again (or compare by value: `make verify PROFILE={ws.profile.name} "
            f"BY_VALUE=1`, i.e. `repro paper verify --profile {ws.profile.name} --by-value`)")


def numerics_summary(ws: Workspace) -> str:
    """'record: <cpu, settings>; this run: <cpu, settings>' (`repro.cpu_numerics.describe`); empty when
    neither the record nor the work folder says."""
    from repro.cpu_numerics import describe

    want, have = recorded_numerics(ws), run_numerics(ws)
    if not want and not have:
        return ""

    def many(states: list[dict]) -> str:
        return " + ".join(describe(s) for s in states) if states else describe(None)

    return f"record: {many(want)}; this run: {many(have)}"


def check(ws: Workspace, portable: bool = False, by_value: bool = False) -> list[Outcome]:
    """Every recorded or present output against the record, sorted by name.

    With `portable`, only the outputs that must match on any machine (`PORTABLE`). With `by_value`, as when
    bytes cannot match (`bytes_cannot_match`): each output whose bytes differ is compared as
    `machine_comparison` says.
    """
    path = record_path(ws)
    if not path.is_file():
        raise MissingInputError(f"{path}: no recorded checksums for profile {ws.profile.name}; "
                                f"record them with {command('paper verify', ws, '--record')}")
    want, files = parse_record(path.read_text()), output_files(ws)
    if portable:
        want = {n: h for n, h in want.items() if n.startswith(PORTABLE)}
        files = {n: p for n, p in files.items() if n.startswith(PORTABLE)}
    vpath = values_path(ws)
    values = parse_values(vpath.read_text()) if vpath.is_file() else {}
    trained = trained_models(ws) if by_value else set()
    out = _audio_outcomes(ws)
    for name in sorted(set(want) | set(files)):
        if name not in files:
            out.append(Outcome(name, "missing"))
        elif name not in want:
            out.append(Outcome(name, "extra"))
        elif sha256_file(files[name]) == want[name]:
            out.append(Outcome(name, "exact"))
        elif by_value:
            out.append(compare_across_machines(name, files[name], values.get(name), trained))
        else:
            ok, detail = compare_values(name, files[name], values.get(name))
            out.append(Outcome(name, "within" if ok else "changed", detail))
    return sorted(out, key=lambda o: o.name)


def _audio_outcomes(ws: Workspace) -> list[Outcome]:
    """The synthetic corpus's audio against its manifests' sha256 (the record covers the manifests,
    which hold those digests): one `changed` or `missing` outcome per file that differs. A real
    corpus's audio is checked by `repro data verify --profile P` (hundreds of GB), not here."""
    from repro.data.integrity import check_corpus

    if ws.profile.corpus.kind != "synthetic" or not (ws.corpus_dir / "manifests").is_dir():
        return []
    report = check_corpus(ws.corpus_dir)
    name = lambda p: f"corpus/{p.relative_to(ws.corpus_dir).as_posix()}"  # noqa: E731
    return ([Outcome(name(p), "changed", f"the audio's sha256 differs from the one {', '.join(m)} records")
             for p, m in report.damaged]
            + [Outcome(name(p), "missing", f"audio listed in {', '.join(m)}") for p, m in report.missing])


# --- when bytes cannot match: another kind of machine ----------------------------------------------------

def _x86_cpu_only(s: dict) -> bool:
    return s.get("machine", "x86_64") == "x86_64" and not s.get("gpu")


def bytes_cannot_match(ws: Workspace) -> str | None:
    """Why the outputs of `ws` cannot be the record's bytes, or None when they can (or nobody noted how
    either was computed): a GPU computed a stage, another architecture than x86-64, or neither side
    pinned its CPU numerics and the CPUs or their ATen levels differ. Pinned numerics on one side only is
    `numerics_mismatch`, the user's to fix."""
    want, have = recorded_numerics(ws), run_numerics(ws)
    if not want or not have:
        return None
    for side, states in (("the record", want), ("this run", have)):
        for st in states:
            if st.get("gpu"):
                return f"{side} computed on a GPU ({st['gpu']})"
            if not _x86_cpu_only(st):
                return f"{side} computed on {st.get('machine')}, not x86-64"
    if _pinned(want) is False and _pinned(have) is False:
        kinds = lambda states: {(st.get("cpu"), st.get("aten_capability")) for st in states}  # noqa: E731
        if kinds(want) != kinds(have):
            return "neither side pinned its CPU numerics, and the CPUs differ"
    return None


def trained_models(ws: Workspace) -> set[str]:
    """The models a run of this profile trains itself (its recipes' outputs)."""
    from repro import recipes

    p = ws.profile
    return {recipes.settings(p, r).output_name
            for r in (*p.speaker_training.pipeline_recipes, *p.ssl_training.pipeline_recipes)}


def machine_comparison(name: str, trained: set[str]) -> Literal["exact", "values", "machine"]:
    """How output `name` is compared when bytes cannot match:

    - `exact`: the corpus (integer PCM and text; no float arithmetic);
    - `values`: the CKA of two models that no run trains (downloaded weights): within
      `code_path_tolerance`, measured across CPU code paths (the `.json`, rounded to 6 decimals, within
      that or one unit of its last decimal);
    - `machine`: everything drawn from a trained model (any probe, the CKA of a model this profile
      trains, figures and tables): a last-bit difference in training grows through the optimisation
      (tests/measure_tolerances.py: the spread of trained weights grows with the steps), so their values
      cannot be held to a small tolerance. Their structure is compared (array names, shapes and layer
      names; JSON keys and list lengths): a structural difference is a real change, a value difference
      an expected machine difference.
    """
    if name.startswith(PORTABLE):
        return "exact"
    if fnmatch.fnmatchcase(name, "results/cka/*__*.*"):
        a, b = Path(name).stem.split("__", 1)
        return "machine" if {a, b} & trained else "values"
    return "machine"


def _structure(x: Any) -> Any:
    """The shape of a JSON value: dict keys and list lengths, recursively (values left out)."""
    if isinstance(x, dict):
        return {k: _structure(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_structure(v) for v in x]
    return None


def compare_across_machines(name: str, path: Path, recorded: Any, trained: set[str]) -> Outcome:
    """An output whose bytes differ from the record, as `machine_comparison` says."""
    how = machine_comparison(name, trained)
    if how == "exact":
        return Outcome(name, "changed", "sha256 differs (the same bytes on any machine)")
    rule = value_rule(name)
    if rule is None:  # figures, tables, probe results: drawn from trained models, their bytes alone recorded
        return Outcome(name, "machine", "bytes differ (drawn from trained models)")
    if recorded is None:
        return Outcome(name, "changed", "sha256 differs and the record holds no values to compare")
    try:
        have = read_values(path, rule.kind)
    except (OSError, ValueError) as err:
        return Outcome(name, "changed", f"its values cannot be read ({err})")
    if how == "values":
        tol = code_path_tolerance() if rule.kind == "npz" else max(code_path_tolerance(), rule.tolerance)
        ok, detail = (_compare_npz if rule.kind == "npz" else _compare_json)(recorded, have, tol)
        return Outcome(name, "within" if ok else "changed", detail)
    if rule.kind == "json":
        if _structure(recorded) != _structure(have):
            return Outcome(name, "changed", "its keys or list lengths differ from the record's")
        largest = _Largest()
        _walk_json(recorded, have, "", largest)
    else:
        if sorted(recorded) != sorted(have) or any(
                (recorded[k]["shape"], recorded[k]["dtype"]) != (have[k]["shape"], have[k]["dtype"])
                or (np.dtype(recorded[k]["dtype"]).kind != "f" and recorded[k]["values"] != have[k]["values"])
                for k in recorded):
            return Outcome(name, "changed", "its arrays, their shapes or its layer names differ from the record's")
        ok, detail = _compare_npz(recorded, have, math.inf)
        return Outcome(name, "machine", detail.replace(" <= tolerance inf", ""))
    return Outcome(name, "machine", f"max |difference| {largest.size:.1e} ({largest.where})" if largest.size
                   else "numbers equal, other values differ")


def verify(ws: Workspace, portable: bool = False) -> dict[str, list[str]]:
    """Differences from the record: `changed`, `missing` (recorded, not produced), `extra` (not recorded).

    An output within its tolerance (see `check`) is not a difference.
    """
    outcomes = check(ws, portable)
    return {kind: [o.name for o in outcomes if o.status == kind] for kind in ("changed", "missing", "extra")}


@dataclass
class Report:
    """What `repro paper verify` prints: `lines` (stdout) and whether it passed, or one `error` line."""

    lines: list[str]
    ok: bool
    error: str | None = None


def report(ws: Workspace, portable: bool = False, by_value: bool = False) -> Report:
    """Verify the outputs of `ws` against the record, by bytes where they can match, else by value.

    Pinned CPU numerics on one side only is one error line (`numerics_mismatch`) unless `by_value`. When
    bytes cannot match (`bytes_cannot_match`) or `by_value`, the first line says so and where the
    tolerances come from; expected machine differences are counted in one line, real changes listed one
    per line. The last line counts and names the CPU settings of the record and of this run."""
    why = None if portable else bytes_cannot_match(ws)
    if not portable and not by_value and why is None and (mismatch := numerics_mismatch(ws)):
        return Report([], False, mismatch)
    values_mode = by_value or why is not None
    outcomes = check(ws, portable, by_value=values_mode)
    lines = []
    if values_mode:
        lines.append(f"bytes cannot match ({why or 'compared by value as asked'}): outputs compared by value, "
                     f"tolerances from the spreads measured in {TOLERANCE_RECORD} (CKA of models no run trains "
                     f"within {code_path_tolerance():.1e}: {CODE_PATH_MARGIN:g} x the spread across CPU code paths)")
    lines += [f"{o.status:8s} {o.name}" + (f": {o.detail}" if o.detail else "")
              for o in outcomes if o.status not in ("exact", "machine")]
    machine = [o for o in outcomes if o.status == "machine"]
    if machine:
        where: dict[str, int] = {}
        for o in machine:
            folder = "/".join(o.name.split("/")[:2]) if o.name.startswith("results/") else o.name.split("/")[0]
            where[folder] = where.get(folder, 0) + 1
        lines.append(f"machine  {len(machine)} outputs drawn from models this run trained differ in value, as "
                     f"expected on another machine ({', '.join(f'{n} in {f}' for f, n in sorted(where.items()))}); "
                     "their structure is the record's")
    summary = numerics_summary(ws)
    tail = f" ({summary})" if summary else ""
    bad = [o for o in outcomes if o.status in ("changed", "missing", "extra")]
    if bad:
        return Report(lines + [f"{len(bad)} difference(s) from {record_path(ws)}{tail}"], False)
    within = sum(o.status == "within" for o in outcomes)
    exact = sum(o.status == "exact" for o in outcomes)
    counts = ", ".join(part for part in (f"{exact} exactly", within and f"{within} within tolerance",
                                         machine and f"{len(machine)} expected machine difference{'s' * (len(machine) != 1)}") if part)
    verb = "agree by value with" if values_mode else "match"
    return Report(lines + [f"all {len(outcomes)} outputs {verb} {record_path(ws)}: {counts}{tail}"], True)
