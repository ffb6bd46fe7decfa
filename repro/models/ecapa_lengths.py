"""Length-aware ECAPA-TDNN forwards: one call over a zero-padded batch of mixed lengths gives every
utterance the layers and embedding it gets alone.

An ECAPA-TDNN depends on each utterance's true length in four places; over a padded batch each is
made to see only the utterance's own frames:

    convolutions    speechbrain pads by reflection at the sequence's end: a pre-hook on each padded
                    convolution rewrites the `p` frames after each utterance's own end with its
                    reflection (one gather and one scatter of `[B, C, p]`); wespeaker pads with
                    zeros: the inputs of its padded convolutions are re-zeroed past each end
                    (`repro.models.wespeaker_ecapa`);
    squeeze-excite  means over each utterance's frames only;
    pooling         attentive statistics over each utterance's frames only (masked softmax, means,
                    standard deviations);
    front-end       each utterance's frames and mean normalisation computed as its own would be
                    (`SpeechbrainFbank.batch`, `KaldiFbank.batch` in `repro.models.ecapa`).

speechbrain's squeeze-excitation blocks and pooling take relative lengths and mask themselves;
everything else about a frame is local (BatchNorm in eval mode, 1x1 convolutions, activations),
so a frame past an utterance's end never reaches a valid frame. Nothing here reads a tensor's
value on the host: the lengths stay on the device and the number of kernels per batch does not
depend on how many distinct lengths it holds.

Architectures outside what this covers (another pooling, another padding, unknown modules) get
no batched forward; `batched_forward` says why, and the caller runs utterances one at a time.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

# encoder(features [B, T, F], frames [B] int64) -> embedding [B, 1, E] or [B, E]
BatchedForward = Callable[[Tensor, Tensor], Tensor]


def relative_lengths(frames: Tensor, total: int) -> Tensor:
    """speechbrain's relative lengths `[B]` (float32) for `frames` valid frames out of `total`.

    speechbrain builds its masks as `arange(total) < relative * total`; `(frames - 1/2) / total`
    selects exactly `frames` positions whatever the float rounding of the product (`frames /
    total` can round to one frame too many).
    """
    return (frames.to(torch.float32) - 0.5) / total


class SpeechbrainEcapaBatched:
    """speechbrain's `ECAPA_TDNN` over a padded batch, each utterance reflected at its own end.

    Construction adds a forward pre-hook to the inner `nn.Conv1d` of every reflection-padded
    convolution; the hook acts only inside a call of this object, so the model's own forward
    (training, one utterance) is untouched. A call runs the model's forward once with relative
    lengths, which speechbrain's squeeze-excitation blocks and pooling use as masks. An utterance
    of at most `pad` frames (under 50 ms), which speechbrain's reflection refuses alone, raises
    no error here and gets values of no meaning.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._frames: Tensor | None = None
        for wrapper in model.modules():
            pad = _reflect_pad(wrapper)
            if pad:
                wrapper.conv.register_forward_pre_hook(self._reflect_at_each_end(pad))

    def _reflect_at_each_end(self, pad: int):
        def hook(_conv, inputs):
            if self._frames is None:
                return None
            x = inputs[0]  # [B, C, T + 2 pad], reflected at the batch's end by speechbrain's Conv1d
            b, c, _ = x.shape
            k = torch.arange(pad, device=x.device)
            ends = self._frames[:, None] + pad  # each utterance's end, in padded positions
            dst = (ends + k).unsqueeze(1).expand(b, c, pad)
            src = (ends - 2 - k).clamp(min=0).unsqueeze(1).expand(b, c, pad)
            values = x.gather(2, src)
            if x.requires_grad:
                return (x.scatter(2, dst, values),)
            x.scatter_(2, dst, values)  # the padded copy is speechbrain's own temporary
            return None
        return hook

    def __call__(self, feats: Tensor, frames: Tensor) -> Tensor:
        """`feats [B, T, F]`, `frames [B]` -> the model's embedding `[B, 1, E]`."""
        self._frames = frames
        try:
            return self.model(feats, lengths=relative_lengths(frames, feats.shape[1]))
        finally:
            self._frames = None


