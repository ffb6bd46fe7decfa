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
line instead of listing every trained output as changed.

`verify` accepts an output whose sha256 matches (exact), or, for a numeric output
whose bytes differ, one whose values all lie within the rule's absolute tolerance
of the recorded ones (within tolerance, reported with the largest difference and
where it is); anything else is changed, with the comparison that failed and by how
much. Numbers are compared, never re-rounded: a canonical rounding would put
values that sit near a rounding edge on either side of it.

Which outputs are compared how, and why:

- `results/cka/*.npz` (CKA matrices, bootstrap intervals): within 1e-9 absolute.
  They are ratios of float64 sums (`X^T X`, `Y^T Y`, `X^T Y`) whose summation
  order follows the CPU's BLAS kernels, so another machine changes their last
  bits (relative error around 1e-12). CKA lies in [0, 1]: 1e-9 is a thousand
  times that noise and a million times smaller than any change that matters.
  Non-float arrays (layer names) and shapes are compared exactly.
- `results/cka/*.json` (the same matrix, written rounded to 6 decimals, with the
  run's settings): numbers within 1.5e-6, everything else exactly. A value within
  1e-12 of a rounding edge may round the other way (one unit of the 6th decimal);
  the `.npz` beside it holds the full values and is compared at 1e-9.
- everything else exactly: the synthetic corpus (integer PCM and text, no float
  arithmetic: identical on any machine, the `PORTABLE` part), probe results
  (trained in float32 by PyTorch; identical across the machines tried, and a
  last-bit difference in training grows through the optimisation, so no small
  tolerance would make them portable: their agreement with the paper is judged by
  `repro paper check` against the reference tolerances), figures and tables
  (drawn and printed at display precision).
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
from repro.remedy import command, make_line, profile_argument
from repro.util.atomic import atomic_write_text
from repro.util.hashing import sha256_file
from repro.util.npz import read_npz
from repro.workspace import Workspace

RECORD_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "checksums"
UNCHECKED = ("REPORT.md", "provenance.json", "CHECKSUMS.sha256")
PORTABLE = ("corpus/",)


@dataclass(frozen=True)
class ValueRule:
    """Outputs named like `pattern` are also compared by value, floats within `tolerance` (absolute)."""

    pattern: str
    kind: Literal["npz", "json"]
    tolerance: float
    reason: str


VALUE_RULES = (
    ValueRule("results/cka/*.npz", "npz", 1e-9,
              "float64 CKA sums whose order follows the BLAS kernels (relative error ~1e-12); CKA lies in [0, 1]"),
    ValueRule("results/cka/*.json", "json", 1.5e-6,
              "the CKA matrix rounded to 6 decimals: a value at a rounding edge moves by one unit of the 6th"),
)


@dataclass(frozen=True)
class Outcome:
    """How one output compares with the record: `exact`, `within` (tolerance), `changed`, `missing`, `extra`."""

    name: str
    status: Literal["exact", "within", "changed", "missing", "extra"]
    detail: str = ""


def value_rule(name: str) -> ValueRule | None:
    """The value comparison that applies to output `name`, or None (compared exactly)."""
    return next((r for r in VALUE_RULES if fnmatch.fnmatchcase(name, r.pattern)), None)


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


# --- values of numeric outputs -------------------------------------------------------------------

def _encode_float(v: float) -> float | str:
    return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def read_values(path: Path, kind: str) -> Any:
    """The comparable values of a numeric output: for an `.npz`, name -> {dtype, shape, values}
    (floats exact, non-finite as strings); for a JSON file, the document itself."""
    if kind == "json":
        return json.loads(path.read_text())
    out = {}
    for key, arr in sorted(read_npz(path).items()):
        flat = arr.reshape(-1)
        values = [_encode_float(float(v)) for v in flat] if arr.dtype.kind == "f" else flat.tolist()
        out[key] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "values": values}
    return out


def compute_values(ws: Workspace) -> dict[str, Any]:
    """name -> values of every output that a `VALUE_RULES` entry covers."""
    return {name: read_values(p, rule.kind) for name, p in output_files(ws).items() if (rule := value_rule(name))}


