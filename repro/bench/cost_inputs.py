"""The inputs of the cost model (`repro.bench.costmodel`): the code-path facts of today's code, the
sourced hardware numbers and assumptions, and the table's terms with their sums.

What today's code does is a table of code-path facts, `CODE_PATHS` (version `CODE_PATHS_VERSION`); each
term reads the facts it depends on, so a change to the code that flips a fact (say, features kept on the
device) recomputes the figure with `dataclasses.replace`-style overrides (`facts(**changes)`), and the
change's effect is the difference of two tables. The facts and the code each describes:

    features_round_trip_host  `False`: `repro.probing.sources.UpstreamFrames.batch` leaves every layer on the
                              device, from the upstream's output to the heads, losses and metric inputs; `True`
                              (the engine before it): every layer went to the host with `.cpu()` (float32) and
                              back, in training and in `evaluate`: bytes = padded frames x sum of layer widths
                              x 4, once each way, over PCIe.
    loss_read_per_probe       `False`: loss and gradient-norm sums stay on the device, read once per evaluation
                              (`repro.probing.trainer`); `True`: each probe's loss read with `float(loss)` every
                              micro-batch, a host-device synchronisation per probe per micro-batch.
    ecapa_forward             `repro.models.ecapa.EcapaUpstream.forward`: `batched`, one length-aware front-end
                              and encoder call per padded batch (`repro.models.ecapa_lengths`); before it,
                              `per_utterance_unless_equal_lengths` (equal lengths together, any other alone).
    wavlm_attention           WavLM's attention as `repro.models.hf_encoder` runs it (`extraction.attention`):
                              `sdpa_float_mask`, the gated position bias gathered into one (B, heads, T, T)
                              float mask per layer, written once and read once by the fused kernel
                              (`wavlm_sdpa_mask_passes`); `flex`, the bias added inside the kernel (nothing
                              T x T stored); `unfused_eager_TxT`, transformers' own
                              `F.multi_head_attention_forward(need_weights=True)`, which materialises several
                              (B x heads, T, T) tensors (`wavlm_tt_passes`).
    hubert_attention          HuBERT's attention: `sdpa` (fused; no T x T traffic) or `eager`.
    attention_flops_counted   `True`: `repro.models.hf_encoder` registers the CPU SDPA kernels with
                              `torch.utils.flop_counter` (and FlexAttention runs under it), so the counted FLOPs
                              include attention on every path and are rescaled to each length; `False`: the
                              counter missed SDPA attention, added from the shapes (4 T^2 D per layer and item).
    pooled_heads              `fused_step`: every learning rate and every fold of a pooled task (KS, IC, ER)
                              trains as one step on stacked parameters (`repro.probing.fused`), the step's
                              micro-batches read, forwarded and differentiated as one batch of rows: its
                              operators counted once per optimiser step whatever the number of probes and of
                              accumulated micro-batches (`repro.bench.shapes.fused_step_ops`), priced per
                              operator on the host (launch-bound), no host read inside a step; `fused_group`
                              (before): the same, with a forward and backward per micro-batch and their
                              gradients added; `one_step_per_probe` (before that): each
                              learning rate (and fold) trained its own small head step by step on `[B, 1, D]`
                              layer means, a few hundred tiny kernels per probe and micro-batch and a loss
                              read each.
    pr_batches                `length_window_padded`: the micro-batches of `probing.length_window` steps per
                              accumulation slot are forwarded together, sorted by length into forwards of
                              batch_size items (`repro.probing.length_window`); their padded audio over the
                              valid audio is counted by `repro bench padding` (padding.json, per profile) on
                              the pinned lengths. Before it, `random_permutation_padded`:
                              `repro.probing.sources.micro_batch` draws a random permutation and each
                              micro-batch is padded to the longest of its batch_size items.
    eval_batches              `manifest_order_padded`: `trainer.evaluate` takes consecutive utterances of the
                              split in manifest order, padded to the longest (order taken as independent of
                              length).
    head_precision            `probing_tf32`: the heads run outside autocast, in float32, with TF32 as
                              `probing.tf32` says (switched around their work only, apart from
                              `extraction.tf32`): at the assumed TF32 rate where a profile sets it, the float32
                              rate otherwise (full and fast: off); `float32` (before): TF32 followed the
                              process-wide `extraction.tf32` (off), the float32 rate in both columns.
    upstream_grouped          `True`: `probing.max_group: all`, one upstream forward per micro-batch for every
                              learning rate of a task (`False`: one run per learning rate).
    terms_overlap             `True`: no host read inside a step, and the next micro-batch is read and copied
                              ahead of the current one's work, so copies hide behind the same pass's compute and
                              count only beyond it; `False` (before): the `.cpu()` of the features and the loss
                              reads synchronised every micro-batch, so device work, copies and host work added
                              up. Audio decoding, in worker threads, overlaps in either case and counts only
                              where slower.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CODE_PATHS_VERSION = 6


@dataclass(frozen=True)
class CodePaths:
    """What today's code does, fact by fact (module doc)."""

    features_round_trip_host: bool = False
    loss_read_per_probe: bool = False
    ecapa_forward: str = "batched"
    wavlm_attention: str = "sdpa_float_mask"
    hubert_attention: str = "sdpa"
    attention_flops_counted: bool = True
    pooled_heads: str = "fused_step"
    pr_batches: str = "length_window_padded"
    eval_batches: str = "manifest_order_padded"
    head_precision: str = "probing_tf32"
    upstream_grouped: bool = True
    terms_overlap: bool = True


