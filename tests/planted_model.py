"""A planted upstream for tests: layer K_SPEAKER alone carries the speaker, layer K_WORD alone the keyword.

It recognises each utterance of the corpus named by $PLANTED_CORPUS by the hash
of its samples and emits, per frame, fixed random code vectors plus noise.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from repro.audio import read_audio
from repro.models.upstream import LayerInfo, Upstream, UpstreamOutput

NUM_LAYERS, DIM, HOP = 6, 16, 320
K_SPEAKER, K_WORD = 1, 4


def _key(wav: np.ndarray) -> str:
    q = np.round(np.asarray(wav, np.float64) * 32768).astype(np.int16)
    return hashlib.sha256(q.tobytes()).hexdigest()


class Planted(Upstream):
    def __init__(self, corpus: Path):
        super().__init__()
        self.labels = {}
        for task in ("KS", "SID"):
            for line in (corpus / "manifests" / f"{task}.jsonl").read_text().splitlines():
                u = json.loads(line)
                wav = read_audio(corpus / u["path"])
                word = u["label"] if task == "KS" else "none"
                self.labels[_key(wav)] = (u["speaker"], word)
        rng = np.random.default_rng(0)
        self.codes = {}
        for spk, word in self.labels.values():
            for name in (spk, word):
                if name not in self.codes:
                    self.codes[name] = rng.standard_normal(DIM).astype(np.float32)

    def layer_info(self):
        return [LayerInfo(f"P{i}", DIM, 50.0) for i in range(NUM_LAYERS)]

    def frame_lengths(self, n):
        return [torch.div(n, HOP, rounding_mode="floor")] * NUM_LAYERS

    def forward(self, wavs, lengths):
        n = self.frame_lengths(lengths)[0]
        out = torch.zeros(NUM_LAYERS, wavs.shape[0], int(n.max()), DIM)
        for b in range(wavs.shape[0]):
            key = _key(wavs[b, : int(lengths[b])].cpu().numpy())
            spk, word = self.labels[key]
            rng = np.random.default_rng(int(key[:8], 16))
            t = int(n[b])
            noise = torch.from_numpy(rng.standard_normal((NUM_LAYERS, t, DIM)).astype(np.float32))
            out[:, b, :t] = noise
            out[K_SPEAKER, b, :t] += torch.from_numpy(self.codes[spk])
            out[K_WORD, b, :t] += torch.from_numpy(self.codes[word])
        return UpstreamOutput(list(out), [n] * NUM_LAYERS)


def build():
    return Planted(Path(os.environ["PLANTED_CORPUS"]))
