"""CPU cost of the weight-digest checks (`repro.weights`), as stated in docs/FAULTS.md.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/weight_digest_cost.py [--mib 512]

Prints CPU seconds (`time.process_time`, best of 5) per GB for the first check of a file in the
page cache, the cost of a repeated check in the same process, and a checkpoint's load with and
without its check (a state dict of float32 tensors of 1 Mi elements each, `--mib` MiB in all).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

from repro import weights


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    mib = parser.parse_args().mib
    folder = tempfile.mkdtemp()
    try:
        path = os.path.join(folder, "w.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(mib << 20))
        gb = os.path.getsize(path) / 1e9
        weights.sha256_file(path)  # into the page cache

        def first():
            weights._DIGESTS.clear()
            weights.digest(path)

        first_s = best(first)
        weights.digest(path)
        again_s = best(lambda: weights.digest(path), 1000)
        print(f"sha256 of {gb:.3f} GB: {first_s:.3f} CPU-s ({first_s / gb:.2f} CPU-s/GB); "
              f"a repeated check in the process: {again_s * 1e6:.1f} us")

        ckpt = os.path.join(folder, "c.pt")
        weights.save_checkpoint({f"w{i}": torch.randn(1 << 20) for i in range(mib // 4)}, ckpt)
        gb = os.path.getsize(ckpt) / 1e9
        load_s = best(lambda: weights.load_weights(ckpt, ""))

        def checked():
            weights._DIGESTS.clear()
            weights.load_checkpoint(ckpt, "")

        checked_s = best(checked)
        print(f"checkpoint of {gb:.3f} GB: torch.load weights-only {load_s:.3f} CPU-s, with its digest check "
              f"{checked_s:.3f} CPU-s (+{(checked_s - load_s) / gb:.2f} CPU-s/GB)")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