CODE_PATHS = CodePaths()


def facts(**changes) -> CodePaths:
    """Today's facts with `changes` (e.g. `facts(features_round_trip_host=False)`)."""
    return dataclasses.replace(CODE_PATHS, **changes)


@dataclass(frozen=True)
class Input:
    """One number a term reads: its value, unit, kind (counted / measured / assumed) and source."""

    value: float
    unit: str
    kind: str
    source: str


KINDS = ("counted", "measured", "assumed")

# Sourced hardware numbers (NVIDIA H100 Tensor Core GPU datasheet, SXM5 column, nvidia.com/en-us/data-center/h100:
# FP32 67 TFLOPS; BF16 Tensor Core 1,979 TFLOPS with sparsity, 989 dense; GPU memory bandwidth 3.35 TB/s;
# PCIe Gen5 128 GB/s, both directions together) and the utilisations assumed of them.
H100 = {
    "fp32_peak_tflops": Input(67.0, "TFLOP/s", "assumed", "NVIDIA H100 datasheet (SXM5): FP32 67 TFLOPS"),
    "bf16_peak_tflops": Input(989.0, "TFLOP/s", "assumed",
                              "NVIDIA H100 datasheet (SXM5): BF16 Tensor Core 1,979 TFLOPS with sparsity, half dense"),
    "hbm_tb_s": Input(3.35, "TB/s", "assumed", "NVIDIA H100 datasheet (SXM5): GPU memory bandwidth 3.35 TB/s"),
    "pcie_gb_s": Input(64.0, "GB/s each way", "assumed",
                       "NVIDIA H100 datasheet: PCIe Gen5 128 GB/s (both directions; 64 each way; pageable "
                       "`.cpu()` copies reach less, so this is a lower bound)"),
}
ASSUMED = {
    "fp32_tflops": Input(30.0, "TFLOP/s", "assumed",
                         "45% of the datasheet's 67 FP32 TFLOP/s, sustained by a Base-size model (TF32 off)"),
    "autocast_tflops": Input(200.0, "TFLOP/s", "assumed",
                             "20% of the datasheet's 989 dense BF16 TFLOP/s, sustained under bf16 autocast"),
    "ecapa_overhead_ms": Input(2.0, "ms per forward", "assumed",
                               "about 150 kernel launches of one ECAPA-TDNN forward (one per padded batch)"),
    "host_op_us": Input(10.0, "us per operator", "assumed",
                        "eager PyTorch dispatch and CUDA launch of one small operator on a server CPU"),
    "sync_us": Input(20.0, "us per sync", "assumed", "a host-device synchronisation drains the queue: the "
                     "device idles until the host launches the next kernels"),
    "tf32_tflops": Input(200.0, "TFLOP/s", "assumed",
                         "40% of the datasheet's 494 dense TF32 TFLOP/s (989 with sparsity), small heads' matmuls"),
    "fp64_tflops": Input(50.0, "TFLOP/s", "assumed", "float64 tensor cores: 67 TFLOPS peak (H100 datasheet)"),
    "decode_threads": Input(8.0, "threads", "assumed", "the full profile's extraction.num_workers"),
    "voxceleb_short_share": Input(0.6, "fraction", "assumed",
                                  "VoxCeleb1 utterances are 4 s to 145 s, mean 8.2 s (Nagrani et al. 2017); the "
                                  "share under 8 s (not cropped, so run alone by ECAPA-TDNN) is not pinned"),
    "wavlm_sdpa_mask_passes": Input(2.0, "passes", "counted",
                                    "repro.models.hf_encoder's SDPA path: the bias mask written once (gathered "
                                    "from the bucket table) and read once by the fused kernel"),
    "wavlm_tt_passes": Input(8.0, "passes", "counted",
                             "transformers' WavLM attention: position bias write, scores write (baddbmm), mask "
                             "read, softmax read + write, weights read by bmm, head-average read + write"),
}
@dataclass
class Term:
    """One cost: `hours` of `what` for (model, task, precision), from `inputs` (names of `Input`s)."""

    model: str
    task: str
    precision: str
    what: str
    hours: float
    inputs: list[str] = field(default_factory=list)
    kind: str = "counted"
    source: str = ""


@dataclass(frozen=True)
class Pass:
    """One pass of a probe group over a split: `batches` forwards of `items` items padded to `pad` seconds
    (mean `mean` seconds), and how the padding was found."""

    split: str
    batches: float
    items: int
    pad: float
    mean: float
    how: str

    @property
    def training(self) -> bool:
        return self.split == "train"

    @property
    def label(self) -> str:
        return "train" if self.training else f"eval ({self.split})"


def weakest_kind(inputs: dict[str, Input], names: list[str]) -> str:
    """The weakest kind among the inputs `names` (assumed < measured < counted; none: counted)."""
    kinds = {inputs[n].kind for n in names}
    return next(k for k in reversed(KINDS) if k in kinds) if kinds else "counted"


def totals(terms: list[Term], precision: str) -> float:
    return sum(t.hours for t in terms if t.precision == precision)


def largest(terms: list[Term], precision: str, n: int = 3) -> list[tuple[str, float]]:
    """The `n` largest kinds of cost (a term's `what` without its split), summed over models and tasks."""
    sums: dict[str, float] = {}
    for t in terms:
        if t.precision == precision:
            what = t.what.split(",")[0]
            sums[what] = sums.get(what, 0.0) + t.hours
    return sorted(sums.items(), key=lambda kv: -kv[1])[:n]
