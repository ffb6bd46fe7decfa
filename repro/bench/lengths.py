"""Utterance-length distributions of the real corpora, and the padding a batch of them costs.

`artifacts/bench/librispeech_lengths.json` holds, per LibriSpeech split the profiles use
(train-clean-100 for PR training, dev-clean for PR dev, test-clean for PR test and CKA), a histogram
of utterance lengths in 0.1 s bins and a few quantiles. It is derived by `derive` from the
per-utterance sample counts in s3prl's `len_for_bucket` CSVs (columns `,file_path,length,label`;
`length` in samples at 16 kHz), as copied into a public repository pinned below by commit and
sha256; only the histogram is committed. Rebuild it with

    python -m repro.bench.lengths DIR_WITH_THE_CSVS artifacts/bench/librispeech_lengths.json

The padding arithmetic (`padded_mean`): a batch of `n` items drawn at random (a random permutation,
as `repro.probing.sources.micro_batch` draws them) is padded to its longest item, so its audio is
`n x E[max of n lengths]`; with lengths independent draws from the histogram,
`P(max <= x) = F(x)^n`, and E[max] = sum over bins of the bin centre x (F(x)^n - F(x - dx)^n).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

LENGTHS_FILE = Path(__file__).resolve().parents[2] / "artifacts" / "bench" / "librispeech_lengths.json"
SOURCE = {
    "repository": "https://github.com/sungnyun/ARMHuBERT",
    "commit": "e687addf71d826c202d73b61f6fc177a240c5027",
    "folder": "data/len_for_bucket",
    "origin": "s3prl's LibriSpeech len_for_bucket CSVs (s3prl/s3prl, data/len_for_bucket), copied unchanged",
    "sha256": {
        "train-clean-100.csv": "5e69cf721cb228bd184ec9a5837152e864e32ac07d3671c77afd66d90e8de729",
        "dev-clean.csv": "132cfd4128248936432d49c22ec1871c2170aca96d929a0208635b4536d1a03e",
        "test-clean.csv": "0f44cdf2e842bad453b1d1b683ec0d2d01a8296f17ea33cc2a26fcdaad30ec2d",
    },
}
BIN_SECONDS = 0.1
SAMPLE_RATE = 16000


def derive(csv_dir: Path) -> dict:
    """The committed record from the pinned CSVs in `csv_dir` (each checked against its sha256)."""
    splits = {}
    for name, digest in SOURCE["sha256"].items():
        raw = (Path(csv_dir) / name).read_bytes()
        got = hashlib.sha256(raw).hexdigest()
        if got != digest:
            raise SystemExit(f"{csv_dir / name}: sha256 {got[:12]}... is not the pinned {digest[:12]}...; "
                             f"take the file from {SOURCE['repository']} at commit {SOURCE['commit']}")
        seconds = np.array([int(row["length"]) / SAMPLE_RATE
                            for row in csv.DictReader(raw.decode().splitlines())])
        bins = np.floor(seconds / BIN_SECONDS).astype(int)
        counts = np.bincount(bins)
        splits[name.removesuffix(".csv")] = {
            "utterances": int(len(seconds)), "mean_seconds": float(seconds.mean()),
            "total_hours": float(seconds.sum() / 3600),
            "quantiles_seconds": {str(q): float(np.quantile(seconds, q)) for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0)},
            "histogram": {"bin_seconds": BIN_SECONDS, "first_bin": int(bins.min()),
                          "counts": counts[bins.min():].tolist()},
        }
    return {"what": "LibriSpeech utterance lengths (seconds), a histogram per split", "source": SOURCE,
            "splits": splits}


def load(path: Path = LENGTHS_FILE) -> dict:
    return json.loads(Path(path).read_text())


def _histogram(split: dict) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in seconds, probabilities)."""
    h = split["histogram"]
    counts = np.asarray(h["counts"], float)
    centres = (h["first_bin"] + np.arange(len(counts)) + 0.5) * h["bin_seconds"]
    return centres, counts / counts.sum()


def padded_mean(split: dict, n: int) -> float:
    """Expected seconds per item of a random batch of `n` padded to its longest item (module doc)."""
    centres, p = _histogram(split)
    cdf = np.cumsum(p)
    below = np.concatenate([[0.0], cdf[:-1]])
    return float(np.sum(centres * (cdf ** n - below ** n)))


def mean_seconds(split: dict) -> float:
    centres, p = _histogram(split)
    return float(np.sum(centres * p))


if __name__ == "__main__":
    record = derive(Path(sys.argv[1]))
    from repro.util.atomic import atomic_write_text

    atomic_write_text(Path(sys.argv[2]), json.dumps(record, indent=1) + "\n")
