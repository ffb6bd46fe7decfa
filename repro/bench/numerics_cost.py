"""Benchmark: what pinned CPU numerics cost, in CPU seconds of a workload run pinned and unpinned.

`repro bench numerics-cost [--workload core|demo] [--rounds N]` runs the workload in child processes,
alternately pinned and unpinned (pinned, unpinned, pinned, unpinned, ...: one round is one pinned run
followed by one unpinned run), each from scratch in a folder of its own, and measures every run's

- CPU seconds: user + system of the child and everything it waited for
  (`resource.getrusage(RUSAGE_CHILDREN)` before and after), the measure on a shared machine, where the
  wall time includes waiting for a core;
- wall seconds, and the 1-minute load average before and after.

The cost is the **median of the per-round ratios** pinned / unpinned (each pinned run divided by the
unpinned run right after it, which cancels slow changes of the machine's load); the ratio of the
medians is recorded beside it. The target is a ratio of at most `TARGET` (1.20).

The two arms differ only in the numerics (repro/cpu_numerics.py):

- pinned: the child's environment carries `PINNED_ENV` (ATen AVX2, oneDNN AVX2, MKL COMPATIBLE) and the
  square root that no variable pins is replaced (`repro.runtime.pin_cpu_kernels`): what `make demo` runs;
- unpinned: the child's environment carries none of the three variables (whatever the parent's has) and
  `REPRO_PINNED_CPU_NUMERICS=0`, and the profile's `runtime.pinned_cpu_numerics` is false: ATen, oneDNN
  and MKL take the machine's native code paths (ATen AVX-512 on a CPU that has it).

Each run's record keeps the settings the child saw: the variables it was given and ATen's level as the
child read it (the demo's own note, `work/<profile>/numerics.json`; the core's first printed word).

Workloads (`make_workload`):

- `demo`: `python -m repro run --profile smoke` (unpinned: a profile file that extends smoke with
  `runtime.pinned_cpu_numerics: false`), with `REPRO_WORK`, `REPRO_RESULTS` and `REPRO_FIGURES` in the
  run's own folder: corpus, speaker and speech SSL training, features, probes, CKA, paper; about
  570 CPU seconds per pinned run and 490 per unpinned one on an AMD EPYC with 2 cores (about 5 minutes
  of wall time each), so 3 rounds take about 55 CPU minutes.
- `train`: the smoke profile's corpus and train stages with a twentieth of its training (`TRAIN_SLICE`: the
  two speaker recipes for 1 epoch each, the two speech SSL recipes for 30 steps), a profile file that
  extends smoke in both arms, the checks that a trained model learnt off; training is about two thirds of
  the demo's time.
- `core`: tests/numeric_core.py (a few steps of each training recipe, features, a probe, a CKA pair on
  one thread) with `--steps` steps per recipe (default 300: about 8 CPU seconds, 2.5 of them Python
  and torch starting): for a quick check.

The parent's own numerics do not matter (`repro bench` runs pinned, as every `repro` command of the
smoke profile): each child's environment is built from scratch for its arm.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from repro.cpu_numerics import PINNED_ENV, SWITCH, cpu_model

TARGET = 1.20  # pinned / unpinned CPU seconds of the demo, at most
DEMO_CPU_MINUTES = 55  # 3 rounds of the demo: 3 pinned runs of about 570 CPU seconds, 3 unpinned of 490 (AMD EPYC)
DEFAULTS = {"workload": "core", "rounds": 3, "steps": 300}
ARMS = ("pinned", "unpinned")
ROOT = Path(__file__).resolve().parents[2]  # the source tree whose `repro` the children import
UNPINNED_PROFILE = """\
extends: smoke
name: smoke-unpinned
runtime: {pinned_cpu_numerics: false}
"""
# The `train` workload: the smoke profile's four training recipes at about a twentieth of their length.
TRAIN_SLICE = """\
extends: smoke
name: {name}
runtime: {{pinned_cpu_numerics: {pinned}}}
speaker_training:
  require_eer_improvement: false   # a slice this short need not learn: only its time counts
  collapse_min_embedding_std: 0.0
  collapse_min_teacher_kl: 0.0
  supervised: {{epochs: 1}}
  dino: {{epochs: 1, warmup_epochs: 0, num_avg: 1, freeze_last_layer_epochs: 0}}
