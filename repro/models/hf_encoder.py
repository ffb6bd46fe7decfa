"""The forward pass of a transformers speech SSL model (WavLM, HuBERT, wav2vec 2.0), run by this project.

transformers' own forward is exact but shaped for a CPU: the padding-exact group norm needs one
call per utterance, the encoder zeroes padded frames by boolean indexing (`hidden[~mask] = 0`,
a `nonzero` the host waits for), HuBERT's mask helper asks `padding_mask.all()`, and WavLM's
attention (`F.multi_head_attention_forward(..., need_weights=True)`) materialises several
`[B x heads, T, T]` tensors per layer. `encoder_hidden_states` runs the same modules, with the
same parameters, without any of that:

    CNN front-end   the first layer's per-channel group norm over each utterance's valid frames,
                    vectorised over the batch (`masked_group_norm_conv`); the other layers as they are
    encoder         padded frames zeroed with `torch.where`, positional convolution, layer norm,
                    then every layer called from here with a key-padding mask built once
    attention       `eager`: transformers' own layers (WavLM: `multi_head_attention_forward`;
                    HuBERT, wav2vec 2.0: their eager attention), the reference;
                    `sdpa`: `F.scaled_dot_product_attention`; for WavLM the gated relative position
                    bias `gate[b, h, i] * bias[h, i, j]` is its additive float mask (one
                    `[B, heads, T, T]` tensor per layer, row stride padded to 16 elements so that the
                    memory-efficient CUDA kernel takes it without a copy), key padding folded in as -inf;
                    `flex`: FlexAttention with a `score_mod` adding the same bias inside the kernel
                    (per-query gate x per-head table of relative-position buckets, nothing `T x T`
                    stored); fused only when compiled, so it is compiled on CUDA and runs torch's
                    reference implementation elsewhere (exact, for checking)

No step reads a tensor's value on the host (counted in tests with `repro.util.device_syncs`).
Layers agree with transformers' forward to float32 rounding (tested: 1e-6 of the largest value
per layer for the front-end and encoder, 1e-5 for `sdpa`/`flex` attention against `eager`).

Importing this module also tells `torch.utils.flop_counter` about the attention operators it does
not count by itself (`register_attention_flops`), so that counted FLOPs include attention on
every path and device.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_PATHS = ("sdpa", "flex", "eager")
# Version of how attention and the front-end are computed here; part of a model's identity, so that
# features made by an earlier path are recomputed (1: transformers' forward, WavLM eager always).
ATTENTION_PATH_VERSION = 2


@functools.lru_cache(maxsize=None)
def _flex_attention():
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return flex_attention


@functools.lru_cache(maxsize=None)
def _compiled_flex_attention():
    return torch.compile(_flex_attention(), dynamic=True)


def masked_group_norm_conv(layer: nn.Module, wavs: Tensor, valid_samples: Tensor) -> Tensor:
    """The first CNN layer (conv -> per-channel GroupNorm -> activation) over each utterance's valid frames.

    `wavs` `[B, 1, S]`, `valid_samples` `[B]` int64 -> `[B, C, T]`. The mean and variance of every
    channel are taken over the frames whose receptive field lies inside the valid samples (what the
    layer computes on the unpadded utterance), all utterances at once; padded frames are zero, and
    no valid frame of a later layer sees them.
    """
    norm = layer.layer_norm
    y = layer.conv(wavs)
    y = y.to(torch.promote_types(y.dtype, torch.float32))  # statistics in float32 also under autocast (as GroupNorm)
    k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
    frames = torch.div(valid_samples - k, s, rounding_mode="floor").add(1).clamp(1, y.shape[-1])
    valid = (torch.arange(y.shape[-1], device=y.device) < frames[:, None])[:, None, :]  # [B, 1, T]
    n = frames.to(y.dtype)[:, None, None]
    mean = torch.where(valid, y, 0.0).sum(-1, keepdim=True) / n
    var = torch.where(valid, y - mean, 0.0).square().sum(-1, keepdim=True) / n
    scale = norm.weight[:, None] / torch.sqrt(var + norm.eps)  # as torch's kernel: y * scale + shift
    out = torch.addcmul(norm.bias[:, None] - scale * mean, y, scale)
    return layer.activation(torch.where(valid, out, 0.0))


def feature_encoder(model: nn.Module, wavs: Tensor, wav_lengths: Tensor) -> Tensor:
    """CNN features `[B, T, C]` of zero-padded `wavs` `[B, S]` with `wav_lengths` `[B]` samples."""
    x = wavs[:, None]
    layers = model.feature_extractor.conv_layers
    if isinstance(getattr(layers[0], "layer_norm", None), nn.GroupNorm):
        x = masked_group_norm_conv(layers[0], x, wav_lengths)
        layers = layers[1:]
    for layer in layers:
        x = layer(x)
    return x.transpose(1, 2)


def encoder_hidden_states(model: nn.Module, wavs: Tensor, wav_lengths: Tensor, attention: str) -> list[Tensor]:
    """Every hidden state (`num_hidden_layers + 1` tensors `[B, T, D]`) of `model` in eval mode.

    Hidden state 0 is the first layer's input, then each layer's output, as transformers'
    `output_hidden_states=True` gives them. `attention`: one of `ATTENTION_PATHS` (module doc).
    """
    if attention not in ATTENTION_PATHS:
        raise ValueError(f"attention {attention!r}; paths: {', '.join(ATTENTION_PATHS)}")
    features = feature_encoder(model, wavs, wav_lengths)
    frames = model._get_feat_extract_output_lengths(wav_lengths)
    valid = torch.arange(features.shape[1], device=features.device)[None, :] < frames[:, None]  # [B, T]
    projected = model.feature_projection(features)
    x = projected[0] if isinstance(projected, tuple) else projected
    encoder = model.encoder
    x = torch.where(valid[..., None], x, 0.0)
    x = x + encoder.pos_conv_embed(x)
    stable = bool(getattr(model.config, "do_stable_layer_norm", False))
    if not stable:
        x = encoder.layer_norm(x)
    states = [x]
    is_wavlm = hasattr(encoder.layers[0].attention, "gru_rel_pos_linear")
    if is_wavlm:
        run = _WavLMLayers(encoder.layers, valid, attention, stable)
    else:
        run = _PlainLayers(encoder.layers, valid, attention, stable)
    for i in range(len(encoder.layers)):
        x = run(i, x)
        states.append(x)
    return states


def _layer_body(layer: nn.Module, x: Tensor, attend, stable: bool) -> Tensor:
    """One encoder layer of transformers' post-norm (`stable` False) or pre-norm layout around `attend`."""
    if not stable:
        x = layer.layer_norm(x + attend(x))
        return layer.final_layer_norm(x + layer.feed_forward(x))
    x = x + attend(layer.layer_norm(x))
    x = x + layer.feed_forward(layer.final_layer_norm(x))
    adapter = getattr(layer, "adapter_layer", None)
    return x + adapter(x) if adapter is not None else x