def _reflect_pad(module: nn.Module) -> int:
    """Frames a speechbrain `Conv1d` pads on each side (0 for any other module)."""
    from speechbrain.nnet.CNN import Conv1d

    if not isinstance(module, Conv1d):
        return 0
    return module.dilation * (module.kernel_size - 1) // 2


def _speechbrain_gaps(model: nn.Module) -> list[str]:
    """What in a speechbrain `ECAPA_TDNN` the batched forward does not cover (empty: all covered)."""
    from speechbrain.lobes.models import ECAPA_TDNN as sb
    from speechbrain.nnet.CNN import Conv1d
    from speechbrain.nnet.normalization import BatchNorm1d

    known = (sb.ECAPA_TDNN, sb.TDNNBlock, sb.Res2NetBlock, sb.SEBlock, sb.SERes2NetBlock,
             sb.AttentiveStatisticsPooling, sb.Conv1d, sb.BatchNorm1d, Conv1d, BatchNorm1d,
             nn.Conv1d, nn.BatchNorm1d, nn.ModuleList, nn.Dropout, nn.Dropout1d, nn.Identity,
             *ELEMENTWISE)
    gaps = []
    if type(model) is not sb.ECAPA_TDNN:
        gaps.append(f"class {type(model).__name__}")
    for name, m in model.named_modules():
        if type(m) not in known:
            gaps.append(f"{name or 'model'} ({type(m).__name__})")
        elif isinstance(m, Conv1d):
            if m.padding != "same" or m.padding_mode != "reflect" or m.stride != 1 or m.unsqueeze:
                gaps.append(f"{name} (padding {m.padding!r}, {m.padding_mode!r}, stride {m.stride})")
            elif m.dilation * (m.kernel_size - 1) % 2:
                gaps.append(f"{name} (kernel {m.kernel_size} x dilation {m.dilation} pads unevenly)")
    return gaps


def _wespeaker_gaps(model: nn.Module) -> list[str]:
    """What in a `WespeakerEcapa` the batched forward does not cover (empty: all covered)."""
    from repro.models import wespeaker_ecapa as ws

    known = (ws.WespeakerEcapa, ws.ConvReluBn, ws.Res2ConvReluBn, ws.SqueezeExcite, ws.SERes2Block,
             ws.AttentiveStatsPool, nn.Sequential, nn.ModuleList, nn.Conv1d, nn.BatchNorm1d, nn.Linear,
             nn.Identity)
    return [f"{name or 'model'} ({type(m).__name__})" for name, m in model.named_modules() if type(m) not in known]


# Activations acting on each value alone: frames past an utterance's end cannot reach its own.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def batched_forward(encoder: nn.Module) -> tuple[BatchedForward | None, str]:
    """The length-aware forward of `encoder`, or None and why not.

    Covered: speechbrain's `ECAPA_TDNN` (reflection-padded `same` convolutions, its SE blocks and
    attentive statistics pooling, elementwise activations) and `WespeakerEcapa`.
    """
    from repro.models.wespeaker_ecapa import WespeakerEcapa

    if isinstance(encoder, WespeakerEcapa):
        gaps = _wespeaker_gaps(encoder)
        return (None, "; ".join(gaps)) if gaps else (lambda feats, frames: encoder(feats, frames), "")
    try:
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    except ImportError:  # pragma: no cover - speechbrain is a dependency
        ECAPA_TDNN = ()
    if isinstance(encoder, ECAPA_TDNN):
        gaps = _speechbrain_gaps(encoder)
        return (None, "; ".join(gaps)) if gaps else (SpeechbrainEcapaBatched(encoder), "")
    return None, f"class {type(encoder).__name__} (neither speechbrain's ECAPA_TDNN nor WespeakerEcapa)"
