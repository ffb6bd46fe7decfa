"""Benchmark: the smoke pipeline end to end, wall seconds per stage, in a temporary work folder.

By default the smoke profile without the models it trains: no speaker models (training them takes
about 12 minutes on 2 cores) and the random tiny speech SSL twins (`tiny-wavlm`, `tiny-hubert`) in
place of the pre-trained ones (about 3 minutes); `speakers=True` (`repro bench pipeline --speakers`)
runs the whole smoke profile. `REPRO_WORK`, `REPRO_RESULTS` and `REPRO_FIGURES` point into the temporary
folder while it runs. Each stage is reported with its share of the total; the features stage
also as audio seconds per wall second (all models over all task splits).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from repro.bench.common import machine_info
from repro.util.environ import restore_environ, saved_environ

DEFAULTS = {"speakers": False}
WITHOUT_SPEAKERS = """\
extends: smoke
name: smoke-bench
models: {speech_ssl: [tiny-wavlm, tiny-hubert], speaker_ssl: [], speaker_sup: []}
speaker_training: {pipeline_recipes: []}
ssl_training: {pipeline_recipes: []}
"""


def run(speakers: bool = DEFAULTS["speakers"], work: Path | None = None, profile_text: str | None = None) -> dict:
    """Run every stage once in a fresh folder and return the times (see module doc).
    `profile_text` (a profile's YAML) replaces the smoke profile (tests use a tiny one)."""
    from repro.config import load_profile
    from repro.data.manifest import load_task
    from repro.pipeline import run as run_pipeline
    from repro.workspace import Workspace

    tmp = tempfile.TemporaryDirectory(prefix="bench-pipeline-") if work is None else None
    root = Path(tmp.name) if tmp is not None else Path(work)
    saved = saved_environ(("REPRO_WORK", "REPRO_RESULTS", "REPRO_FIGURES"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        for key, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
            os.environ[key] = str(root / sub)
        if speakers and profile_text is None:
            profile = load_profile("smoke")
        else:
            (root / "smoke-bench.yaml").write_text(profile_text or WITHOUT_SPEAKERS)
            profile = load_profile(root / "smoke-bench.yaml")
        ws = Workspace.for_profile(profile)
        started = time.perf_counter()
        times = {r.stage: r.seconds for r in run_pipeline(ws, progress=False)}
        total = time.perf_counter() - started
        models = ws.profile.models.all()
        audio = sum(u.duration for t in ws.profile.tasks for u in load_task(ws.corpus_dir, t)) * len(models)
        stages = {name: {"seconds": s, "share": s / total} for name, s in times.items()}
        described = "smoke" if speakers else "smoke without trained models (random tiny speech SSL models)"
        return {"benchmark": "pipeline", "machine": machine_info(), "profile": profile_text and "custom" or described,
                "models": models, "tasks": list(ws.profile.tasks),
                "stages": stages, "total_seconds": total,
                "features_audio_seconds": audio,
                "features_audio_s_per_s": audio / stages["features"]["seconds"] if "features" in stages else None}
    finally:
        restore_environ(saved)
        if tmp is not None:
            tmp.cleanup()


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = [f"smoke pipeline ({r['profile']}: {', '.join(r['models'])}; {len(r['tasks'])} tasks), "
             f"{r['total_seconds']:.0f} s in all", f"{'stage':10s} {'seconds':>8s} {'share':>6s}"]
    for name, s in r["stages"].items():
        lines.append(f"{name:10s} {s['seconds']:>8.1f} {s['share']:>6.0%}")
    if r.get("features_audio_s_per_s"):
        lines.append(f"features: {r['features_audio_seconds']:.0f} audio s (all models) at "
                     f"{r['features_audio_s_per_s']:.0f} audio s / wall s")
    return "\n".join(lines)
