"""ECAPA-TDNN speaker models as upstreams: frame-level blocks at 100 frames/s plus the embedding.

Layers (all `[B, T, C]` at 100 frames/s, T = the front-end's frame count):
`tdnn` (first TDNN block, C), `res2net1..3` (the SE-Res2Blocks, C each) and
`mfa` (the 1x1 convolution over the concatenated block outputs, 3C). They are
read with forward hooks on the library's own modules, so the model's code runs
unchanged. The utterance embedding (for ASV-IDT) is the model's output.

Several operations of an ECAPA-TDNN depend on each utterance's true length (padded
convolutions, means over time, the pooling, the front-end's normalisation). A batch of
mixed lengths runs through the encoder in one call all the same: the front-ends compute
each utterance's frames as its own call would (`batch`), and the encoder runs its
length-aware forward (`repro.models.ecapa_lengths`), so every utterance gets the layers
and embedding it gets alone, up to float rounding.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from repro.errors import ConfigError
from repro.models.ecapa_lengths import batched_forward, relative_lengths
from repro.models.upstream import LayerInfo, ModelUnavailableError, Upstream, UpstreamOutput, length_mask

ECAPA_LAYERS = ("tdnn", "res2net1", "res2net2", "res2net3", "mfa")
FRAME_RATE = 100.0
# How `EcapaUpstream.forward` computes a batch; part of a model's identity (repro.provenance), so stores
# made by an earlier forward are recomputed. 2: one length-aware encoder call per padded batch.
FORWARD_VERSION = 2
HOP = 160  # samples per frame at 16 kHz
WIN = 400


class SpeechbrainFbank(nn.Module):
    """speechbrain's front-end of `spkrec-ecapa-voxceleb`: `Fbank(n_mels)` on float audio in [-1, 1],
    then per-utterance mean normalisation (`InputNormalization(norm_type="sentence", std_norm=False)`).

    Frames: `S // 160 + 1` (centred STFT, 25 ms window, 10 ms hop).
    """

    def __init__(self, n_mels: int = 80):
        super().__init__()
        from speechbrain.lobes.features import Fbank
        from speechbrain.processing.features import InputNormalization

        self.n_mels = n_mels
        self.fbank = Fbank(n_mels=n_mels)
        self.norm = InputNormalization(norm_type="sentence", std_norm=False)

    def num_frames(self, num_samples: Tensor) -> Tensor:
        return torch.div(num_samples, HOP, rounding_mode="floor") + 1

    def forward(self, wav: Tensor) -> Tensor:
        """`wav` `[1, S]` -> features `[1, T, n_mels]`."""
        feats = self.fbank(wav)
        return self.norm(feats, torch.ones(wav.shape[0], device=wav.device))

    def batch(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Zero-padded `wavs [B, S]` with `wav_lengths [B]` -> (features `[B, S // 160 + 1, n_mels]`,
        valid frames `[B]`); each utterance's valid frames are those of `forward` on it alone, the
        rest are zero.

        The centred STFT pads with zeros, so an utterance's frames do not see what follows it in
        the batch; the two steps that look at the whole utterance see its own frames only: the dB
        ceiling (80 dB below its loudest value: frames past its end are silenced first) and the
        mean normalisation (relative lengths).
        """
        fb = self.fbank
        if fb.deltas or fb.context:
            raise ValueError("SpeechbrainFbank.batch covers Fbank without deltas or context")
        from speechbrain.processing.features import spectral_magnitude

        frames = self.num_frames(wav_lengths)
        wavs = wavs.masked_fill(~length_mask(wav_lengths, wavs.shape[1]), 0)
        mag = spectral_magnitude(fb.compute_STFT(wavs))  # [B, T, n_fft / 2 + 1]
        padding = ~length_mask(frames, mag.shape[1])[..., None]
        feats = self.norm(fb.compute_fbanks(mag.masked_fill_(padding, 0)), relative_lengths(frames, mag.shape[1]))
        return feats.masked_fill_(padding, 0), frames


