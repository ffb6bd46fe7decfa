"""The training log (JSON lines), its plot, and the publication of a trained model.

One line per logged step (`{"step", "epoch", "loss", "lr", ...}`) and one per evaluation
(`{"step", "epoch", "eer"}`). Values are rounded to 6 significant digits so the file is
stable; wall-clock times are kept out of it (they go to `timing.json`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from repro.util.atomic import atomic_directory, atomic_path, atomic_write_json, atomic_write_text
from repro.util.hashing import sha256_file


def _clean(v):
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v


class TrainLog:
    """Appends JSON lines; on resume, lines past the checkpoint's step are dropped first."""

    def __init__(self, path: str | os.PathLike, keep_until_step: int, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if keep_until_step > 0 and self.path.is_file():
            rows = [(l, json.loads(l)) for l in self.path.read_text().splitlines() if l.strip()]
            kept = [l for l, r in rows if r["step"] <= keep_until_step and r.get("note") != "final"]
        atomic_write_text(self.path, "".join(l + "\n" for l in kept))

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}, sort_keys=True) + "\n")

    def rows(self) -> list[dict]:
        return read_log(self.path)


def read_log(path: str | os.PathLike) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def plot_log(rows: list[dict], out: str | os.PathLike, title: str) -> None:
    """Loss per step (left axis) and EER per evaluation (right axis) as a PNG (matplotlib's default
    style, whatever the process set before)."""
    from repro.util.plotstyle import fixed_style

    with fixed_style():
        import matplotlib.pyplot as plt

        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eer" in r]
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss", color="tab:blue")
        if evals:
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in evals], [100 * r["eer"] for r in evals], "o-", color="tab:red", lw=1)
            ax2.set_ylabel("EER (%)", color="tab:red")
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
        plt.close(fig)


def publish_or_fail(run_dir: Path, out: Path, info: dict, problems: list[str], failure: Callable[[str], Exception],
                    write: Callable[[Path], dict], title: str) -> dict:
    """Publish a trained model in `out`, or record why not.

    With `problems`, `run_dir/failure.json` gets `info` and the problems, and `failure(message)` is
    raised (the message names the problems and that file). Otherwise `out` is replaced as a whole:
    `write(folder)` writes the weights and returns entries for `model.json` (at least
    `weights_file`), then the weights' sha256, the training log, its plot and `model.json` follow.
    Returns `info` as written to `model.json`."""
    if problems:
        atomic_write_json(run_dir / "failure.json", {**info, "problems": problems})
        raise failure(f"{'; '.join(problems)} (details: {run_dir / 'failure.json'}")
    (run_dir / "failure.json").unlink(missing_ok=True)
    rows = read_log(run_dir / "train_log.jsonl")
    with atomic_directory(out, replace=True) as tmp:
        info.update(write(tmp))
        info["weights_sha256"] = sha256_file(tmp / info["weights_file"])
        shutil.copyfile(run_dir / "train_log.jsonl", tmp / "train_log.jsonl")
        plot_log(rows, tmp / "loss.png", title)
        atomic_write_json(tmp / "model.json", info)
    return info
