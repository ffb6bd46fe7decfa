"""The record of a rehearsal (`repro rehearse --profile fast --record artifacts/bench`): wall seconds of
each stage, CPU seconds (the process and its workers: what a busy shared machine does not inflate), the
load average at the start and the end, and the disk it used, on the machine named in the record; the
PERFORMANCE page's section."""

from __future__ import annotations

from pathlib import Path

HOW = "`repro rehearse --profile fast --record artifacts/bench` (then `repro bench report`)"


def record(rehearsal: dict, bench_dir: Path) -> Path:
    """Write `bench_dir/rehearsal.json` from a rehearsal's record (`repro.rehearse.runner.rehearse`)."""
    import os

    from repro.bench.common import machine_info
    from repro.util.atomic import atomic_write_json

    machine = machine_info()
    load = rehearsal.get("load_average_start")
    if load is None:  # a record made without it: the load now
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    machine["load_average_1min"] = round(load, 2) if load is not None else None
    out = {"benchmark": "rehearsal", "machine": machine, "profile": rehearsal["profile"], "ci": rehearsal["ci"],
           "seconds": rehearsal["seconds"], "cpu_seconds": rehearsal.get("cpu_seconds", {}),
           "load_average_end": rehearsal.get("load_average_end"), "disk_bytes": rehearsal["disk_bytes"],
           "shrunk": len(rehearsal["shrunk"]), "train": rehearsal["train"]}
    path = Path(bench_dir) / "rehearsal.json"
    atomic_write_json(path, out)
    return path


def table(r: dict) -> str:
    cpu = r.get("cpu_seconds", {})
    total = f"{r['seconds']['total'] / 60:.1f} min wall" + (f", {cpu['total'] / 60:.1f} min CPU" if "total" in cpu else "")
    lines = [f"repro rehearse --profile {r['profile']}{' --ci' if r.get('ci') else ''}: {total} in all, "
             f"{r['shrunk']} settings shrunk; load average {r['machine'].get('load_average_1min')} at the start, "
             f"{r.get('load_average_end')} at the end",
             f"  {'stage':12s} {'wall s':>8s} {'CPU s':>8s}"]
    lines += [f"  {k:12s} {v:8.0f} {cpu[k] if k in cpu else float('nan'):8.0f}" for k, v in r["seconds"].items()
              if k != "total"]
    lines += [f"disk: {', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in r['disk_bytes'].items())}"]
    if isinstance(r.get("train"), dict) and r["train"].get("skipped"):
        lines.append(f"repro train: skipped ({r['train']['skipped']})")
    return "\n".join(lines)
