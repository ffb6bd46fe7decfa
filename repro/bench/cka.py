"""CKA benchmark: the streaming accumulator vs a per-pair numpy baseline, same frames, same process.

Two synthetic "models" of `layers` layers of `dim` features (like Base SSL
models: 13 x 768), float32 frames that share a low-dimensional latent (so the
matrices are not trivial) plus a common offset. Four measurements:

    within  ours: one within-model CKAAccumulator over the 13 layers (upper triangle only)
            naive: `linear_cka` (centre, three products) for each of the 91 pairs l <= m
    cross   ours: one cross-model CKAAccumulator, 13 x 13
            naive: `linear_cka` for each of the 169 pairs

Reported: frames/s (end to end; for ours also the steady rate of the batches after the
first, which excludes the one-off costs: first touching the sums' memory and turning the
sums into the matrix), the speed-up (naive time / ours) next to the ratio of their flops, peak resident memory
above the level before each case, the achieved GFLOP/s (counted matrix-product
flops / wall time) against this machine's float64 GEMM rate (numpy's: both methods run on it; measured again
right before each method, since a shared machine's rate drifts), and the largest
difference between the two matrices (they must agree to rounding).
"""

from __future__ import annotations

import time

import numpy as np

from repro.bench.common import PeakMemory, gemm_gflops, machine_info, timed
from repro.similarity.accumulator import CKAAccumulator
from repro.similarity.cka import linear_cka

DEFAULTS = {"frames": 2048, "layers": 13, "dim": 768, "batch": 512, "seed": 0, "repeats": 1}


