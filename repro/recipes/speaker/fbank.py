"""Kaldi fbank for a batch of equal-length training crops, with per-crop seeded dither.

`torchaudio.compliance.kaldi.fbank` takes one waveform at a time and spends most of its
time on per-call overhead; DINO needs six crops per utterance per step. This computes
the same features (wespeaker's settings: int16-scaled input, 25 ms Hamming window,
10 ms shift, DC removal, pre-emphasis 0.97, 512-point power spectrum, torchaudio's
Kaldi mel banks, log with float epsilon floor, `snip_edges`), then CMN, for `[B, S]` at
once. Inference uses `repro.models.ecapa.KaldiFbank` (torchaudio itself); the two agree
to float rounding (tested).

Dither: like Kaldi, Gaussian noise of standard deviation `dither` (int16 units) is added
to every sample of every frame; here it comes from a `torch.Generator` per crop, so it is
reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchaudio.compliance import kaldi

WINDOW = 400
SHIFT = 160
NFFT = 512
PREEMPHASIS = 0.97


class BatchedKaldiFbank:
    """`__call__(wavs [B, S] in [-1, 1], generators=None)` -> CMN'd log-mel fbank `[B, T, n_mels]`,
    `T = 1 + (S - 400) // 160`."""

    def __init__(self, n_mels: int = 80, dither: float = 0.0):
        self.n_mels = n_mels
        self.dither = dither
        self.window = torch.hamming_window(WINDOW, periodic=False, alpha=0.54, beta=0.46)
        banks, _ = kaldi.get_mel_banks(n_mels, NFFT, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
        self.banks = torch.nn.functional.pad(banks, (0, 1)).T.contiguous()  # [257, n_mels]
        self.eps = torch.tensor(torch.finfo(torch.float32).eps)

    def __call__(self, wavs: Tensor, generators: list[torch.Generator] | None = None) -> Tensor:
        frames = (wavs.float() * (1 << 15)).unfold(1, WINDOW, SHIFT)  # [B, T, 400]
        if self.dither:
            if generators is None or len(generators) != frames.shape[0]:
                raise ValueError("dither needs one torch.Generator per waveform")
            noise = torch.stack([torch.randn(frames.shape[1:], generator=g) for g in generators])
            frames = frames + noise * self.dither
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - PREEMPHASIS * previous) * self.window
        power = torch.fft.rfft(frames, n=NFFT).abs().pow(2)
        mel = torch.maximum(power @ self.banks, self.eps).log()
        return mel - mel.mean(dim=1, keepdim=True)
