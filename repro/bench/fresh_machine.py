"""The fresh-machine record: `make demo` and `make test` in a new clone on a bare 2-core machine.

Unlike the other records in `artifacts/bench/`, this one is not produced by a `repro bench`
command: it is a measurement of the whole front door (building `.venv` from `requirements.lock`,
then the smoke pipeline, then the test suite) on a machine that has nothing but Python 3.11 and
make, written down once in `artifacts/bench/fresh_machine.json` with its provenance (date,
commit, machine) and rendered into docs/PERFORMANCE.md by `repro bench report`.

The record's fields (seconds are wall-clock seconds, sizes are GB = 10^9 bytes as `du` reports):
    date, commit                 when and at which commit it was measured
    machine                      {"system", "packages", "logical_cores", "gpu"}
    demo                         {"command", "wall_seconds" (first run, all in), "venv_seconds"
                                  (building .venv, approximate), "stages" {stage: seconds}}
    disk_gb                      {"clone", ".venv", "work"}: the clone after `make demo`
    test                         {"command", "wall_seconds", "tests" (how many ran)}
    conditions                   optional: what else ran on the machine meanwhile (one sentence)
"""

from __future__ import annotations

import json
from pathlib import Path

from repro.errors import ConfigError

REQUIRED = ("date", "commit", "machine", "demo", "disk_gb", "test")


def load(path: Path) -> dict:
    """The record at `path`, checked for the fields `table` needs."""
    record = json.loads(Path(path).read_text())
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ConfigError(f"{path}: the fresh-machine record lacks {', '.join(missing)}; "
                          f"fields: {', '.join(REQUIRED)} (see repro/bench/fresh_machine.py)")
    return record


def provenance(r: dict) -> str:
    """One sentence: where, when and at which commit the record was measured."""
    m = r["machine"]
    return (f"Measured on {m['system']} with only {', '.join(m['packages'])} installed, "
            f"{m['logical_cores']} logical cores, {'no GPU' if not m.get('gpu') else m['gpu']}; "
            f"commit {r['commit']}, {r['date']}." + (f" Conditions: {r['conditions']}." if r.get("conditions") else ""))


def table(r: dict) -> str:
    """The record as a short text table: `make demo` in all and per stage, disk, `make test`."""
    d, disk, t = r["demo"], r["disk_gb"], r["test"]
    stages = d["stages"]
    total = sum(stages.values())
    lines = [f"{d['command']} (first run, fresh clone): {d['wall_seconds']:.0f} s wall "
             f"({d['wall_seconds'] / 60:.1f} min), of which building .venv about {d['venv_seconds']:.0f} s",
             f"{'stage':10s} {'seconds':>8s} {'share':>6s}"]
    lines += [f"{name:10s} {s:>8.1f} {s / total:>6.0%}" for name, s in stages.items()]
    lines.append(f"{'stages':10s} {total:>8.1f}")
    lines.append(f"disk of the clone after {d['command']}: {disk['clone']:.1f} GB "
                 f"(.venv {disk['.venv']:.1f} GB, work/ {disk['work']:.1f} GB)")
    lines.append(f"{t['command']}: {t['wall_seconds']:.0f} s wall ({t['wall_seconds'] / 60:.1f} min), "
                 f"{t['tests']} tests")
    return "\n".join(lines)