ssl_training:
  require_above_majority: false
  hubert: {{steps: 30}}
  wavlm: {{steps: 30}}
"""


@dataclass(frozen=True)
class Workload:
    """A command measured in both arms.

    `argv(pinned, folder)`: the child's command line (it runs in `folder`, empty, its own);
    `seen(folder, stdout)`: the settings the child computed with, as it recorded them."""

    name: str
    description: str
    argv: Callable[[bool, Path], list[str]]
    seen: Callable[[Path, str], dict]


def _demo_argv(pinned: bool, folder: Path) -> list[str]:
    profile = "smoke"
    if not pinned:
        profile = str(folder / "smoke-unpinned.yaml")
        Path(profile).write_text(UNPINNED_PROFILE)
    return [sys.executable, "-m", "repro", "run", "--profile", profile, "--quiet"]


def _train_argv(pinned: bool, folder: Path) -> list[str]:
    """The corpus and train stages of the smoke profile with a twentieth of its training (`TRAIN_SLICE`)."""
    name = "smoke-train-slice" + ("" if pinned else "-unpinned")
    text = TRAIN_SLICE.format(name=name, pinned=str(pinned).lower())
    (folder / f"{name}.yaml").write_text(text)
    return [sys.executable, "-m", "repro", "run", "--profile", str(folder / f"{name}.yaml"), "--stage", "corpus",
            "--stage", "train", "--quiet"]


def _demo_seen(folder: Path, stdout: str) -> dict:
    """The CPU settings a `repro run` noted in its work folder (`repro.runtime.note_cpu_numerics`)."""
    notes = sorted((folder / "work").glob("*/numerics.json"))
    if not notes:
        return {"aten_capability": None, "note": "the run left no numerics.json"}
    states = json.loads(notes[0].read_text())["states"]
    capabilities = sorted({s.get("aten_capability") for s in states})
    return {"aten_capability": "/".join(map(str, capabilities)), "pinned": all(s.get("pinned") for s in states),
            "states": states}


def _core_argv(steps: int) -> Callable[[bool, Path], list[str]]:
    script = ROOT / "tests" / "numeric_core.py"

    def argv(pinned: bool, folder: Path) -> list[str]:
        if not script.is_file():
            raise FileNotFoundError(f"{script}: the core workload runs the source tree's tests/numeric_core.py; "
                                    "run the benchmark from a source checkout, or use --workload demo")
        return [sys.executable, str(script), "--steps", str(steps), *(["--pin-kernels"] if pinned else [])]
    return argv


def _first_word(folder: Path, stdout: str) -> dict:
    """ATen's level as the child printed it, first word of its output (tests/numeric_core.py's format)."""
    words = stdout.split()
    return {"aten_capability": words[0] if words else None}


def make_workload(name: str, steps: int = DEFAULTS["steps"]) -> Workload:
    if name == "demo":
        return Workload("demo", "the smoke profile's whole pipeline from scratch (`python -m repro run --profile "
                        "smoke`: corpus, training, features, probes, CKA, paper)", _demo_argv, _demo_seen)
    if name == "train":
        return Workload("train", "the smoke profile's corpus and train stages with a twentieth of its training (1 "
                        "supervised and 1 DINO epoch of the speaker models, 30 steps of each speech SSL model)",
                        _train_argv, _demo_seen)
    if name == "core":
        return Workload("core", f"tests/numeric_core.py --steps {steps} (each training recipe, features, a probe, "
                        "a CKA pair; one thread)", _core_argv(steps), _first_word)
    raise ValueError(f"unknown workload {name!r}; known: core, train, demo")


def child_environ(pinned: bool, folder: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one run: `base` (default this process's) without the pinned variables, then
    the arm's: PINNED_ENV and REPRO_PINNED_CPU_NUMERICS=1, or REPRO_PINNED_CPU_NUMERICS=0; the
    work, results and figures folders inside `folder`; this source tree first on PYTHONPATH."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in PINNED_ENV and k != SWITCH}
    env.update(PINNED_ENV if pinned else {})
    env[SWITCH] = "1" if pinned else "0"
    for key, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        env[key] = str(folder / sub)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def flags_level() -> str:
    """The highest of ATen's levels the processor's flags allow (/proc/cpuinfo): AVX512, AVX2 or DEFAULT."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "AVX512"
    return "AVX2" if {"avx2", "fma"} <= flags else "DEFAULT"


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def measure(work: Workload, pinned: bool, folder: Path, timeout_s: float | None = None) -> dict:
    """Run `work` once in `folder` (created): its CPU and wall seconds, the load around it, what it saw."""
    folder.mkdir(parents=True)
    argv = work.argv(pinned, folder)
    env = child_environ(pinned, folder)
    load_before = _load()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(folder / "stdout.txt", "w+") as out, open(folder / "stderr.txt", "w+") as err:
        proc = subprocess.run(argv, cwd=folder, env=env, stdout=out, stderr=err, timeout=timeout_s)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the {'pinned' if pinned else 'unpinned'} {work.name} run failed (exit "
                           f"{proc.returncode}): {tail}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"arm": "pinned" if pinned else "unpinned", "cpu_seconds": user + system, "user_seconds": user,
            "sys_seconds": system, "wall_seconds": wall, "load_before": load_before, "load_after": _load(),
            "env": {k: env.get(k, "") for k in (*PINNED_ENV, SWITCH)}, "seen": work.seen(folder, stdout)}


