"""GPU calibration (`repro bench gpu`, `make bench-gpu`): the rates the projection otherwise assumes.

On one GPU, in a few minutes, with random weights of the real shapes (WavLM Base+, HuBERT Base, the
C=1024 speechbrain ECAPA-TDNN, the C=512 wespeaker ECAPA-TDNN):

    upstream throughput, audio seconds per second, at the full profile's batch shapes: PR's
        LibriSpeech-length batches (16 x 12.7 s), SID's and ASV's 8 s crops (8 and 10 per
        micro-batch); in float32, float32 with TF32 matmuls (`extraction.tf32`) and bf16 autocast
        (`extraction.autocast`), and HuBERT with eager attention against SDPA (`extraction.attention`);
    how far each setting moves the layers: the relative Frobenius difference to float32 (eager for
        the attention), per layer, mean and max;
    the fixed cost of one ECAPA-TDNN forward (a 1 s utterance);
    probe-group step rates of PR, SID and ASV on the upstream with K = 1 and K = 4 learning rates;
    peak GPU memory of each case.

It writes `artifacts/bench/gpu.json`; the projection then uses the measured rates. With
`--device cpu --tiny` the same code runs on the CPU at toy sizes (the tests do this); the record
says so, and the projection ignores records that were not made on a GPU.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch

from repro.bench.common import machine_info

BATCHES = {"PR": (16, 12.7), "SID": (8, 8.0), "ASV": (10, 8.0)}  # items per micro-batch, seconds per item
TINY_BATCHES = {"PR": (2, 1.0), "SID": (2, 0.8), "ASV": (2, 0.8)}
DEFAULTS = {"repeats": 3, "steps": 4}


def _models(tiny: bool) -> dict[str, Any]:
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

    def hf(cls, config_cls, attention):
        def make():
            torch.manual_seed(0)
            config = config_cls(**small)
            config._attn_implementation = attention
            return HFSpeechSSL(cls(config), False).eval()
        return make

    return {
        "wavlm-base-plus": hf(transformers.WavLMModel, transformers.WavLMConfig, "eager"),
        "hubert-base": hf(transformers.HubertModel, transformers.HubertConfig, "sdpa"),
        "hubert-base (eager attention)": hf(transformers.HubertModel, transformers.HubertConfig, "eager"),
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


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` calls after one warm-up, in seconds."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@torch.no_grad()
def _layers(model, wavs: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return [h.float() for h in model(wavs, lengths).layers]


def _relative_change(ref: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float]:
    rel = [float((a - b).norm() / a.norm().clamp(min=1e-12)) for a, b in zip(ref, other)]
    return {"mean": float(np.mean(rel)), "max": float(np.max(rel))}


def upstream_cases(device: torch.device, tiny: bool, repeats: int) -> dict[str, dict]:
    """Throughput and layer changes of every model, batch shape and precision."""
    out: dict[str, dict] = {}
    hubert_layers: dict[str, dict] = {}  # float32 layers of HuBERT with SDPA and with eager attention
    g = torch.Generator().manual_seed(0)
    for name, make in _models(tiny).items():
        model = make().to(device)
        out[name] = {}
        for task, (items, seconds) in (TINY_BATCHES if tiny else BATCHES).items():
            n = int(seconds * 16000)
            lengths = torch.full((items,), n, dtype=torch.long, device=device)
            case: dict[str, Any] = {"items": items, "seconds_per_item": seconds}
            g.manual_seed(list(BATCHES).index(task))  # the same audio for every model
            wavs = (0.1 * torch.randn(items, n, generator=g)).to(device)
            with _precision(device, "float32"):
                reference = _layers(model, wavs, lengths)
            if name.startswith("hubert-base"):
                hubert_layers.setdefault(task, {})[name] = [h.cpu() for h in reference]
            for mode in ("float32", "tf32", "bf16") if device.type == "cuda" else ("float32", "bf16"):
                _peak_reset(device)
                with _precision(device, mode):
                    s = _timed(lambda: model(wavs, lengths), device, repeats)
                    changed = _layers(model, wavs, lengths)
                case[mode] = {"audio_s_per_s": items * seconds / s, "seconds": s, "peak_gib": _peak(device),
                              "layer_change": _relative_change(reference, changed)}
            out[name][task] = case
        del model
    hubert, eager = out.get("hubert-base"), out.get("hubert-base (eager attention)")
    if hubert and eager:  # SDPA against eager attention, same weights
        for task in hubert:
            hubert[task]["sdpa_vs_eager_speedup"] = (hubert[task]["float32"]["audio_s_per_s"]
                                                     / eager[task]["float32"]["audio_s_per_s"])
            pair = hubert_layers[task]
            hubert[task]["sdpa_vs_eager_layer_change"] = _relative_change(pair["hubert-base (eager attention)"],
                                                                          pair["hubert-base"])
    return out


def ecapa_overhead(device: torch.device, tiny: bool, repeats: int) -> dict[str, float]:
    """Seconds of one forward of each ECAPA-TDNN on a 1 s utterance (its fixed cost per call)."""
    out = {}
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(1))
    for name, make in _models(tiny).items():
        if not name.startswith("ecapa"):
            continue
        model = make().to(device)
        lengths = torch.tensor([16000], device=device)
        out[name] = _timed(lambda: model(wav.to(device), lengths), device, repeats)
    return out


def probe_groups(device: torch.device, tiny: bool, steps: int) -> dict[str, dict]:
    """Probe-group step rates on the upstream (HuBERT shape), K = 1 and K = 4, PR, SID and ASV."""
    import tempfile
    from pathlib import Path

    from repro.bench.probe import _train_seconds
    from repro.probing.sources import UpstreamFrames
    from repro.probing.tasks import make_task

    model = _models(tiny)["hubert-base"]().to(device)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = Path(tmp)
        for task_name, (items, seconds) in (TINY_BATCHES if tiny else BATCHES).items():
            utts = _synthetic_utterances(root, task_name, items * 2, seconds)
            task = make_task(task_name, {"train": utts})
            source = UpstreamFrames(model, root, utts, list(range(model.num_layers)), device=device)
            rates = {}
            for k in (1, 4):
                lrs = [10.0 ** -(2 + i) for i in range(k)]
                _peak_reset(device)
                s = _train_seconds(task, source, utts, steps, items, device, root, f"{task_name}-{k}", lrs)
                rates[k] = {"steps_per_s": steps / s, "peak_gib": _peak(device)}
            out[task_name] = {"k1": rates[1], "k4": rates[4],
                              "k4_vs_k1_time": rates[1]["steps_per_s"] / rates[4]["steps_per_s"]}
    return out


def _synthetic_utterances(root, task: str, count: int, seconds: float) -> list:
    """`count` noise utterances of `seconds` with labels for `task`, written under `root`."""
    from repro.audio import write_wav
    from repro.data.manifest import Utterance

    rng = np.random.default_rng(0)
    utts = []
    for i in range(count):
        n = int(seconds * 16000)
        path = f"{task}/{i:03d}.wav"
        write_wav(root / path, (0.1 * rng.standard_normal(n)).astype(np.float32))
        label = {"PR": ["a", "b", "c"], "SID": f"spk{i % 2}", "ASV": f"spk{i % 2}"}[task]
        utts.append(Utterance(f"{task}-{i}", "train", path, n, seconds, f"spk{i % 2}", label, "0" * 64))
    return utts


def run(device: str = "cuda", tiny: bool = False, repeats: int = DEFAULTS["repeats"],
        steps: int = DEFAULTS["steps"]) -> dict:
    """Measure on `device` (see module doc); `tiny` uses toy sizes (for tests on the CPU)."""
    from repro.errors import ConfigError

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`repro bench gpu` measures a GPU and none is visible (check `nvidia-smi`, and `docker run "
                          "--gpus all`); on the CPU only `--device cpu --tiny` runs, as a check of the code")
    started = time.perf_counter()
    record = {"benchmark": "gpu", "machine": machine_info(), "device": str(dev), "tiny": tiny,
              "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "upstream": upstream_cases(dev, tiny, repeats), "ecapa_overhead_seconds": ecapa_overhead(dev, tiny, repeats),
              "probe_groups": probe_groups(dev, tiny, steps)}
    record["wall_seconds"] = time.perf_counter() - started
    return record


def rates_for_projection(record: dict, flops: dict[str, float]) -> dict[str, float]:
    """The projection's rates from a GPU record: sustained TFLOP/s in float32 and bf16 (the mean over
    the speech SSL models and batch shapes of FLOPs x audio s per s), the ECAPA-TDNN overhead."""
    out = {}
    for mode, key in (("float32", "fp32_tflops"), ("bf16", "autocast_tflops")):
        rates = [flops[m] * case[mode]["audio_s_per_s"] / 1e12 for m in ("wavlm-base-plus", "hubert-base")
                 for case in record["upstream"][m].values()]
        out[key] = float(np.mean(rates))
    out["ecapa_overhead_ms"] = 1e3 * float(np.mean(list(record["ecapa_overhead_seconds"].values())))
    return out


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    lines = [f"GPU calibration on {r['device_name']}" + (" (toy sizes)" if r["tiny"] else "") +
             ": audio s per s (layer change vs float32, mean relative)",
             f"{'model':30s} {'batch':>5s} " + " ".join(f"{m:>20s}" for m in ("float32", "tf32", "bf16"))]
    for model, cases in r["upstream"].items():
        for task, c in cases.items():
            cells = " ".join(f"{c[m]['audio_s_per_s']:>9.0f} ({c[m]['layer_change']['mean']:.1e})" if m in c
                             else f"{'-':>20s}" for m in ("float32", "tf32", "bf16"))
            lines.append(f"{model:30s} {task:>5s} {cells}")
    lines.append("ECAPA-TDNN one forward (1 s): " + ", ".join(f"{m} {1e3 * s:.1f} ms"
                                                             for m, s in r["ecapa_overhead_seconds"].items()))
    for task, g in r["probe_groups"].items():
        lines.append(f"probe group {task}: K=1 {g['k1']['steps_per_s']:.2f} steps/s, K=4 {g['k4']['steps_per_s']:.2f} "
                     f"steps/s (K=4 takes {g['k4_vs_k1_time']:.2f}x the time of K=1)")
    return "\n".join(lines)