class KaldiFbank(nn.Module):
    """wespeaker-style front-end: audio scaled to the int16 range, Kaldi fbank (25 ms Hamming window,
    10 ms hop, no energy; dither 0 at inference), then mean normalisation over time (CMN).

    Frames: `1 + (S - 400) // 160` (Kaldi's `snip_edges`). `dither > 0` (training) draws from
    torch's global RNG: seed it (see `repro.recipes.speaker.augment.seeded_torch`).
    """

    CPU_SAMPLES_PER_CALL = 1 << 19  # batch(): torchaudio's intermediates for 33 s of audio, a few L2/L3 caches

    def __init__(self, n_mels: int = 80, dither: float = 0.0):
        super().__init__()
        self.n_mels = n_mels
        self.dither = dither

    def num_frames(self, num_samples: Tensor) -> Tensor:
        return (torch.div(num_samples - WIN, HOP, rounding_mode="floor") + 1).clamp(min=0)

    def forward(self, wav: Tensor) -> Tensor:
        """`wav` `[1, S]` -> features `[1, T, n_mels]`."""
        feats = torchaudio.compliance.kaldi.fbank(
            wav * (1 << 15), num_mel_bins=self.n_mels, frame_length=25, frame_shift=10, dither=self.dither,
            sample_frequency=16000, window_type="hamming", use_energy=False,
        )
        return (feats - feats.mean(dim=0, keepdim=True))[None]

    def batch(self, wavs: Tensor, wav_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Zero-padded `wavs [B, S]` with `wav_lengths [B]` -> (features `[B, 1 + (S - 400) // 160,
        n_mels]`, valid frames `[B]`); each utterance's valid frames are those of `forward` on it
        alone, the rest are zero.

        torchaudio over the batch laid end to end, each row padded to a whole number of hops:
        every Kaldi frame is computed from its own 400 samples, so row b's frame t is frame
        `b * hops + t` of the long signal. One call on a GPU; on the CPU one call per
        `CPU_SAMPLES_PER_CALL` samples of whole rows, whose intermediates stay in the cache (the
        number of calls follows from the batch's shape, never from its lengths). CMN over each
        utterance's valid frames.
        """
        b, s = wavs.shape
        hops = -(-s // HOP)
        frames = self.num_frames(wav_lengths)
        rows = wavs.new_zeros(b, hops * HOP)
        rows[:, :s] = wavs.masked_fill(~length_mask(wav_lengths, s), 0) * (1 << 15)
        step = max(1, self.CPU_SAMPLES_PER_CALL // (hops * HOP)) if wavs.device.type == "cpu" else b
        parts = []
        for first in range(0, b, step):
            part = torchaudio.compliance.kaldi.fbank(
                rows[first : first + step].reshape(1, -1), num_mel_bins=self.n_mels, frame_length=25,
                frame_shift=10, dither=self.dither, sample_frequency=16000, window_type="hamming", use_energy=False,
            )  # [rows * hops - 2, n_mels]: the frames straddling two rows are dropped below
            parts.append(F.pad(part, (0, 0, 0, 2)))
        total = max(0, 1 + (s - WIN) // HOP)
        feats = torch.cat(parts).reshape(b, hops, -1)[:, :total]
        padding = ~length_mask(frames, total)[..., None]
        feats = feats.masked_fill_(padding, 0)  # a view of the padded copy
        mean = feats.sum(dim=1, keepdim=True) / frames[:, None, None]  # each utterance's own mean, [B, 1, F]
        return (feats - mean).masked_fill_(padding, 0), frames


FRONTENDS = {"speechbrain": SpeechbrainFbank, "kaldi": KaldiFbank}


class EcapaUpstream(Upstream):
    """An ECAPA-TDNN (or any frame-level speaker encoder) seen through hooks on named blocks.

    Args:
        frontend: waveform `[1, S]` -> features `[1, T, F]`, with `num_frames(samples)`, and
            `batch(wavs [B, S], wav_lengths [B])` -> (features `[B, T, F]`, frames `[B]`) for the
            batched forward.
        encoder: features `[B, T, F]` (and `lengths=None`) -> embedding `[B, 1, E]` or `[B, E]`.
        blocks: layer name -> submodule of `encoder` whose output `[B, C, T]` is that layer.
        name: the model's name in the notice printed when the batched forward does not cover it.

    A batch runs through the encoder in one call when `repro.models.ecapa_lengths` covers the
    encoder's architecture and the front-end has `batch`; otherwise (another pooling, another
    padding, unknown modules) utterances run one at a time, with a one-line notice on stderr.
    Layer widths and the embedding size are read from one forward pass on 1 s of silence.
    """

    def __init__(self, frontend: nn.Module, encoder: nn.Module, blocks: dict[str, nn.Module],
                 name: str | None = None):
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self._names = list(blocks)
        self._captured: dict[str, Tensor] = {}
        for block_name, module in blocks.items():
            module.register_forward_hook(self._hook(block_name))
        batched, gap = batched_forward(encoder)
        if batched is not None and not hasattr(frontend, "batch"):
            batched, gap = None, f"front-end {type(frontend).__name__} (no batch())"
        self._batched = batched  # not a submodule: the state dict (and the weights' fingerprint) stay the same
        if batched is None:
            print(f"{name or type(encoder).__name__}: the batched ECAPA-TDNN forward does not cover {gap}; "
                  "its utterances run one at a time", file=sys.stderr, flush=True)
        self.freeze()
        with torch.no_grad():
            emb = self.encoder(self.frontend(torch.zeros(1, 16000)))
        self.embedding_dim = int(emb.reshape(1, -1).shape[1])
        self._info = [LayerInfo(n, int(self._captured[n].shape[1]), FRAME_RATE) for n in self._names]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self._captured[name] = output
        return hook

    def layer_info(self) -> list[LayerInfo]:
        return list(self._info)

    def frame_lengths(self, wav_lengths: Tensor) -> list[Tensor]:
        n = self.frontend.num_frames(wav_lengths.long())
        return [n] * len(self._info)

    @property
    def batched(self) -> bool:
        """Whether a batch runs through the encoder in one call (else one utterance at a time)."""
        return self._batched is not None

    @torch.no_grad()
    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> UpstreamOutput:
        """Layers `[B, T, C]` (zero past each utterance's frames) and embeddings `[B, E]` of
        zero-padded `wavs [B, S]` with `wav_lengths [B]`, each as the utterance gets alone.

        One front-end call and one encoder call per batch, whatever its lengths; nothing is read
        back to the host. Architectures the batched forward does not cover run one at a time.
        """
        if self._batched is None:
            return self._one_at_a_time(wavs, wav_lengths)
        feats, frames = self.frontend.batch(wavs, wav_lengths.to(wavs.device, torch.long))
        self._captured.clear()
        emb = self._batched(feats, frames).reshape(wavs.shape[0], -1)
        padding = ~length_mask(frames, feats.shape[1])[..., None]
        layers = [self._captured[name].transpose(1, 2).contiguous().masked_fill_(padding, 0)
                  for name in self._names]
        return UpstreamOutput(layers=layers, lengths=[frames] * len(layers), embedding=emb)

    def _one_at_a_time(self, wavs: Tensor, wav_lengths: Tensor) -> UpstreamOutput:
        """Utterances of equal length run through the encoder together, any other one alone.

        A batch of equal-length utterances has no padding: every operation acts on each
        utterance separately (BatchNorm in eval mode), so grouping them is exact. The front-end
        runs per utterance.
        """
        n = [int(v) for v in wav_lengths.tolist()]
        groups: dict[int, list[int]] = {}
        for b, length in enumerate(n):
            groups.setdefault(length, []).append(b)
        per_layer: list[list[Tensor | None]] = [[None] * len(n) for _ in self._names]
        embeddings: list[Tensor | None] = [None] * len(n)
        for length, members in groups.items():
            feats = torch.cat([self.frontend(wavs[b : b + 1, :length]) for b in members])
            self._captured.clear()
            emb = self.encoder(feats).reshape(len(members), -1)
            for j, b in enumerate(members):
                embeddings[b] = emb[j]
                for i, name in enumerate(self._names):
                    per_layer[i][b] = self._captured[name][j].transpose(0, 1)  # [T, C]
        lengths = self.frame_lengths(wav_lengths.cpu())
        layers = [nn.utils.rnn.pad_sequence(xs, batch_first=True) for xs in per_layer]
        return UpstreamOutput(layers=layers, lengths=[t.to(wavs.device) for t in lengths],
                              embedding=torch.stack(embeddings))


def speechbrain_ecapa(arch: dict) -> nn.Module:
    """speechbrain's `ECAPA_TDNN` with architecture `arch` (its constructor's keyword arguments)."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    arch = dict(arch)
    return ECAPA_TDNN(input_size=arch.pop("input_size", 80), **arch)


def wrap_speechbrain_ecapa(model: nn.Module, frontend: str = "speechbrain",
                           layers: tuple[str, ...] = ECAPA_LAYERS, name: str | None = None) -> EcapaUpstream:
    """An `EcapaUpstream` over a speechbrain `ECAPA_TDNN`, exposing `layers` (a subset of ECAPA_LAYERS);
    `name` names the model in notices."""
    unknown = [n for n in layers if n not in ECAPA_LAYERS]
    if unknown:
        raise ConfigError(f"unknown ECAPA layer(s) {unknown}; known: {', '.join(ECAPA_LAYERS)}")
    modules = {"tdnn": model.blocks[0], "res2net1": model.blocks[1], "res2net2": model.blocks[2],
               "res2net3": model.blocks[3], "mfa": model.mfa}
    n_mels = model.blocks[0].conv.conv.in_channels
    return EcapaUpstream(FRONTENDS[frontend](n_mels), model, {n: modules[n] for n in layers}, name)


CHECKPOINT_NAME = "embedding_model.ckpt"


def save_ecapa_checkpoint(folder: str | os.PathLike, model: nn.Module) -> None:
    """Save a state dict as `<folder>/embedding_model.ckpt`, speechbrain's file name and format."""
    from repro.util.atomic import atomic_path

    with atomic_path(Path(folder) / CHECKPOINT_NAME) as tmp:
        torch.save(model.state_dict(), tmp)


def load_ecapa_state(source: str, revision: str | None = None) -> dict[str, Tensor]:
    """The state dict `embedding_model.ckpt` from a local folder or a hub repository at `revision`."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / CHECKPOINT_NAME
        if not path.is_file():
            raise ModelUnavailableError(f"{path}: no ECAPA checkpoint in this folder; point the registry entry's "
                                        "`source:` at a folder holding one")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id=source, filename=CHECKPOINT_NAME, revision=revision))
    from repro.weights import load_weights

    return load_weights(path, "point the registry entry's `source:` at a checkpoint of weights")
