"""WavLM attention benchmark: the fused paths (`sdpa`, `flex` where compiled) against transformers' eager attention.

Same model (WavLM Base+ shape, transformers' default `WavLMConfig`, random weights), same audio,
same process, float32, batch of one utterance of each length (8 s and 16 s by default):

    audio s/s      a whole forward (`HFSpeechSSL`, all 13 layers), each path run alternately
                   `repeats` times, the fastest run kept
    attention peak the attention block's peak live memory above what was live at its start, for
                   layer 0 (which also makes the position bias): from the relative position bias
                   (its per-batch repeat included on eager) to the attention output. Measured with
                   `torch.profiler(profile_memory=True)`: every allocation and free the allocator
                   reports, kernels' internal buffers included, summed in time order; the peak of
                   that running sum. On eager this is transformers' `WavLMAttention.forward`; on
                   `sdpa` the bias table and one layer's gated mask and SDPA call
                   (`repro.models.hf_encoder`).
    difference     max |fused - eager| / max |eager| over the 13 layers

`flex` is timed only on CUDA: elsewhere it runs torch's unfused reference implementation (exact,
for checking), which says nothing about the kernel's speed or memory.
"""

from __future__ import annotations

import time
import warnings

import torch

from repro.bench.common import machine_info

DEFAULTS = {"lengths": (8.0, 16.0), "repeats": 2, "batch": 1}


def attention_peak_bytes(upstream, wavs: torch.Tensor, lengths: torch.Tensor) -> int:
    """Peak live bytes of layer 0's attention block (module doc) for `upstream` (an `HFSpeechSSL` of WavLM)."""
    from repro.models import hf_encoder as H

    model = upstream.model
    with torch.no_grad():
        features = H.feature_encoder(model, wavs, lengths)
        frames = model._get_feat_extract_output_lengths(lengths)
        valid = torch.arange(features.shape[1])[None, :] < frames[:, None]
        projected = model.feature_projection(features)
        x = model.encoder.layer_norm(projected[0] if isinstance(projected, tuple) else projected)
        attn = model.encoder.layers[0].attention

        def block():
            if upstream.attention == "eager":
                with warnings.catch_warnings():  # torch's note on a boolean key mask beside a float one
                    warnings.simplefilter("ignore", UserWarning)
                    return attn(x, attention_mask=valid, position_bias=None)
            layers = H._WavLMLayers(model.encoder.layers, valid, upstream.attention, False)
            return layers._attend(attn, x), layers

        return peak_live_bytes(block)


def peak_live_bytes(fn) -> int:
    """Peak of the running sum of the allocations and frees the profiler sees while `fn()` runs (bytes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()  # kept alive until the profile ends: the block's outputs count as live
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    del out
    return peak


def run(lengths=DEFAULTS["lengths"], repeats: int = DEFAULTS["repeats"], batch: int = DEFAULTS["batch"],
        model_config: dict | None = None) -> dict:
    """Measure (module doc) and return the record; `model_config` (another WavLM size) is for tests."""
    import transformers

    from repro.models.hf_ssl import HFSpeechSSL

    started = time.perf_counter()
    torch.manual_seed(0)
    model = transformers.WavLMModel(transformers.WavLMConfig(**(model_config or {}))).eval()
    paths = ["eager", "sdpa"] + (["flex"] if torch.cuda.is_available() else [])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    ups = {p: HFSpeechSSL(model, False, p) for p in paths}
    cases = {}
    for seconds in lengths:
        n = int(seconds * 16000)
        g = torch.Generator().manual_seed(0)
        wavs = (torch.randn(batch, n, generator=g) * 0.1).to(device)
        lens = torch.full((batch,), n, dtype=torch.long, device=device)
        ref = ups["eager"](wavs, lens).layers
        row = {}
        for p in paths:
            out = ups[p](wavs, lens).layers  # warm-up (and compilation on flex)
            row[p] = {"max_relative_difference": max(float((a - b).abs().max() / b.abs().max())
                                                     for a, b in zip(out, ref))}
        for _ in range(max(1, repeats)):
            for p in paths:
                _sync(device)
                t0 = time.perf_counter()
                ups[p](wavs, lens)
                _sync(device)
                wall = time.perf_counter() - t0
                row[p]["wall_seconds"] = min(row[p].get("wall_seconds", wall), wall)
        for p in paths:
            row[p]["audio_s_per_s"] = batch * seconds / row[p]["wall_seconds"]
            if device.type == "cpu":
                row[p]["attention_peak_mib"] = attention_peak_bytes(ups[p], wavs, lens) / 2**20
        eager = row["eager"]
        for p in paths[1:]:
            row[p]["speed_vs_eager"] = row[p]["audio_s_per_s"] / eager["audio_s_per_s"]
            if "attention_peak_mib" in row[p]:
                row[p]["attention_memory_reduction"] = eager["attention_peak_mib"] / row[p]["attention_peak_mib"]
        cases[f"{seconds:g}s"] = row
    cfg = model.config
    return {
        "benchmark": "attention", "machine": machine_info(), "device": str(device),
        "setup": {"model": "WavLM Base+ shape (transformers' default WavLMConfig), random weights"
                  if not model_config else f"WavLM {model_config}, random weights",
                  "heads": cfg.num_attention_heads, "layers": cfg.num_hidden_layers, "batch": batch,
                  "dtype": "float32", "repeats": repeats, "paths": paths,
                  "memory_method": "torch.profiler(profile_memory=True): running sum of allocations and frees "
                                   "(CPU allocator) over layer 0's attention block, its peak"},
        "cases": cases, "wall_seconds": time.perf_counter() - started,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    s = r["setup"]
    lines = [f"WavLM attention on {r['device']}: {s['model']}, batch {s['batch']}, {s['dtype']}; attention peak: "
             f"{s['memory_method']}",
             f"{'audio':>6s} {'path':6s} {'audio s/s':>10s} {'vs eager':>9s} {'attn peak MiB':>14s} "
             f"{'x lower':>8s} {'max rel diff':>13s}"]
    for length, row in r["cases"].items():
        for p, c in row.items():
            peak = f"{c['attention_peak_mib']:.1f}" if "attention_peak_mib" in c else "-"
            lower = f"{c['attention_memory_reduction']:.1f}" if "attention_memory_reduction" in c else "-"
            speed = f"{c['speed_vs_eager']:.2f}x" if "speed_vs_eager" in c else "-"
            lines.append(f"{length:>6s} {p:6s} {c['audio_s_per_s']:>10.2f} {speed:>9s} {peak:>14s} {lower:>8s} "
                         f"{c['max_relative_difference']:>13.1e}")
    return "\n".join(lines)
