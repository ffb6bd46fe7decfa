"""docs/PERFORMANCE.md from the benchmark records in artifacts/bench/ (whatever exists there)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from repro.util.atomic import atomic_write_text

INTRO = """\
# Performance

Written by `repro bench report` (also the last step of `make bench`) from the records in
`{bench}/`; every figure is measured on the machine named in its section, against a baseline run
in the same process on the same data, unless it is marked as an assumption. Rerun `make bench` on
your machine (with a GPU, the same command records GPU figures) and this page is rewritten from
your records. The first section is the exception: a record of the front door (`make demo`, `make
test`) on a bare machine, measured once and committed as `{bench}/fresh_machine.json`.
"""

SECTIONS = {
    "fresh_machine": ("A fresh machine: `make demo` and `make test`", "A new clone on a machine with nothing but "
                      "Python 3.11 and make: `make demo` builds `.venv` from `requirements.lock` (every wheel "
                      "downloaded), then runs every stage of the smoke profile (`repro run --profile smoke`: the "
                      "synthetic corpus, two tiny speaker models trained by the recipes, four tiny models' "
                      "features, CKA, every probe, the paper outputs); `make test` then runs the test suite. "
                      "Stage times are the ones `repro run` prints in its summary. How the record is made: "
                      "`repro/bench/fresh_machine.py`."),
    "extract": ("Extraction", "Audio seconds per wall second of our extraction against a plain loop over "
                "utterances with transformers (batch 1, float32), same model and utterances. On a CPU the "
                "model's matrix products already run near the machine's GEMM rate one utterance at a time, "
                "so padded batches cannot win there (their working sets are larger and attention runs over the "
                "padded length): batching is for GPUs, where a single utterance leaves most of the device idle."),
    "cka": ("Linear CKA", "The full layer grid (within a model and across two models), the streaming "
            "accumulator against a per-pair numpy implementation, and as a fraction of the machine's measured "
            "float64 matrix-multiply rate."),
    "probe": ("Probing inputs", "Training steps per second of one probe from each input (`probing.tasks.<T>.input`) "
              "against recomputing the layers every step; setup = building the source once, KB/utt = bytes on "
              "disk per utterance of the store it reads."),
    "pipeline": ("The smoke pipeline", "Wall seconds per stage of `make demo`'s pipeline run from scratch in a "
                 "temporary folder."),
    "metrics": ("Evaluation metrics", "One PR evaluation's PER scoring (LibriSpeech test-clean size), its greedy CTC "
                "decoding, one EER and the cosine scoring of the trials (VoxCeleb1-O size): the library-backed code "
                "(RapidFuzz, scikit-learn's ROC, tensor and array operations) against the hand-written versions it "
                "replaced, same data, same process, results checked equal; host work counts in CPU seconds (on a "
                "shared machine its wall time includes waiting for a core). Then the share of a PR probe's wall time "
                "spent in dev evaluation for the full profile's PR budget, before and after: measured here with a "
                "WavLM Base+-sized random model, and with its forward at the projection's assumed GPU rates (where "
                "the host-side decoding and scoring weigh most). How each figure is made: `repro/bench/metrics.py`."),
    "gpu": ("GPU calibration", "Random weights of the real shapes on one GPU (`repro bench gpu`, `make bench-gpu`): "
            "audio seconds per second of every model at the full profile's batch shapes in float32 (TF32 off), with "
            "TF32 matmuls (`extraction.tf32`) and under bf16 autocast, with how far each setting moves the layers "
            "(relative Frobenius difference to float32); HuBERT's SDPA attention against eager "
            "(`extraction.attention`); the fixed cost of an ECAPA-TDNN forward; probe-group step rates with 1 and 4 "
            "learning rates. The projection uses these rates where this record exists."),
    "projection": ("Projection: the full profile on one GPU", None),
}


def _projection_text(r: dict) -> str:
    from repro.bench.projection import gpu_hours_line

    t32, tamp = r["totals"]["float32"], r["totals"]["autocast"]
    fw = r["forwarded_audio_seconds"]
    measured = [k for k, v in r["sources"].items() if v.startswith("measured")]
    assumed = [k for k, v in r["sources"].items() if not v.startswith("measured")]
    solo32, soloamp = r["solo_totals"]["float32"], r["solo_totals"]["autocast"]
    return (
        f"{gpu_hours_line('full', r['totals'])}\n\n{gpu_hours_line('fast', r['fast_profile'])}\n\n"
        "Hours per stage for the full profile (four models, every learning rate of the grids) on one GPU: "
        f"features {t32['features']:.1f} h, probing {t32['probe']:.0f} h in float32 (`extraction.autocast: none`, "
        f"exact) or {tamp['probe']:.0f} h under bf16 autocast, CKA {3600 * t32['cka']:.0f} s of matrix products "
        "(reading its 15 GB of frames takes longer); the corpus preparation (hashing every file once) and the "
        "optional speaker-model training are not included. Every learning rate of a task trains in one probe "
        f"group on one upstream forward per micro-batch: the probes forward {fw['grouped'] / 1e6:.0f} M audio "
        f"seconds through the models instead of {fw['solo'] / 1e6:.0f} M with one run per learning rate "
        f"({fw['solo'] / fw['grouped']:.1f}x fewer; one run per learning rate would take "
        f"{sum(solo32.values()):.0f} h in float32, {sum(soloamp.values()):.0f} h in bf16). The fast profile's "
        "figure is an upper bound (its dev sets are smaller than the full ones used here). With N GPUs "
        "(torchrun), the probes whose input is `upstream` take about 1/N of the time, N up to the task's "
        "grad_accum.\n\n"
        "How it is computed is in `repro/bench/projection.py` (module doc): per task and model, the audio the "
        "probe group pushes through the model (steps x grad_accum x batch x seconds per item, plus every dev "
        "evaluation), times the model's FLOPs per audio second, over a throughput, plus one head share per "
        "further learning rate; the ECAPA-TDNN models pay a fixed overhead per utterance on top (an upper "
        "bound: they run utterances of equal length together, other ones alone); decoding overlaps and counts "
        "only when it is slower.\n\n"
        f"- **Counted or measured here** ({r['machine']['cpu']}): {', '.join(measured)}, and the FLOPs per "
        "audio second of every model (`torch.utils.flop_counter`, random weights at the real sizes).\n"
        f"- **Assumed about the GPU** (H100 class; replaced by measured values when `repro bench gpu` has run on "
        f"a GPU): {', '.join(assumed)}. Change them in `repro/bench/projection.py` (`ASSUMED`) for your GPU."
    )


def render(bench_dir: Path) -> str:
    """The page's Markdown from the records in `bench_dir`."""
    parts = [INTRO.format(bench=bench_dir)]
    for name, (title, text) in SECTIONS.items():
        path = Path(bench_dir) / f"{name}.json"
        if not path.is_file():
            how = "measure it as `repro/bench/fresh_machine.py` describes" if name == "fresh_machine" \
                else f"`repro bench {name}`"
            parts.append(f"## {title}\n\nNot measured yet: {how}.\n")
            continue
        module = importlib.import_module(f"repro.bench.{name}")
        if name == "fresh_machine":
            record = module.load(path)
            parts.append(f"## {title}\n\n{text}\n\n{module.provenance(record)} Record: `{path}`.\n\n"
                         f"```\n{module.table(record)}\n```\n")
            continue
        record = json.loads(path.read_text())
        where = record.get("device_name") or record.get("machine", {}).get("cpu", "")
        gpu = record.get("machine", {}).get("gpu")
        host = f"Measured on {where}" + (f" (GPU: {gpu})" if gpu and gpu != where else " (no GPU)") + \
            f", {record.get('machine', {}).get('logical_cores')} logical cores, load average " \
            f"{record.get('machine', {}).get('load_average_1min')} at the start; record: `{path}`."
        body = _projection_text(record) if name == "projection" else text
        parts.append(f"## {title}\n\n{body}\n\n{host}\n\n```\n{module.table(record)}\n```\n")
    return "\n".join(parts)


def write_performance(bench_dir: Path, doc: Path) -> Path:
    """Write `doc` (atomically) from the records in `bench_dir`."""
    atomic_write_text(doc, render(bench_dir))
    return doc
