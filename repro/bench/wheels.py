"""The GPU calibration's environment: the stock set it assumes, and a folder of pure-Python wheels for
the rest.

`STOCK` is what CUDA PyTorch images commonly hold (torch >= 2.9, torchaudio, transformers >= 5, numpy,
scipy, click, pyyaml, tqdm, and what those require). `repro bench gpu` needs beyond it only `WHEELS`,
pure-Python packages at the versions of requirements.lock (speechbrain's ECAPA-TDNN for the supervised
model, and what importing it needs). Collect them once, on a machine with network:

    python -m repro.bench.wheels WHEELS        # pip download, no dependencies, pure-Python wheels only

and pass the folder along: `repro bench gpu --wheels WHEELS` unpacks each wheel (a zip archive) once into
`WHEELS/site/` and puts that folder on `sys.path`, so nothing is installed into the environment
(speechbrain lists its own folders at import time, so it cannot be imported from the zip itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

STOCK = ("torch", "torchaudio", "transformers", "numpy", "scipy", "click", "pyyaml", "tqdm")
WHEELS = ("speechbrain", "hyperpyyaml", "ruamel.yaml", "joblib")  # pure Python, imported by speechbrain
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
COLLECT = "python -m repro.bench.wheels WHEELS"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock: Path = LOCK) -> dict[str, str]:
    """`{package: version}` of `WHEELS` from requirements.lock."""
    found = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^ \\;]+)", line)
        if m and _normal(m.group(1)) in {_normal(w) for w in WHEELS}:
            found[_normal(m.group(1))] = m.group(2)
    return found


def collect(folder: Path) -> list[Path]:
    """Download the pinned pure-Python wheels of `WHEELS` into `folder` (pip, no dependencies)."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={version}" for name, version in pinned().items()]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--platform", "any", "-d", str(folder), *specs], check=True)
    return sorted(folder.glob("*.whl"))


def use(folder: Path | str | None) -> list[str]:
    """Put the wheels of `folder` on `sys.path`; a `WHEELS` package that is neither importable nor in the
    folder raises one line naming it and the command that collects the wheels."""
    from importlib.util import find_spec

    from repro.errors import ConfigError

    import zipfile

    added = []
    if folder is not None:
        site = Path(folder) / "site"
        for wheel in sorted(Path(folder).glob("*.whl")):
            marker = site / f".{wheel.name}.unpacked"
            if not marker.is_file():
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(site)
                marker.touch()
            added.append(wheel.name)
        if added and str(site) not in sys.path:
            sys.path.insert(0, str(site))
    for name in WHEELS:
        module = name.split(".")[0] if name != "ruamel.yaml" else "ruamel"
        if find_spec(module) is None:
            where = f"in {folder}" if folder is not None else "(no --wheels folder given)"
            raise ConfigError(f"package {name} is not importable and no wheel of it is {where}: collect the wheels "
                              f"with `{COLLECT}` on a machine with network, then `repro bench gpu --wheels WHEELS`")
    return added


if __name__ == "__main__":
    for path in collect(Path(sys.argv[1] if len(sys.argv) > 1 else "wheels")):
        print(path)