def format_values(values: dict[str, Any]) -> str:
    """One JSON object per line, sorted by name: `{"name": ..., "values": ...}`."""
    return "".join(json.dumps({"name": n, "values": v}, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"
                   for n, v in sorted(values.items()))


def parse_values(text: str) -> dict[str, Any]:
    out = {}
    for line in text.splitlines():
        if line.strip():
            item = json.loads(line)
            out[item["name"]] = item["values"]
    return out


@dataclass
class _Largest:
    """The largest float difference seen so far, where it is, and the two values."""

    size: float = 0.0
    where: str = ""
    now: float = 0.0
    recorded: float = 0.0

    def see(self, size: float, where: str, now: float, recorded: float) -> None:
        if size > self.size:
            self.size, self.where, self.now, self.recorded = size, where, now, recorded

    def verdict(self, tol: float) -> tuple[bool, str]:
        if self.size > tol:
            return False, (f"{self.where} differs by {self.size:.1e} > tolerance {tol:g} "
                           f"({self.now!r} now, {self.recorded!r} recorded)")
        if self.size == 0:
            return True, "values identical (bytes differ)"
        return True, f"max |difference| {self.size:.1e} <= tolerance {tol:g} ({self.where})"


def _compare_npz(want: dict, have: dict, tol: float) -> tuple[bool, str]:
    """(within tolerance, what was found) for two `read_values` of `.npz` files."""
    if sorted(want) != sorted(have):
        return False, f"arrays differ: {sorted(have)} now, {sorted(want)} recorded"
    largest = _Largest()
    for key in sorted(want):
        w, h = want[key], have[key]
        if w["shape"] != h["shape"]:
            return False, f"{key}: shape {tuple(h['shape'])} now, {tuple(w['shape'])} recorded"
        if np.dtype(w["dtype"]).kind != "f" or np.dtype(h["dtype"]).kind != "f":
            if w["dtype"] != h["dtype"] or w["values"] != h["values"]:
                return False, f"{key}: values differ from the record (compared exactly)"
            continue
        a = np.array([float(v) for v in w["values"]], np.float64)
        b = np.array([float(v) for v in h["values"]], np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(a - b)
        diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0  # equal infinities, NaN where NaN was recorded
        diff[np.isnan(diff)] = np.inf  # NaN against a number
        if diff.size:
            i = int(diff.argmax())
            at = np.unravel_index(i, tuple(w["shape"]))
            largest.see(float(diff[i]), f"{key}[{', '.join(str(int(k)) for k in at)}]", float(b[i]), float(a[i]))
    return largest.verdict(tol)


def _walk_json(want: Any, have: Any, where: str, largest: _Largest) -> str | None:
    """The first difference of two JSON values that is not a float within reach (None if none);
    float differences go to `largest`."""
    here = where or "the document"
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(have, numbers) and not isinstance(want, bool) \
            and not isinstance(have, bool) and (isinstance(want, float) or isinstance(have, float)):
        largest.see(abs(float(have) - float(want)), here, have, want)
        return None
    if type(want) is not type(have):
        return f"{here}: {have!r} now, {want!r} recorded"
    if isinstance(want, dict):
        if sorted(want) != sorted(have):
            return f"{here}: keys {sorted(set(want) ^ set(have))} differ"
        for k in sorted(want):
            found = _walk_json(want[k], have[k], f"{where}.{k}" if where else k, largest)
            if found:
                return found
        return None
    if isinstance(want, list):
        if len(want) != len(have):
            return f"{here}: {len(have)} items now, {len(want)} recorded"
        for i, (w, h) in enumerate(zip(want, have)):
            found = _walk_json(w, h, f"{where}[{i}]", largest)
            if found:
                return found
        return None
    return None if want == have else f"{here}: {have!r} now, {want!r} recorded (compared exactly)"


def _compare_json(want: Any, have: Any, tol: float) -> tuple[bool, str]:
    largest = _Largest()
    found = _walk_json(want, have, "", largest)
    return (False, found) if found else largest.verdict(tol)


def compare_values(name: str, path: Path, recorded: Any) -> tuple[bool, str]:
    """Compare a numeric output with its recorded values: (within tolerance, what was found)."""
    rule = value_rule(name)
    if rule is None:
        return False, "sha256 differs (compared exactly)"
    if recorded is None:
        return False, f"sha256 differs and the record holds no values to compare it within {rule.tolerance:g}"
    try:
        have = read_values(path, rule.kind)
    except (OSError, ValueError) as err:
        return False, f"sha256 differs and its values cannot be read ({err})"
    compare = _compare_npz if rule.kind == "npz" else _compare_json
    return compare(recorded, have, rule.tolerance)


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
            f"`{fix}`: {rerun}, then verify again")


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


def check(ws: Workspace, portable: bool = False) -> list[Outcome]:
    """Every recorded or present output against the record, sorted by name.

    With `portable`, only the outputs that must match on any machine (`PORTABLE`).
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
    out = _audio_outcomes(ws)
    for name in sorted(set(want) | set(files)):
        if name not in files:
            out.append(Outcome(name, "missing"))
        elif name not in want:
            out.append(Outcome(name, "extra"))
        elif sha256_file(files[name]) == want[name]:
            out.append(Outcome(name, "exact"))
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


def verify(ws: Workspace, portable: bool = False) -> dict[str, list[str]]:
    """Differences from the record: `changed`, `missing` (recorded, not produced), `extra` (not recorded).

    An output within its tolerance (see `check`) is not a difference.
    """
    outcomes = check(ws, portable)
    return {kind: [o.name for o in outcomes if o.status == kind] for kind in ("changed", "missing", "extra")}
