"""Measure the spreads that the tolerances of `repro paper verify` are derived from; write the record.

    python tests/measure_tolerances.py [--out artifacts/checksums/tolerances.json]   (minutes, 1 thread)

Two spreads, each the largest |difference| from a reference computation of the same values:

- `sum_order`: the CKA outputs of fixed features (every pair of layers, biased and debiased) when only the
  order of the float64 sums changes: the streaming accumulator of the CKA stage
  (`repro.similarity.accumulator.CKAAccumulator`, with its own shift) fed the frames in `ORDERS` random
  orders, in random chunks, and as two shards merged (as torchrun ranks); reference: one chunk in the
  stored order. This is the freedom OpenBLAS has on another CPU (its kernels split and order the sums
  by processor). Features: tests/numeric_core.py's (trained and untrained model, 3 layers x 960 frames x 32).
- `code_paths`: tests/numeric_core.py's values (a few steps of each training recipe, features, a probe,
  CKA matrices of a trained and of an untrained model) in fresh processes under each CPU setting of
  `SETTINGS` (unpinned, ATen levels, ...) against pinned numerics, after `STEPS` training steps: how far
  the same run moves when the CPU code paths change (another CPU, or pinned numerics off), and how that
  grows with training.

`repro.paper.checksums.tolerance_of` derives the tolerances from this record with its stated margins.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from repro.cpu_numerics import PINNED_ENV, SWITCH, cpu_model  # noqa: E402

CORE = ROOT / "tests" / "numeric_core.py"
ORDERS = 20
STEPS = (4, 32)
# name -> (variables set on top of an environment without PINNED_ENV, replace the unpinned kernels)
SETTINGS = {
    "pinned": (PINNED_ENV, True),
    "unpinned": ({}, False),
    "aten-default": ({"ATEN_CPU_CAPABILITY": "default"}, False),
    "aten-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, False),
    "aten-avx2-onednn-avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
}
PARTS = ("speaker", "ssl", "features", "probe", "cka", "cka_layers", "cka_layers_debiased", "fixed_features",
         "fixed_cka_layers", "fixed_cka_layers_debiased")


def core_values(setting: str, steps: int, folder: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(ATen level, values) of tests/numeric_core.py in a fresh process under `setting`."""
    extra, pin = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k != SWITCH}
    env.update(extra, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    out = folder / f"{setting}-{steps}.npz"
    cmd = [sys.executable, str(CORE), "--values", str(out), "--steps", str(steps)] + (["--pin-kernels"] if pin else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with np.load(out) as f:
        return done.stdout.split()[0], {k: f[k] for k in f.files}


def spread(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Largest |a - b| and the same relative to the largest |b|."""
    d = float(np.abs(a - b).max())
    return {"max_abs_difference": d, "max_relative_difference": d / max(float(np.abs(b).max()), 1e-300)}


def layers_of(flat: np.ndarray) -> list[np.ndarray]:
    """tests/numeric_core.py's features (3 layers of [6, 160, 32], flattened) as 3 arrays [960, 32]."""
    return list(flat.reshape(3, -1, 32))


def sum_order_spread(layers: list[np.ndarray], rng: np.random.Generator) -> dict[str, float]:
    """Largest |difference| of the CKA matrices (biased, debiased) of `layers` with themselves over ORDERS
    reorderings of the float64 sums (see the module doc)."""
    from repro.similarity.accumulator import CKAAccumulator

    n = len(layers[0])

    def cka(order: np.ndarray, cuts: list[int], shards: int = 1) -> tuple[np.ndarray, np.ndarray]:
        first = order[:cuts[0] if cuts else n]  # the shards take the shift of the first chunk, as the ranks share one
        shift = np.concatenate([a[first].mean(0) for a in layers]) if shards > 1 else None
        accs = [CKAAccumulator([32] * len(layers), shift_x=shift) for _ in range(shards)]
        for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, n])):
            rows = order[lo:hi]
            accs[i % shards].update([a[rows] for a in layers])
        acc = accs[0]
        for other in accs[1:]:
            acc = acc.merge(other)
        return acc.cka(False), acc.cka(True)

    ref = cka(np.arange(n), [])
    worst = {"cka_biased": 0.0, "cka_debiased": 0.0}
    for k in range(ORDERS):
        cuts = sorted(rng.choice(np.arange(1, n), size=int(rng.integers(1, 30)), replace=False).tolist())
        got = cka(rng.permutation(n), cuts, shards=1 + k % 2)
        for key, a, b in (("cka_biased", got[0], ref[0]), ("cka_debiased", got[1], ref[1])):
            worst[key] = max(worst[key], float(np.abs(a - b).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "checksums" / "tolerances.json")
    args = parser.parse_args()
    import torch

    from repro.util.atomic import atomic_write_json

    record = {
        "what": "spreads of numeric outputs when only the summation order or the CPU code paths change; "
                "repro.paper.checksums derives the tolerances of `repro paper verify` from them",
        "how": "python tests/measure_tolerances.py (its docstring says what is measured)",
        "cpu": cpu_model(), "torch": torch.__version__, "numpy": np.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        levels, code_paths, pinned = {}, {}, {}
        for steps in STEPS:
            pinned[steps] = core_values("pinned", steps, folder)[1]
            again = core_values("pinned", steps, folder)[1]
            assert all(np.array_equal(again[p], pinned[steps][p]) for p in PARTS), "pinned is not repeatable"
            for setting in SETTINGS:
                if setting == "pinned":
                    continue
                level, got = core_values(setting, steps, folder)
                levels[setting] = level
                code_paths.setdefault(f"{steps} steps", {})[setting] = {p: spread(got[p], pinned[steps][p])
                                                                       for p in PARTS}
                print(steps, setting, level, {p: f"{v['max_abs_difference']:.1e}"
                                              for p, v in code_paths[f"{steps} steps"][setting].items()}, flush=True)
        rng = np.random.default_rng(0)
        core = pinned[STEPS[0]]
        record["sum_order"] = {
            "orders": ORDERS, "frames": len(layers_of(core["features"])[0]), "layers": 3, "width": 32,
            "trained_features": sum_order_spread(layers_of(core["features"]), rng),
            "untrained_features": sum_order_spread(layers_of(core["fixed_features"]), rng)}
        print("sum order", record["sum_order"], flush=True)
    record["code_paths"] = {"reference": "pinned", "aten_level": {"pinned": "AVX2", **levels},
                            "settings": {k: {"variables": v[0], "replaced_kernels": v[1]} for k, v in SETTINGS.items()},
                            "spread": code_paths}
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
