"""ECAPA-TDNN speaker models as upstreams: frame-level blocks at 100 frames/s plus the embedding.

Layers (all `[B, T, C]` at 100 frames/s, T = the front-end's frame count):
`tdnn` (first TDNN block, C), `res2net1..3` (the SE-Res2Blocks, C each) and
`mfa` (the 1x1 convolution over the concatenated block outputs, 3C). They are
read with forward hooks on the library's own modules, so the model's code runs
unchanged. The utterance embedding (for ASV-IDT) is the model's output.

ECAPA-TDNN pads its convolutions by reflection, so zero-padding a batch would
change the last frames of shorter utterances; `EcapaUpstream` therefore runs
each utterance on its own (exact; ECAPA is cheap next to the SSL models).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from repro.errors import ConfigError
from repro.models.upstream import LayerInfo, ModelUnavailableError, Upstream, UpstreamOutput

ECAPA_LAYERS = ("tdnn", "res2net1", "res2net2", "res2net3", "mfa")
FRAME_RATE = 100.0
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


class KaldiFbank(nn.Module):
    """wespeaker-style front-end: audio scaled to the int16 range, Kaldi fbank (25 ms Hamming window,
    10 ms hop, no energy; dither 0 at inference), then mean normalisation over time (CMN).

    Frames: `1 + (S - 400) // 160` (Kaldi's `snip_edges`). `dither > 0` (training) draws from
    torch's global RNG: seed it (see `repro.speaker.augment.seeded_torch`).
    """

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


FRONTENDS = {"speechbrain": SpeechbrainFbank, "kaldi": KaldiFbank}


class EcapaUpstream(Upstream):
    """An ECAPA-TDNN (or any frame-level speaker encoder) seen through hooks on named blocks.

    Args:
        frontend: waveform `[1, S]` -> features `[1, T, F]`, with `num_frames(samples)`.
        encoder: features `[B, T, F]` (and `lengths=None`) -> embedding `[B, 1, E]` or `[B, E]`.
        blocks: layer name -> submodule of `encoder` whose output `[B, C, T]` is that layer.

    Layer widths and the embedding size are read from one forward pass on 1 s of silence.
    """

    def __init__(self, frontend: nn.Module, encoder: nn.Module, blocks: dict[str, nn.Module]):
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self._names = list(blocks)
        self._captured: dict[str, Tensor] = {}
        for name, module in blocks.items():
            module.register_forward_hook(self._hook(name))
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

    @torch.no_grad()
    def forward(self, wavs: Tensor, wav_lengths: Tensor) -> UpstreamOutput:
        """Utterances of equal length run through the encoder together, any other one alone.

        Padding would change an ECAPA-TDNN's output (reflection-padded convolutions, means over
        time in the SE blocks and the pooling), but a batch of equal-length utterances has none:
        every operation acts on each utterance separately (BatchNorm in eval mode), so grouping
        them is exact (equal to one at a time up to float rounding) and batches 1 s keyword clips
        and 8 s training crops. The front-end runs per utterance.
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
                           layers: tuple[str, ...] = ECAPA_LAYERS) -> EcapaUpstream:
    """An `EcapaUpstream` over a speechbrain `ECAPA_TDNN`, exposing `layers` (a subset of ECAPA_LAYERS)."""
    unknown = [n for n in layers if n not in ECAPA_LAYERS]
    if unknown:
        raise ConfigError(f"unknown ECAPA layer(s) {unknown}; known: {', '.join(ECAPA_LAYERS)}")
    modules = {"tdnn": model.blocks[0], "res2net1": model.blocks[1], "res2net2": model.blocks[2],
               "res2net3": model.blocks[3], "mfa": model.mfa}
    n_mels = model.blocks[0].conv.conv.in_channels
    return EcapaUpstream(FRONTENDS[frontend](n_mels), model, {n: modules[n] for n in layers})


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
