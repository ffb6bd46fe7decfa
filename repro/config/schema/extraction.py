"""Settings of layer-feature extraction, with the check of the attention path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from repro.config.schema.common import setting
from repro.config.typed import Range


def available_attention_paths() -> tuple[str, ...]:
    """The `extraction.attention` paths the installed torch can run (every transformers speech model runs
    every path, `repro.models.hf_encoder`): `sdpa` needs `F.scaled_dot_product_attention`, `flex` FlexAttention."""
    import importlib.util

    import torch.nn.functional as F

    paths = ["eager"]
    if hasattr(F, "scaled_dot_product_attention"):
        paths.insert(0, "sdpa")
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        paths.insert(-1, "flex")
    return tuple(paths)


class AttentionPaths:
    """The `extraction.attention` check (used as a `Range`): a path the installed torch can run."""

    def check(self, value: Any, source: str, key: str) -> None:
        from repro.errors import ConfigError

        paths = available_attention_paths()
        if value not in paths:
            import torch

            raise ConfigError(f"{source}: key '{key}' is {value!r}, which torch {torch.__version__} cannot run; "
                              f"paths here: {', '.join(paths)}")


@dataclass(frozen=True)
class ExtractionConfig:
    """How layer features are computed and cached."""

    RANGES = {"max_batch_seconds": Range(0, low_open=True), "num_workers": Range(0),
              "attention": AttentionPaths()}

    dtype: Literal["float16", "float32"] = setting(
        "float32", "cache precision; float16 halves disk for the full profile"
    )
    max_batch_seconds: float = setting(
        64.0, "padded audio seconds per batch; bounds memory whatever the utterance lengths"
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "cuda when available")
    num_workers: int = setting(0, "audio-decoding worker processes (0: decode in the main process)")
    autocast: Literal["none", "bf16", "fp16"] = setting(
        "none", "run the frozen upstreams in float32 (exact); bf16/fp16 autocast is faster on GPUs (fp16: GPU only); "
        "bf16 changes layer features by about 1.5% relative (measured), fp16 (10-bit mantissa) by less"
    )
    tf32: bool = setting(
        False, "TF32 tensor-core matmuls and convolutions for the float32 upstream on NVIDIA GPUs (Ampere on): faster, "
        "layers change at the 1e-3 relative level (`repro bench gpu` measures both); off keeps float32 exact")
    attention: Literal["sdpa", "flex", "eager"] = setting(
        "sdpa", "attention of the transformers speech models on CPU and GPU: torch's scaled_dot_product_attention "
        "(WavLM: its gated relative position bias as the additive mask), exact and fused without compiling; `flex` "
        "adds the bias inside a FlexAttention kernel (compiled on CUDA, torch's reference code elsewhere); `eager` "
        "is transformers' own attention, which stores several T x T tensors per layer")
    resample: bool = setting(False, "refuse non-16 kHz audio unless explicitly allowed")
    downmix: bool = setting(False, "refuse multi-channel audio unless explicitly allowed")
