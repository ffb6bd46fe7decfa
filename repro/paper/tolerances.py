"""Numeric outputs compared by value where bytes need not match: tolerances derived from measured spreads
(stated margins times the spreads tests/measure_tolerances.py records), the rules naming which outputs
are compared so, and the reading and comparison of their values (`repro.paper.checksums` uses them)."""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from repro.errors import MissingInputError
from repro.util.npz import read_npz

RECORD_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "checksums"

# --- tolerances, from measured spreads ----------------------------------------------------------------
# tests/measure_tolerances.py measures, and writes here, how far numeric outputs move when only the order
# of their sums changes (`sum_order`) or the CPU code paths change (`code_paths`); each tolerance is a
# stated margin times such a spread.
TOLERANCE_RECORD = RECORD_DIR / "tolerances.json"
# The spread was measured on 960 frames x 3 layers; the smoke CKA sums 3,000 frames over up to 13 layers
# (a sum's rounding grows with its length) and another CPU's OpenBLAS splits its sums otherwise: 1000x.
SUM_ORDER_MARGIN = 1000.0
# CKA of a model that no run trains (downloaded weights), its features computed through other CPU code
# paths (ATen levels, oneDNN and MKL branches): 10x the largest spread seen across those settings.
CODE_PATH_MARGIN = 10.0
# One unit of the 6th decimal, to which the CKA `.json` files round: a value within rounding noise of a
# rounding edge moves by one unit (not measured: the rounding's own size), with half a unit to spare.
ROUNDED_6_DECIMALS = 1.5e-6


def measured_spreads(path: Path | None = None) -> dict:
    """The record of tests/measure_tolerances.py (`TOLERANCE_RECORD`)."""
    path = TOLERANCE_RECORD if path is None else path
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MissingInputError(f"{path}: the measured spreads that tolerances derive from cannot be read ({err}); "
                                "measure them with `python tests/measure_tolerances.py`") from err


def sum_order_tolerance(record: dict | None = None) -> float:
    """SUM_ORDER_MARGIN x the largest change of a CKA value (biased or debiased, trained or untrained
    model's features) when only the order of its float64 sums changes."""
    spreads = (record or measured_spreads())["sum_order"]
    return SUM_ORDER_MARGIN * max(v for part in ("trained_features", "untrained_features")
                                  for v in spreads[part].values())


def code_path_tolerance(record: dict | None = None) -> float:
    """CODE_PATH_MARGIN x the largest change of the CKA values of an untrained model's layers (fixed
    weights) under another CPU setting than pinned numerics (any number of training steps)."""
    spreads = (record or measured_spreads())["code_paths"]["spread"]
    return CODE_PATH_MARGIN * max(by_part[p]["max_abs_difference"] for by_setting in spreads.values()
                                  for by_part in by_setting.values()
                                  for p in ("fixed_cka_layers", "fixed_cka_layers_debiased"))


@dataclass(frozen=True)
class ValueRule:
    """Outputs named like `pattern` are also compared by value, floats within `tolerance` (absolute)."""

    pattern: str
    kind: Literal["npz", "json"]
    tolerance: float
    reason: str


VALUE_RULES = (
    ValueRule("results/cka/*.npz", "npz", sum_order_tolerance(),
              f"float64 CKA sums whose order follows the BLAS kernels: {SUM_ORDER_MARGIN:g} x the measured spread "
              f"of a reordered sum ({TOLERANCE_RECORD.name})"),
    ValueRule("results/cka/*.json", "json", ROUNDED_6_DECIMALS,
              "the CKA matrix rounded to 6 decimals: a value at a rounding edge moves by one unit of the 6th"),
)


def value_rule(name: str) -> ValueRule | None:
    """The value comparison that applies to output `name`, or None (compared exactly)."""
    return next((r for r in VALUE_RULES if fnmatch.fnmatchcase(name, r.pattern)), None)


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