def make_frames(frames: int, layers: int, dim: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two models' layers, `layers` arrays `[frames, dim]` float32 each, sharing a 32-d latent."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((frames, 32)).astype(np.float32)

    def model() -> list[np.ndarray]:
        out = []
        for _ in range(layers):
            w = rng.standard_normal((32, dim)).astype(np.float32)
            noise = rng.standard_normal((frames, dim), dtype=np.float32)
            out.append(latent @ w + 2.0 * noise + 5.0)
        return out

    return model(), model()


def naive_grid(xs: list[np.ndarray], ys: list[np.ndarray] | None) -> np.ndarray:
    """The baseline: `linear_cka` for every layer pair (within a model: pairs l <= m, mirrored)."""
    if ys is None:
        out = np.zeros((len(xs), len(xs)))
        for l in range(len(xs)):
            for m in range(l, len(xs)):
                out[l, m] = out[m, l] = linear_cka(xs[l], xs[m])
        return out
    return np.array([[linear_cka(x, y) for y in ys] for x in xs])


def ours_grid(xs: list[np.ndarray], ys: list[np.ndarray] | None, batch: int) -> tuple[np.ndarray, dict]:
    """The streaming accumulator fed `batch` frames at a time, then its matrix.

    Also returns where the time went: `setup` (creating the accumulator), `updates`
    (seconds of each batch; the first one also pays for first touching the 0.8 GB of
    sums) and `finalize` (sums to matrix, once per result whatever the number of frames).
    """
    start = time.perf_counter()
    acc = CKAAccumulator([x.shape[1] for x in xs], None if ys is None else [y.shape[1] for y in ys])
    times = {"setup": time.perf_counter() - start, "updates": []}
    for i in range(0, xs[0].shape[0], batch):
        start = time.perf_counter()
        acc.update([x[i:i + batch] for x in xs], None if ys is None else [y[i:i + batch] for y in ys])
        times["updates"].append(time.perf_counter() - start)
    start = time.perf_counter()
    matrix = acc.cka()
    times["finalize"] = time.perf_counter() - start
    return matrix, times


def flops(frames: int, dims: list[int], symmetric: bool, naive: bool) -> float:
    """Flops (2 per multiply-add) of the matrix products each method performs.

    Naive: per pair Xc^T Yc plus Xc^T Xc and Yc^T Yc, which numpy computes by SYRK
    (d (d + 1) / 2 entries). Ours (numpy backend): X^T X by SYRK within a model; X^T Y
    plus each side's own layer blocks by SYRK across models.
    """
    n, L = frames, len(dims)
    if naive:
        pairs = [(l, m) for l in range(L) for m in range(l if symmetric else 0, L)]
        return float(sum(2 * n * dims[l] * dims[m] + n * dims[l] * (dims[l] + 1) + n * dims[m] * (dims[m] + 1)
                         for l, m in pairs))
    D = sum(dims)
    if symmetric:
        return float(n * D * (D + 1))
    return float(2 * n * D * D + 2 * sum(n * d * (d + 1) for d in dims))


def run(frames: int = DEFAULTS["frames"], layers: int = DEFAULTS["layers"], dim: int = DEFAULTS["dim"],
        batch: int = DEFAULTS["batch"], seed: int = DEFAULTS["seed"], repeats: int = DEFAULTS["repeats"]) -> dict:
    """Measure both grids with both methods, alternating them `repeats` times and keeping each
    method's fastest run (the least disturbed by other work); returns the result record."""
    started = time.perf_counter()
    xs, ys = make_frames(frames, layers, dim, seed)
    gemm = gemm_gflops()
    dims = [dim] * layers
    cases = {}
    for case, other in (("within", None), ("cross", ys)):
        sym = other is None
        f = {"ours": flops(frames, dims, sym, False), "naive": flops(frames, dims, sym, True)}
        best: dict[str, dict] = {}
        runs: dict[str, list[float]] = {"ours": [], "naive": []}
        results = {}
        for _ in range(max(1, repeats)):
            for method, fn in (("ours", lambda: ours_grid(xs, other, batch)), ("naive", lambda: naive_grid(xs, other))):
                # the GEMM reference is measured just before each run: a shared machine's rate drifts
                g = gemm_gflops(size=1536, repeats=2)["numpy"]
                out, seconds, peak = timed(fn)
                results[method], parts = out if method == "ours" else (out, None)
                runs[method].append(round(seconds, 3))
                if method in best and best[method]["seconds"] <= seconds:
                    continue
                best[method] = {"seconds": seconds, "frames_per_s": frames / seconds, "peak_mib": _mib(peak),
                                "gflop": f[method] / 1e9, "gflops": f[method] / seconds / 1e9,
                                "gemm_gflops_before": g, "gemm_fraction": f[method] / seconds / 1e9 / g}
                if parts is not None and len(parts["updates"]) > 1:
                    # steady state: the batches after the first (which also first-touches the sums)
                    later, rest = sum(parts["updates"][1:]), frames - min(batch, frames)
                    best[method].update(setup_seconds=parts["setup"], finalize_seconds=parts["finalize"],
                                        update_seconds=[round(t, 3) for t in parts["updates"]],
                                        steady_frames_per_s=rest / later,
                                        steady_gflops=f[method] * rest / frames / later / 1e9,
                                        steady_gemm_fraction=f[method] * rest / frames / later / 1e9 / g)
        for method in best:
            best[method]["runs"] = runs[method]
        cases[case] = {"pairs": layers * (layers + 1) // 2 if sym else layers * layers, **best,
                       "speedup": best["naive"]["seconds"] / best["ours"]["seconds"],
                       "flop_ratio": f["naive"] / f["ours"],
                       "max_abs_difference": float(np.max(np.abs(results["ours"] - results["naive"])))}
    with PeakMemory() as probe:
        pass
    return {"benchmark": "cka", "machine": machine_info(), "gemm_float64_gflops": gemm,
            "peak_memory": f"resident memory above the level at the start of each run ({probe.method})",
            "setup": {"frames": frames, "layers": layers, "dim": dim, "batch": batch, "seed": seed,
                      "repeats": repeats, "dtype_in": "float32", "accumulation": "float64"},
            "cases": cases, "wall_seconds": time.perf_counter() - started}


def _mib(b: int | None) -> float | None:
    return None if b is None else round(b / 2**20, 1)


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    s, g = r["setup"], r["gemm_float64_gflops"]
    lines = [f"CKA benchmark: {s['frames']} frames, {s['layers']} layers x {s['dim']}-d per model, batches of "
             f"{s['batch']}, best of {s['repeats']}; float64 GEMM here: {g['numpy']:.1f} GFLOP/s (numpy, both "
             f"methods' backend), {g['torch']:.1f} (torch); load average {r['machine']['load_average_1min']}",
             f"{'grid':9s} {'method':9s} {'seconds':>8s} {'frames/s':>9s} {'GFLOP/s':>8s} {'of GEMM':>8s} "
             f"{'(GEMM)':>7s} {'peak MiB':>9s} {'speed-up':>9s} {'(flops)':>8s} {'max |diff|':>10s}"]
    for case, c in r["cases"].items():
        o, nv = c["ours"], c["naive"]
        rows = [("ours", o["seconds"], o["frames_per_s"], o["gflops"], o["gemm_fraction"], o["peak_mib"])]
        if "steady_frames_per_s" in o:
            later = sum(o["update_seconds"][1:])
            rows.append(("  steady", later, o["steady_frames_per_s"], o["steady_gflops"], o["steady_gemm_fraction"],
                         None))
        rows.append(("naive", nv["seconds"], nv["frames_per_s"], nv["gflops"], nv["gemm_fraction"], nv["peak_mib"]))
        for name, sec, fps, gf, frac, peak in rows:
            gemm = o["gemm_gflops_before"] if name != "naive" else nv["gemm_gflops_before"]
            extra = (f"{c['speedup']:>8.2f}x {'(' + format(c['flop_ratio'], '.2f') + 'x)':>8s} "
                     f"{c['max_abs_difference']:>10.1e}" if name == "ours" else "")
            lines.append(f"{case + ' ' + str(c['pairs']) if name == 'ours' else '':9s} {name:9s} {sec:>8.2f} "
                         f"{fps:>9.0f} {gf:>8.1f} {frac:>8.0%} {gemm:>7.0f} "
                         f"{'' if peak is None else format(peak, '.0f'):>9s} {extra}")
        if "update_seconds" in o:
            lines.append(f"{'':9s} ours: batches {', '.join(f'{t:.2f}' for t in o['update_seconds'])} s (the first "
                         f"also touches the sums' memory), {o['finalize_seconds']:.2f} s from sums to matrix; "
                         "'steady' = the batches after the first")
    return "\n".join(lines)
