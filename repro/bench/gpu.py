"""GPU calibration (`repro bench gpu`, `make bench-gpu`): what decides the price, measured on one GPU.

Runs from the source tree in a stock CUDA PyTorch environment (Python 3.11/3.12, torch >= 2.9,
torchaudio, transformers >= 5, numpy, scipy, click, pyyaml, tqdm) without network:

    PYTHONPATH=. python3 -m repro bench gpu --wheels WHEELS

where WHEELS is a folder of pure-Python wheels (speechbrain for the supervised ECAPA-TDNN and what it
imports) that `python -m repro.bench.wheels WHEELS` collects on a machine with network
(`repro.bench.wheels`); this path imports no audio, metrics or other compiled package outside that set.

With random weights at the real shapes (WavLM Base+, HuBERT Base, the C=1024 speechbrain ECAPA-TDNN,
the C=512 wespeaker ECAPA-TDNN), `WARMUP` untimed then `steps` timed repetitions each, seconds with
their spread (median, 10th and 90th percentile) and peak GPU memory, section by section:

    upstream      one forward per model and batch shape (PR: 16 utterances with LibriSpeech
                  train-clean-100 lengths drawn from `repro.bench.lengths`, padded as today's batches;
                  SID: 8 x 8 s crops; ASV: 10 x 8 s crops) in float32 (TF32 off), TF32 and bf16 autocast,
                  with each setting's relative change of the layers against float32;
    probe_groups  one training micro-batch of a probe group at the full profile's K learning rates on
                  PR, SID and ASV shapes, as today's trainer runs it (`repro.bench.costmodel.CODE_PATHS`):
                  upstream forward (float32 or bf16 autocast), layers to the host and back, per probe its
                  float32 head forward and backward and its loss read, the optimiser step every
                  grad_accum micro-batches (seconds per micro-batch, the step amortised);
    pooled_steps  one training step of one pooled probe (`[B, 1, D]` layer means) at the KS and ER shapes;
    ecapa_overhead  one ECAPA-TDNN forward of a 1 s utterance;
    wavlm_attention  WavLM Base+'s forward at the PR shape on each `extraction.attention` path (eager, sdpa,
                  flex), float32 and bf16, with each path's layer change from eager.

The record (`gpu.json`) is rewritten after every section (an interrupted run keeps what it measured)
and stamped with `CALIBRATION_KEY` (a version of the shapes and code paths measured, bumped when they
change), the commit, the GPU's name and the Python, torch and transformers versions. The projection
uses its probe-group seconds where the key matches and names the record. `--device cpu --tiny` runs the
same code at toy sizes (the tests do, with every package outside the stock set blocked from import).
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from repro.bench.common import machine_info
from repro.bench.costmodel import CODE_PATHS, CODE_PATHS_VERSION

CALIBRATION_VERSION = 3  # bump when the measured shapes or code change
CALIBRATION_KEY = f"calibration-v{CALIBRATION_VERSION}+code-paths-v{CODE_PATHS_VERSION}"
WARMUP = 3  # untimed repetitions before the timed ones (one at toy sizes)
DEFAULTS = {"steps": 20}
# items per micro-batch, seconds per item (None: LibriSpeech lengths), K, grad_accum (the full profile)
SHAPES = {"PR": (16, None, 3, 2), "SID": (8, 8.0, 4, 4), "ASV": (10, 8.0, 3, 5)}
POOLED = {"KS": 32, "ER": 4}
TINY_SHAPES = {"PR": (2, 1.0, 2, 2), "SID": (2, 0.8, 2, 2), "ASV": (2, 0.8, 2, 2)}
MODEL_NAMES = ("wavlm-base-plus", "hubert-base", "ecapa-sup-speechbrain", "ecapa-dino-wespeaker")


def _models(tiny: bool, paths: tuple[str, ...] = ()) -> dict[str, Callable]:
    import transformers

    from repro.config.schema import SupervisedRecipeConfig
    from repro.models.ecapa import speechbrain_ecapa, wrap_speechbrain_ecapa
    from repro.models.hf_ssl import HFSpeechSSL
    from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch, wrap_wespeaker_ecapa

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2) if tiny else {}
    sup_arch = ({"channels": [16, 16, 16, 16, 48], "lin_neurons": 8, "attention_channels": 8, "se_channels": 8,
                 "res2net_scale": 2} if tiny else SupervisedRecipeConfig().arch)
    dino_arch = WespeakerEcapaArch.from_dict({"channels": 16, "mfa_channels": 48, "embed_dim": 8, "scale": 2,
                                              "se_bottleneck": 8, "attention_bottleneck": 8} if tiny else {})

    def hf(cls, config_cls, attention, path=None):
        def make():
            torch.manual_seed(0)
            config = config_cls(**small)
            config._attn_implementation = attention
            return HFSpeechSSL(cls(config), False, path).eval()
        return make

    if paths:  # WavLM Base+ on each `extraction.attention` path
        return {f"wavlm-base-plus:{p}": hf(transformers.WavLMModel, transformers.WavLMConfig, "eager", p)
                for p in paths}

    return {
        "wavlm-base-plus": hf(transformers.WavLMModel, transformers.WavLMConfig, "eager"),
        "hubert-base": hf(transformers.HubertModel, transformers.HubertConfig, "sdpa"),
        "ecapa-sup-speechbrain": lambda: wrap_speechbrain_ecapa(speechbrain_ecapa(sup_arch)).eval(),
        "ecapa-dino-wespeaker": lambda: wrap_wespeaker_ecapa(WespeakerEcapa(dino_arch)).eval(),
    }


@contextlib.contextmanager
def _precision(device: torch.device, mode: str):
    """float32 (TF32 off), tf32 (TF32 matmuls and convolutions) or bf16 autocast."""
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext():
            yield
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int | None = None) -> dict[str, Any]:
    """`warmup` untimed calls, then `steps` timed ones: median, 10th / 90th percentile seconds, peak GiB."""
    for _ in range(WARMUP if warmup is None else warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return {"seconds": float(np.median(seconds)), "p10": float(np.percentile(seconds, 10)),
            "p90": float(np.percentile(seconds, 90)), "timed": steps,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def _lengths(task: str, items: int, seconds: float | None, tiny: bool) -> list[int]:
    """Samples per item: fixed crops, or LibriSpeech train-clean-100 lengths (seeded draw)."""
    if seconds is not None:
        return [int(seconds * 16000)] * items
    from repro.bench.lengths import _histogram, load

    centres, p = _histogram(load()["splits"]["train-clean-100"])
    draw = np.random.default_rng(0).choice(centres, size=items, p=p)
    return [int(s * 16000) + i for i, s in enumerate(draw)]  # distinct lengths, as real utterances


def _batch(task: str, items: int, seconds: float | None, tiny: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = _lengths(task, items, seconds, tiny)
    g = torch.Generator().manual_seed(list(SHAPES).index(task))
    wavs = torch.zeros(items, max(n))
    for i, k in enumerate(n):
        wavs[i, :k] = 0.1 * torch.randn(k, generator=g)
    return wavs.to(device), torch.tensor(n, dtype=torch.long).to(device)


def _relative_change(ref: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float]:
    rel = [float((a - b).norm() / a.norm().clamp(min=1e-12)) for a, b in zip(ref, other)]
    return {"mean": float(np.mean(rel)), "max": float(np.max(rel))}


def _modes(device: torch.device, with_tf32: bool) -> tuple[str, ...]:
    return ("float32", "tf32", "bf16") if device.type == "cuda" and with_tf32 else ("float32", "bf16")


def upstream_section(device, tiny, steps, models) -> dict:
    out: dict[str, dict] = {}
    for name, model in models.items():
        out[name] = {}
        for task, (items, seconds, _, _) in (TINY_SHAPES if tiny else SHAPES).items():
            wavs, lengths = _batch(task, items, seconds, tiny, device)
            with torch.no_grad(), _precision(device, "float32"):
                reference = [h.float() for h in model(wavs, lengths).layers]
            case: dict[str, Any] = {"items": items, "padded_seconds": wavs.shape[1] / 16000,
                                    "audio_seconds": float(lengths.sum()) / 16000}
            for mode in _modes(device, True):
                with torch.no_grad(), _precision(device, mode):
                    case[mode] = timed(lambda: model(wavs, lengths), device, steps, 1 if tiny else None)
                    changed = [h.float() for h in model(wavs, lengths).layers]
                case[mode]["audio_s_per_s"] = case["audio_seconds"] / case[mode]["seconds"]
                case[mode]["layer_change"] = _relative_change(reference, changed)
            out[name][task] = case
    return out


def probe_group_step(model, task: str, batch: tuple[torch.Tensor, torch.Tensor], group: tuple[int, int], mode: str,
                     device, code=CODE_PATHS, tiny: bool = False) -> Callable[[], None]:
    """One training micro-batch of a group of probes as the trainer runs it (module doc): `batch` is
    (wavs, lengths), `group` (k probes, grad_accum micro-batches per step)."""
    wavs, lengths = batch
    k, grad_accum = group
    from repro.bench.shapes import HEAD_KIND, loss, outputs_of, probe

    with torch.no_grad(), _precision(device, mode):
        out = model(wavs, lengths)
    dims = [h.shape[-1] for h in out.layers]
    frames = int(out.layers[0].shape[1])
    probes = [probe(None, task, dims=dims, tiny=tiny) for _ in range(k)]  # the widths the model gives
    for p in probes:
        p.to(device)
    opts = [torch.optim.Adam(p.parameters(), lr=1e-3) for p in probes]
    g = torch.Generator().manual_seed(0)
    outputs = outputs_of(task, tiny)
    if HEAD_KIND[task] == "ctc":
        targets = torch.randint(1, outputs[0] + 1, (wavs.shape[0], max(1, frames // 4)), generator=g)
    else:
        targets = torch.stack([torch.randint(0, n, (wavs.shape[0],), generator=g) for n in outputs], -1)
    targets = targets.to(device)
    state = {"micro": 0}

    def step() -> None:
        with torch.no_grad(), _precision(device, mode):
            o = model(wavs, lengths)
            layers = [h.float() for h in o.layers]
            n = o.lengths[0]
        if code.features_round_trip_host:
            layers, n = [h.cpu() for h in layers], n.cpu()
            layers, n = [h.to(device) for h in layers], n.to(device)
        n = n.clamp(min=1, max=layers[0].shape[1])
        with _precision(device, "float32" if code.head_precision in ("float32", "probing_tf32") else mode):
            for p in probes:
                value = loss(task, p, layers, n, targets) / grad_accum
                value.backward()
                if code.loss_read_per_probe:
                    float(value.detach())
        state["micro"] += 1
        if state["micro"] % grad_accum == 0:
            for p, opt in zip(probes, opts):
                torch.nn.utils.clip_grad_norm_(list(p.parameters()), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

    return step


def probe_group_section(device, tiny, steps, models) -> dict:
    out: dict[str, dict] = {}
    for name, model in models.items():
        out[name] = {}
        for task, (items, seconds, k, accum) in (TINY_SHAPES if tiny else SHAPES).items():
            batch = _batch(task, items, seconds, tiny, device)
            out[name][task] = {"k": k, "grad_accum": accum, "items": items}
            for mode in ("float32", "bf16"):
                step = probe_group_step(model, task, batch, (k, accum), mode, device, tiny=tiny)
                case = timed(step, device, steps, 1 if tiny else None)
                case["seconds_per_step"] = case["seconds"]
                out[name][task][mode] = case
    return out


def pooled_section(device, tiny, steps) -> dict:
    from repro.bench.shapes import MODELS, loss, probe, random_batch

    out: dict[str, dict] = {}
    for name in MODEL_NAMES:
        out[name] = {}
        for task, batch in POOLED.items():
            dims = [8] * 3 if tiny else MODELS[name]["dims"]
            p = probe(None, task, dims=dims, tiny=tiny).to(device)
            opt = torch.optim.Adam(p.parameters(), lr=1e-3)
            layers, n, targets = random_batch(None, task, batch, 1, device, pooled=True, dims=dims, tiny=tiny)

            def step() -> None:
                value = loss(task, p, layers, n, targets)
                value.backward()
                float(value.detach())
                torch.nn.utils.clip_grad_norm_(list(p.parameters()), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            out[name][task] = timed(step, device, steps, 1 if tiny else None)
    return out


def ecapa_section(device, tiny, steps, models) -> dict:
    wav = (0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))).to(device)
    lengths = torch.tensor([16000], device=device)
    out = {}
    for name, model in models.items():
        if name.startswith("ecapa"):
            with torch.no_grad():
                out[name] = timed(lambda: model(wav, lengths), device, steps)
    return out


def wavlm_attention_section(device, tiny, steps) -> dict:
    """WavLM's forward at the PR shape on each attention path (`extraction.attention`), float32 and bf16:
    seconds, peak memory, and each path's largest relative layer change from `eager`; a path the device or
    the installed torch cannot run records its error."""
    from repro.models.hf_encoder import ATTENTION_PATHS

    items, seconds, _, _ = (TINY_SHAPES if tiny else SHAPES)["PR"]
    wavs, lengths = _batch("PR", items, seconds, tiny, device)
    out: dict[str, Any] = {}
    reference = None
    for name, make in _models(tiny, ("eager",) + tuple(p for p in ATTENTION_PATHS if p != "eager")).items():
        path = name.partition(":")[2]
        try:
            model = make().to(device)
            with torch.no_grad(), _precision(device, "float32"):
                layers = [h.float() for h in model(wavs, lengths).layers]
            reference = reference or layers
            case: dict[str, Any] = {"layer_change_vs_eager": _relative_change(reference, layers)}
            for mode in _modes(device, False):
                with torch.no_grad(), _precision(device, mode):
                    case[mode] = timed(lambda: model(wavs, lengths), device, steps, 1 if tiny else None)
            out[path] = case
        except Exception as err:  # noqa: BLE001 - a path that cannot run here is a result, recorded
            out[path] = {"error": f"{type(err).__name__}: {err}"[:300]}
        finally:
            model = None
    return out


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(device: str = "cuda", tiny: bool = False, steps: int = DEFAULTS["steps"],
        record_path: Path | str | None = None, wheels: Path | str | None = None) -> dict:
    """Measure on `device` section by section (module doc), rewriting `record_path` after each."""
    import transformers

    from repro.bench.wheels import use
    from repro.errors import ConfigError
    from repro.util.atomic import atomic_write_json

    use(wheels)

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`repro bench gpu` measures a GPU and none is visible (check `nvidia-smi`, and `docker run "
                          "--gpus all`); on the CPU only `--device cpu --tiny` runs, as a check of the code")
    if dev.type != "cuda" and not tiny:
        raise ConfigError("`repro bench gpu --device cpu` runs only with `--tiny` (a check of the code)")
    started = time.perf_counter()
    record: dict[str, Any] = {
        "benchmark": "gpu", "key": CALIBRATION_KEY, "commit": _commit(), "machine": machine_info(),
        "device": str(dev), "tiny": tiny, "steps": steps, "warmup": WARMUP,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "code_paths": CODE_PATHS.__dict__, "sections": []}

    def save(section: str) -> None:
        record["sections"].append(section)
        record["wall_seconds"] = time.perf_counter() - started
        if record_path is not None:
            atomic_write_json(Path(record_path), record)

    models = {name: make().to(dev) for name, make in _models(tiny).items()}
    record["upstream"] = upstream_section(dev, tiny, steps, models)
    save("upstream")
    record["probe_groups"] = probe_group_section(dev, tiny, steps, models)
    save("probe_groups")
    record["pooled_steps"] = pooled_section(dev, tiny, steps)
    save("pooled_steps")
    record["ecapa_overhead"] = ecapa_section(dev, tiny, steps, models)
    save("ecapa_overhead")
    models = None
    record["wavlm_attention"] = wavlm_attention_section(dev, tiny, steps)
    save("wavlm_attention")
    return record


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = [f"GPU calibration {r['key']} on {r['device_name']}" + (" (toy sizes)" if r["tiny"] else "") +
             f", commit {r.get('commit')}, torch {r['torch']}, transformers {r['transformers']}; sections: "
             f"{', '.join(r['sections'])}",
             "upstream forward, audio s per s (median seconds; layer change vs float32, mean relative):"]
    for model, cases in r.get("upstream", {}).items():
        for task, c in cases.items():
            cells = " ".join(f"{m} {c[m]['audio_s_per_s']:.0f} ({c[m]['seconds'] * 1e3:.1f} ms; "
                             f"{c[m]['layer_change']['mean']:.1e})" for m in ("float32", "tf32", "bf16") if m in c)
            lines.append(f"  {model:24s} {task:4s} {cells}")
    lines.append("probe group, seconds per micro-batch (median [p10, p90]):")
    for model, tasks in r.get("probe_groups", {}).items():
        for task, c in tasks.items():
            cells = " ".join(f"{m} {c[m]['seconds'] * 1e3:.1f} ms [{c[m]['p10'] * 1e3:.1f}, {c[m]['p90'] * 1e3:.1f}]"
                             for m in ("float32", "bf16") if m in c)
            lines.append(f"  {model:24s} {task:4s} K={c['k']} {cells}")
    for model, tasks in r.get("pooled_steps", {}).items():
        lines.append(f"  pooled step {model}: " + ", ".join(f"{t} {c['seconds'] * 1e3:.2f} ms"
                                                           for t, c in tasks.items()))
    if r.get("ecapa_overhead"):
        lines.append("ECAPA-TDNN one forward (1 s): " + ", ".join(f"{m} {c['seconds'] * 1e3:.1f} ms"
                                                                 for m, c in r["ecapa_overhead"].items()))
    for path, c in r.get("wavlm_attention", {}).items():
        cells = c.get("error") or " ".join(
            f"{m} {c[m]['seconds'] * 1e3:.1f} ms" + (f" {c[m]['peak_gib']:.2f} GiB" if c[m]["peak_gib"] else "")
            for m in ("float32", "bf16") if m in c) + f"; layers vs eager {c['layer_change_vs_eager']['max']:.1e}"
        lines.append(f"  WavLM attention {path:5s} (PR shape): {cells}")
    return "\n".join(lines)