def _heads(proj: nn.Linear, x: Tensor, heads: int) -> Tensor:
    """`[B, T, D]` -> `[B, heads, T, D / heads]` through `proj`."""
    b, t, _ = x.shape
    return proj(x).view(b, t, heads, -1).transpose(1, 2)


def _merge_heads(attn: nn.Module, out: Tensor) -> Tensor:
    b, h, t, d = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


class _PlainLayers:
    """HuBERT / wav2vec 2.0 layers: plain multi-head attention with a key-padding mask."""

    def __init__(self, layers: nn.ModuleList, valid: Tensor, attention: str, stable: bool):
        self.layers, self.attention, self.stable = layers, attention, stable
        self.keys = valid[:, None, None, :]  # [B, 1, 1, T] True where a key may be attended to
        if attention == "eager":
            # transformers' additive mask, given to its own layers; each layer's config says eager (HFSpeechSSL)
            dtype = layers[0].attention.q_proj.weight.dtype
            self.additive = torch.zeros(self.keys.shape, dtype=dtype, device=valid.device).masked_fill_(
                ~self.keys, torch.finfo(dtype).min)

    def __call__(self, i: int, x: Tensor) -> Tensor:
        layer = self.layers[i]
        if self.attention == "eager":
            return layer(x, attention_mask=self.additive)
        attn = layer.attention

        def attend(h: Tensor) -> Tensor:
            q, k, v = (_heads(p, h, attn.num_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            if self.attention == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keys, scale=attn.scaling)
            else:
                keys = self.keys[:, 0, 0]
                out = _flex(q)(q, k, v, score_mod=lambda s, b, hh, qi, ki: torch.where(keys[b, ki], s, -math.inf),
                               scale=attn.scaling)
            return _merge_heads(attn, out)

        return _layer_body(layer, x, attend, self.stable)


def _flex(q: Tensor):
    """FlexAttention, compiled on CUDA; elsewhere torch's reference implementation (its warning silenced)."""
    if q.device.type == "cuda":
        return _compiled_flex_attention()

    def reference(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return _flex_attention()(*args, **kwargs)

    return reference


class _WavLMLayers:
    """WavLM layers: attention with a gated relative position bias, computed once per forward.

    The bias of layer 0's table `rel_attn_embed` (`[buckets, heads]`) at the bucket of each offset
    `j - i` is shared by every layer; each layer gates it per query and head:
    `gate[b, h, i] = a * (c_h * g - 1) + 2` with `a, g` sigmoids of a linear map of the query's
    head slice (WavLM's `gru_rel_pos_linear`).
    """

    def __init__(self, layers: nn.ModuleList, valid: Tensor, attention: str, stable: bool):
        self.layers, self.attention, self.stable, self.valid = layers, attention, stable, valid
        self.position_bias = None  # eager: transformers' `[B x heads, T, T]`, passed from layer to layer
        if attention == "eager":
            return
        first = layers[0].attention
        t = valid.shape[1]
        self.table = first.rel_attn_embed.weight  # [buckets, heads]
        self.row = -(-t // 16) * 16  # sdpa: mask rows padded to a multiple of 16 (the padding never read)
        offsets = torch.arange(-(t - 1), self.row, device=valid.device)
        self.buckets = first._relative_positions_bucket(offsets).int()  # bucket of offset j - i at j - i + T - 1
        if attention == "sdpa":
            positions = torch.arange(self.row, dtype=torch.int32, device=valid.device)
            pairs = (positions[None, :] - positions[:t, None]).add_(t - 1)  # [T, row]
            self.pair_buckets = torch.index_select(self.buckets, 0, pairs.view(-1))  # [T x row]
            self.heads_table = self.table.t().contiguous()  # [heads, buckets]

    def __call__(self, i: int, x: Tensor) -> Tensor:
        layer = self.layers[i]
        if self.attention == "eager":
            with warnings.catch_warnings():  # torch's note on a boolean key mask beside a float one
                warnings.simplefilter("ignore", UserWarning)
                x, self.position_bias = layer(x, attention_mask=self.valid, position_bias=self.position_bias)
            return x
        return _layer_body(layer, x, functools.partial(self._attend, layer.attention), self.stable)

    def _attend(self, attn: nn.Module, h: Tensor) -> Tensor:
        b, t, _ = h.shape
        heads = attn.num_heads
        gate_in = h.view(b, t, heads, -1).permute(0, 2, 1, 3)
        a, g = torch.sigmoid(attn.gru_rel_pos_linear(gate_in).view(b, heads, t, 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = a * (g * attn.gru_rel_pos_const - 1.0) + 2.0  # [B, heads, T, 1]
        q, k, v = (_heads(p, h, heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(gate, q.dtype), scale=attn.scaling)
        else:
            valid, buckets, table, gate = self.valid, self.buckets, self.table, gate[..., 0]

            def score_mod(score, bb, hh, qi, ki):
                bias = gate[bb, hh, qi] * table[buckets[ki - qi + t - 1], hh]
                return torch.where(valid[bb, ki], score + bias, -math.inf)

            out = _flex(q)(q, k, v, score_mod=score_mod, scale=attn.scaling)
        return _merge_heads(attn, out)

    def _mask(self, gate: Tensor, dtype: torch.dtype) -> Tensor:
        """`[B, heads, T, T]` additive mask: gated bias, -inf on padded keys; rows 16-element aligned.

        The only `T x T` float tensor of the layer: the bias is gathered from the table straight into
        the first utterance's slot, the others' slots are gated from it, then the first is gated in place.
        """
        b, heads, t, _ = gate.shape
        buf = torch.empty(b, heads, t, self.row, dtype=self.table.dtype, device=gate.device)
        torch.index_select(self.heads_table, 1, self.pair_buckets, out=buf[0].view(heads, -1))
        if b > 1:
            torch.mul(gate[1:], buf[0], out=buf[1:])
        buf[0].mul_(gate[0])
        mask = buf[..., :t].masked_fill_(~self.valid[:, None, None, :], -math.inf)
        return mask if mask.dtype == dtype else mask.to(dtype)


def register_attention_flops() -> None:
    """Count attention FLOPs (2 per multiply-add of QK^T and of PV) where torch's counter does not.

    `torch.utils.flop_counter` knows the CUDA attention kernels only: SDPA on a CPU
    (`_scaled_dot_product_flash_attention_for_cpu`, forward and backward) counted nothing, and a
    FlexAttention call could not run under the counter at all. Both now count what SDPA's CUDA
    kernels count. Idempotent.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    for op, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, fc.sdpa_flop),
                        (aten._scaled_dot_product_flash_attention_for_cpu_backward, fc.sdpa_backward_flop)):
        if op not in fc.flop_registry:
            fc.register_flop_formula(op, get_raw=True)(formula)  # `formula` takes tensors already
    try:
        from torch._higher_order_ops.flex_attention import flex_attention as flex_op
    except ImportError:
        return
    if fc._FlopCounterMode in flex_op.python_key_table:
        return

    @flex_op.py_impl(fc._FlopCounterMode)
    def _count_flex(mode, query, key, value, *args, **kwargs):
        out = flex_op(query, key, value, *args, **kwargs)
        flops = fc.sdpa_flop_count(query.shape, key.shape, value.shape)
        for parent in set(mode.counter.mod_tracker.parents):
            mode.counter.flop_counts[parent][flex_op] += flops
        return out


register_attention_flops()