def summarise(runs: list[dict]) -> dict:
    """Per-round ratios and their medians from alternating `runs` (pinned, unpinned, pinned, ...)."""
    pinned, unpinned = runs[0::2], runs[1::2]
    if len(pinned) != len(unpinned) or any(r["arm"] != "pinned" for r in pinned) \
            or any(r["arm"] != "unpinned" for r in unpinned):
        raise ValueError("runs must alternate pinned, unpinned, pinned, unpinned, ...")
    out: dict = {}
    for key in ("cpu", "wall"):
        p = [r[f"{key}_seconds"] for r in pinned]
        u = [r[f"{key}_seconds"] for r in unpinned]
        per_round = [a / b for a, b in zip(p, u)]
        out[key] = {"pinned_seconds": p, "unpinned_seconds": u, "per_round_ratio": per_round,
                    "ratio": statistics.median(per_round),
                    "ratio_of_medians": statistics.median(p) / statistics.median(u)}
    return out


def run_workload(work: Workload, rounds: int = DEFAULTS["rounds"], keep: Path | None = None,
                 echo: Callable[[str], None] | None = None, timeout_s: float | None = None) -> dict:
    """`rounds` rounds of `work` (pinned, then unpinned) and their summary (see the module doc). Each run
    has a fresh folder, removed after it unless `keep` (a folder to keep them in) is given."""
    if rounds < 1:
        raise ValueError(f"rounds is {rounds}; give at least 1")
    tmp = tempfile.TemporaryDirectory(prefix="bench-numerics-") if keep is None else None
    root = Path(keep) if keep is not None else Path(tmp.name)
    load_start, runs = _load(), []
    try:
        for i in range(rounds):
            for pinned in (True, False):
                folder = root / f"round-{i + 1}-{'pinned' if pinned else 'unpinned'}"
                r = {"round": i + 1, **measure(work, pinned, folder, timeout_s)}
                runs.append(r)
                if echo:
                    echo(f"round {i + 1} {r['arm']:8s}: {r['cpu_seconds']:.1f} CPU s, {r['wall_seconds']:.1f} wall s, "
                         f"ATen {r['seen'].get('aten_capability')}, load {r['load_before']} -> {r['load_after']}")
                if keep is None:
                    shutil.rmtree(folder, ignore_errors=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    summary = summarise(runs)
    native = flags_level()
    seen_unpinned = {r["seen"].get("aten_capability") for r in runs if r["arm"] == "unpinned"}
    seen_pinned = {r["seen"].get("aten_capability") for r in runs if r["arm"] == "pinned"}
    return {"workload": work.name, "description": work.description, "rounds": rounds,
            "cpu": cpu_model(), "flags_level": native,
            "aten_pinned": sorted(map(str, seen_pinned)), "aten_unpinned": sorted(map(str, seen_unpinned)),
            "unpinned_is_native": seen_unpinned == {native}, "pinned_is_avx2": seen_pinned == {"AVX2"},
            "load_average_start": load_start, "load_average_end": _load(),
            "ratio_definition": "median over rounds of (pinned CPU s / unpinned CPU s of the same round)",
            "cpu_ratio": summary["cpu"]["ratio"], "wall_ratio": summary["wall"]["ratio"],
            "target": TARGET, "within_target": summary["cpu"]["ratio"] <= TARGET,
            "summary": summary, "runs": runs, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run(workload: str = DEFAULTS["workload"], rounds: int = DEFAULTS["rounds"], steps: int = DEFAULTS["steps"],
        record_path: Path | None = None, echo: Callable[[str], None] | None = print) -> dict:
    """The benchmark's record: this workload's result next to the other workloads' already in
    `record_path` (each workload keeps its own latest result, with the machine it ran on)."""
    from repro.bench.common import machine_info

    workloads = {}
    if record_path is not None and Path(record_path).is_file():
        try:
            workloads = dict(json.loads(Path(record_path).read_text()).get("workloads", {}))
        except (OSError, ValueError, AttributeError):
            workloads = {}
    machine = machine_info()  # its load average is the one at the start
    result = run_workload(make_workload(workload, steps), rounds, echo=echo)
    result["machine"] = machine
    workloads[workload] = result
    return {"benchmark": "numerics_cost", "machine": result["machine"], "target": TARGET,
            "workloads": {k: workloads[k] for k in sorted(workloads)}}


def table(r: dict) -> str:
    """Per workload: each round's CPU and wall seconds, the ratios, the CPU, ATen's levels and the load."""
    lines = []
    for name, w in r["workloads"].items():
        s = w["summary"]
        lines += [f"workload {name}: {w['description']}",
                  f"  {w['cpu']} (flags allow {w['flags_level']}); ATen pinned {'/'.join(w['aten_pinned'])}, "
                  f"unpinned {'/'.join(w['aten_unpinned'])}; load average {w['load_average_start']} at the start, "
                  f"{w['load_average_end']} at the end; {w['measured_at']}",
                  f"  {'round':>5s} {'pinned CPU s':>12s} {'unpinned CPU s':>14s} {'ratio':>6s} "
                  f"{'pinned wall s':>13s} {'unpinned wall s':>15s}"]
        for i in range(w["rounds"]):
            lines.append(f"  {i + 1:>5d} {s['cpu']['pinned_seconds'][i]:>12.1f} {s['cpu']['unpinned_seconds'][i]:>14.1f} "
                         f"{s['cpu']['per_round_ratio'][i]:>6.3f} {s['wall']['pinned_seconds'][i]:>13.1f} "
                         f"{s['wall']['unpinned_seconds'][i]:>15.1f}")
        verdict = (("within" if w["within_target"] else "NOT within") + f" the target {w['target']:.2f}"
                   if name == "demo" else f"the target ({w['target']:.2f}) is the demo's")
        lines.append(f"  pinned / unpinned CPU seconds: {w['cpu_ratio']:.3f} (median of {w['rounds']} per-round "
                     f"ratios; ratio of medians {s['cpu']['ratio_of_medians']:.3f}); wall {w['wall_ratio']:.3f}; "
                     f"{verdict}")
        if name == "demo":  # what `make demo` runs is the pinned arm
            walls = s["wall"]["pinned_seconds"]
            lines.append(f"  make demo's stages (the pinned runs): median {statistics.median(walls):.0f} s wall of "
                         f"{len(walls)} runs ({', '.join(f'{x:.0f}' for x in walls)} s)")
        if not w["unpinned_is_native"]:
            lines.append(f"  note: the unpinned runs saw ATen {'/'.join(w['aten_unpinned'])}, not the flags' "
                         f"{w['flags_level']}")
    if "demo" not in r["workloads"]:
        lines.append(f"workload demo: not measured yet: `repro bench numerics-cost --workload demo` on an idle machine "
                     f"(about {DEMO_CPU_MINUTES} CPU minutes for 3 rounds)")
    return "\n".join(lines)
