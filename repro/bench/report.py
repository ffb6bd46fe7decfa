"""docs/PERFORMANCE.md from the benchmark records in artifacts/bench/ (whatever exists there)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from repro.bench import BENCHMARKS
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
    "probe_syncs": ("Host syncs and uploads of a probe step", "Counted, not timed (`repro/bench/probe_syncs.py`, "
                    "`repro.util.device_syncs`): the operations of a probe group's training steps between two "
                    "evaluations that would make a GPU wait for the host (explicit reads such as `.item()`, "
                    "`float()`, `.cpu()`, and implicit ones such as boolean indexing or `nonzero`), from the "
                    "upstream's output to the optimiser step, and the bytes copied to the device per step "
                    "(audio, targets and lengths, or store rows: nothing else)."),
    "probe_fused": ("Pooled probe groups as one fused step", "Steps per CPU second of a pooled probe group "
                    "(`repro.probing.fused`: every learning rate and fold of KS, IC or ER one step on stacked "
                    "parameters, a step's micro-batches one batch of rows) against the previous engine (one "
                    "small step per probe and micro-batch), random utterance means of WavLM Base+'s 13 x 768 "
                    "layers, the full profile's batch shapes: KS, K = 4 learning rates, batch 32; ER, 5 folds x "
                    "K = 4, batch 4 x 8 accumulated. The same script (`repro/bench/probe_fused.py`) imports each "
                    "checkout's code in its own process, the two alternately, three times each; the rate in "
                    "steady state (CPU seconds of a run of 140 steps less those of a run of 20, over 120; KS's "
                    "runs five times as long), median; `fixed s` is what a run pays once (stacking, the device table of means, the "
                    "evaluation, checkpoints); `floor` the steps per CPU second of the work of a step no float32 "
                    "engine can leave out (the rows' gather, the projector's three products, the gradient norms, "
                    "one fused Adam pass), `ceiling` its ratio to the previous engine: the most any engine "
                    "could gain on this CPU; `bound` adds the layer-weighted sum as an engine computes it whose "
                    "bytes do not depend on the group (elementwise, layer after layer). On a GPU, where a step is launch-bound, a step of the previous "
                    "engine is K x folds x micro-batches x a few hundred launches and a fused step the same "
                    "launches for any K, folds and micro-batches (counted: `tests/test_fused_heads.py`)."),
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
    "attention": ("WavLM attention paths", "WavLM Base+ shapes, random weights, on this CPU in one process "
                  "(`repro/bench/attention.py`): audio seconds per second of the encoder on `extraction.attention` "
                  "`sdpa` (the gated position bias as SDPA's additive mask) against `eager` (transformers' own "
                  "attention), and the attention block's peak live memory (from the position bias to the attention "
                  "output) from the profiler's allocation events."),
    "ecapa": ("ECAPA-TDNN batches", "One length-aware front-end and encoder call per padded batch of mixed lengths "
              "against one utterance per call and against the equal-length grouping it replaced "
              "(`repro/bench/ecapa_batch.py`): audio seconds per CPU second, encoder calls per batch, and the "
              "largest relative difference of any layer from the utterance run alone. The gain of one call per "
              "batch is a GPU's (launches and occupancy); on a CPU the target is to lose little."),
    "padding": ("Padding of PR's training forwards", "Counted, not timed (`repro/bench/padding.py`): PR's "
                "training micro-batches as the trainer draws them (`repro.probing.sources.micro_batch`, the "
                "profile's seed, batch size, gradient accumulation and steps) over a training split with "
                "LibriSpeech train-clean-100's pinned length distribution (`artifacts/bench/librispeech_lengths.json`), "
                "each forwarded alone and padded to its longest item (before), against the forwards of "
                "`probing.length_window` steps per accumulation slot sorted by length into forwards of the batch "
                "size (`repro.probing.length_window`, after). Padding share = 1 - valid / padded audio; padded / "
                "valid is the factor the projection multiplies PR's training forwards by; `expected alone` is "
                "the same factor from the distribution's order statistics (`repro.bench.lengths.padded_mean`)."),
    "numerics_cost": ("The cost of pinned CPU numerics", "CPU seconds of a workload run with the smoke profile's "
                      "pinned CPU numerics (`runtime.pinned_cpu_numerics`: ATen and oneDNN at AVX2, MKL's COMPATIBLE "
                      "branch, the square root that no variable pins replaced; repro/cpu_numerics.py) against the "
                      "same workload on the machine's native code paths, in child processes run alternately "
                      "(pinned, unpinned, pinned, ...), each from scratch (`repro bench numerics-cost`, "
                      "`repro/bench/numerics_cost.py`). CPU seconds are user + system of each child and what it "
                      "waited for (on a shared machine the wall time includes waiting for a core); the ratio is "
                      "the median over rounds of each round's pinned / unpinned. The `demo` workload is `make "
                      "demo`'s pipeline (`--workload demo`); `core` is tests/numeric_core.py, a few hundred steps "
                      "of each training recipe, features, a probe and a CKA pair (Python and torch starting "
                      "included). The target for the demo is a ratio of at most 1.20."),
    "gpu": ("GPU calibration", "Random weights of the real shapes on one GPU (`repro bench gpu`, `make bench-gpu`; "
            "runs from the source tree in a stock CUDA PyTorch environment, `repro/bench/gpu.py`): every model's "
            "forward at the full profile's batch shapes in float32 (TF32 off), TF32 and bf16 autocast with how far "
            "each setting moves the layers; a probe group's training micro-batch at the full profile's K on PR, SID "
            "and ASV shapes as today's trainer runs it; a pooled-head step at the KS and ER shapes; one ECAPA-TDNN "
            "forward; median seconds with the 10th and 90th percentile, peak memory. The projection prices the "
            "probe groups' training with these seconds where the record's calibration key is current."),
    "rehearsal": ("A rehearsal of the fast profile", "`make rehearse PROFILE=fast` on this machine: the rehearsal "
                  "corpora made in the real layouts, the four models written at their real sizes with random "
                  "weights, then every stage of the profile with its settings and shrunk sizes "
                  "(docs/reviewing.md, \"Rehearsing the run\"), then `repro train` of both speaker recipes on "
                  "the rehearsal VoxCeleb2; per stage the wall seconds (`time.perf_counter`) and the CPU seconds "
                  "(user + system of the process and of its finished children: data-loading workers, ffmpeg, "
                  "espeak-ng; `resource.getrusage`), the 1-minute load average at the start and at the end, and "
                  "the disk of its work, results and figures folders. The target (at most 15 minutes on a 2-core "
                  "machine) is judged on CPU seconds: on a shared machine the wall time includes waiting for a "
                  "core, and on an idle 2-core machine it is close to the CPU seconds divided by the cores kept busy "
                  "(one to two)."),
    "projection": ("Projection: the full profile on one GPU", None),
}


def _projection_text(r: dict) -> str:
    from repro.bench.projection import gpu_hours_line, summary

    full, fast = r["profiles"]["full"], r["profiles"]["fast"]
    kinds = {}
    for name, i in r["inputs"].items():
        if not name.startswith("step_seconds:"):
            kinds.setdefault(i["kind"], []).append(f"`{name}`")
    rows = ["| term | float32 h | bf16 h | kind | inputs |", "|---|---:|---:|---|---|"]
    b16 = {w: h for w, h, _, _ in summary(full["terms"], "bf16")}
    for what, h, kind, ins in summary(full["terms"], "float32"):
        rows.append(f"| {what} | {h:.2f} | {b16.get(what, 0.0):.2f} | {kind} | {', '.join(ins)} |")
    facts = ", ".join(f"`{k}={v}`" for k, v in r["code_paths"].items() if k != "version")
    largest = "; ".join(f"{w} {h:.1f} h" for w, h in full["largest"]["float32"])
    return (
        f"{gpu_hours_line('full', full['hours'])}\n\n{gpu_hours_line('fast', fast['hours'])}\n\n"
        "GPU hours of today's code on one H100-class GPU, as a table of terms (`repro/bench/costmodel.py`): "
        "per model, task and precision, the upstream's FLOPs with attention (padded batches, from LibriSpeech's "
        "length distribution where PR reads it), the unfused attention's T x T memory traffic, the heads' "
        "forward and backward (K probes per group, float32 in both columns), the features' round trip to the "
        "host over PCIe, the loss reads, the ECAPA-TDNN forwards as they run (equal lengths together, others "
        "alone), pooled-head steps priced per operator on the host, every evaluation pass, feature stores and "
        "CKA; the fast profile uses its own subsets (`data.subsets`). The terms add: today's code synchronises "
        f"every micro-batch. Largest (full, float32): {largest}.\n\n" + "\n".join(rows) + "\n\n"
        f"Every term reads the code-path facts of `repro.bench.costmodel.CODE_PATHS` (version "
        f"{r['code_paths']['version']}): {facts}; a change to the code that flips one reports its effect as the "
        "change of these figures. A term's kind is its weakest input's.\n\n"
        f"- **Counted** (from the code, the profiles and the corpora): the FLOPs per audio second of every model "
        f"(`torch.utils.flop_counter`, SDPA attention added from the shapes), the heads' FLOPs per frame, the "
        f"operators of a pooled-head step, the padding, bytes and syncs; {', '.join(kinds.get('counted', []))}.\n"
        f"- **Measured** ({r['machine']['cpu']}, Python {r['machine']['python']}, torch {r['machine']['torch']}): "
        f"{', '.join(kinds.get('measured', []))}.\n"
        f"- **Assumed** (no GPU has run `repro bench gpu` with the current calibration key; each with its "
        f"source in the table below): {', '.join(kinds.get('assumed', []))}.\n"
        + "".join(f"- {note}\n" for note in r["notes"])
    )


def render(bench_dir: Path) -> str:
    """The page's Markdown from the records in `bench_dir`."""
    parts = [INTRO.format(bench=bench_dir)]
    for name, (title, text) in SECTIONS.items():
        path = Path(bench_dir) / f"{name}.json"
        if not path.is_file():
            how = "measure it as `repro/bench/fresh_machine.py` describes" if name == "fresh_machine" \
                else f"`repro bench {name.replace('_', '-')}`"
            if name == "rehearsal":
                how = importlib.import_module("repro.bench.rehearsal").HOW
            if name == "gpu":
                how = ("on a GPU, `PYTHONPATH=. python3 -m repro bench gpu --wheels WHEELS` from the source tree (a "
                       "stock CUDA PyTorch environment is enough; `python -m repro.bench.wheels WHEELS` collects the "
                       "1.4 MB of pure-Python wheels it needs beforehand, on a machine with network), then "
                       "`repro bench projection` and `repro bench report`; until then the projection's GPU rates "
                       "are assumed")
            parts.append(f"## {title}\n\nNot measured yet: {how}.\n")
            continue
        module = importlib.import_module(BENCHMARKS.get(name, f"repro.bench.{name}"))
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
