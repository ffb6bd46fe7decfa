"""Weight files: their sha256 recorded when written, checked once per process when read, loaded weights-only.

Every weight file the artifact writes or imports has its digest recorded:

- a checkpoint (`torch.save`: probe and training resume checkpoints) in `<file>.sha256`, a JSON
  record `{"file", "sha256", "previous"}` written before the checkpoint is renamed into place.
  `previous` is the digest of the checkpoint it replaces: a run killed between the two renames
  leaves the previous, intact checkpoint, which still matches;
- a generated model folder (random tiny models) in `<folder>/digests.json`, the sha256 of every
  file of the folder, written inside the folder before it is renamed into place;
- a trained model in its `model.json` (`weights_sha256`, `repro.trainlog.publish_or_fail`);
- an imported checkpoint (a local file or folder, a hub download) in `<models_dir>/<name>/imported.json`
  on first use (`check_imported`).

`torch.load` is only ever called here, with `weights_only=True`: a file holding Python objects
besides tensors and plain containers is refused, never unpickled (unpickling can run code).
Every refusal is a `WeightsError`: one line naming the file and what to do.

A file's digest is computed once per process (by path, inode, size and modification time):
about 0.6 CPU-second per GB (docs/FAULTS.md, `scripts/weight_digest_cost.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from repro.errors import ReproError
from repro.util.atomic import atomic_path, atomic_write_json
from repro.util.hashing import sha256_file

DIGEST_SUFFIX = ".sha256"
FOLDER_DIGESTS = "digests.json"
IMPORT_RECORD = "imported.json"  # in a model's folder: the sha256 of each imported weight file


class WeightsError(ReproError):
    """A weight file that is damaged, unreadable, or holds more than weights: the message names it and the fix."""


# Files whose sha256 was computed in this process: (real path, inode, size, mtime) -> sha256.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns


def digest(path: str | os.PathLike) -> str:
    """Hex sha256 of the file `path`, computed once per process while the file stays the same."""
    path = Path(path)
    key = _identity(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def check_digest(path: str | os.PathLike, expected: str | set[str], record: str | os.PathLike, fix: str,
                 recorded: str = "when it was written") -> None:
    """WeightsError unless the sha256 of `path` is `expected` (or one of them), as `record` records
    (`recorded`: when it was recorded). `fix` says what to do (it ends the message)."""
    path = Path(path)
    wanted = {expected} if isinstance(expected, str) else set(expected)
    if not path.is_file():
        raise WeightsError(f"{path}: missing (its digest is recorded in {record}); {fix}")
    if digest(path) not in wanted:
        raise WeightsError(f"{path}: damaged: its sha256 differs from the one recorded {recorded} ({record}); {fix}")


# --------------------------------------------------------------------------- loading


def load_weights(path: str | os.PathLike, fix: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; WeightsError (naming `path`, ending with `fix`) when
    the file holds Python objects besides weights or cannot be read."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise WeightsError(f"{path}: holds Python objects besides weights, which are never loaded (loading them "
                               f"could run code); {fix}") from None
        raise WeightsError(f"{path}: unreadable ({_first_line(err)}); {fix}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for cut or damaged files
        raise WeightsError(f"{path}: unreadable ({_first_line(err)}); {fix}") from None


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------- checkpoints


def digest_record(path: str | os.PathLike) -> Path:
    """Where the digest of checkpoint `path` is recorded: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def save_checkpoint(obj: Any, path: str | os.PathLike) -> str:
    """`torch.save(obj)` to `path` atomically, its sha256 recorded in `<path>.sha256` first; returns the digest."""
    import torch

    path = Path(path)
    record = digest_record(path)
    previous = None
    if path.is_file() and record.is_file():
        try:
            previous = json.loads(record.read_text()).get("sha256")
        except ValueError:
            previous = None
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        written = digest(tmp)
        atomic_write_json(record, {"file": path.name, "sha256": written, "previous": previous})
    _DIGESTS[_identity(path)] = written  # renamed: the same inode, size and time
    return written


def load_checkpoint(path: str | os.PathLike, fix: str, map_location: Any = "cpu") -> Any:
    """The checkpoint `path`, once its sha256 matches `<path>.sha256`, loaded weights-only.

    WeightsError (naming the file, ending with `fix`) when the record is missing, the digest
    differs, or the file is unreadable or holds more than weights."""
    path = Path(path)
    record = digest_record(path)
    try:
        recorded = json.loads(record.read_text())
        wanted = {recorded["sha256"], recorded.get("previous")} - {None}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no digest recorded beside it ({record.name} is missing: not written by this "
                           f"version of the program); {fix}") from None
    except (ValueError, KeyError, TypeError):
        raise WeightsError(f"{record}: unreadable digest record of {path.name}; {fix}") from None
    check_digest(path, wanted, record, fix)
    return load_weights(path, fix, map_location)


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint and its digest record (absent ones are fine)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    digest_record(path).unlink(missing_ok=True)


# --------------------------------------------------------------------------- folders of weights


def record_folder(folder: str | os.PathLike) -> dict[str, str]:
    """Record the sha256 of every file of `folder` (recursively) in `<folder>/digests.json`; returns them."""
    folder = Path(folder)
    digests = {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*"))
               if p.is_file() and p.name != FOLDER_DIGESTS}
    atomic_write_json(folder / FOLDER_DIGESTS, digests)
    return digests


def check_folder(folder: str | os.PathLike, fix: str) -> None:
    """WeightsError naming the first file of `folder` whose sha256 differs from `<folder>/digests.json`
    (or that is missing), once per process while the files stay the same."""
    folder = Path(folder)
    record = folder / FOLDER_DIGESTS
    try:
        digests = json.loads(record.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{record}: missing, so the model's files cannot be checked; {fix}") from None
    except ValueError:
        raise WeightsError(f"{record}: unreadable; {fix}") from None
    for name, want in sorted(digests.items()):
        check_digest(folder / name, want, record, fix)


def check_imported(path: str | os.PathLike, record: str | os.PathLike, fix: str) -> None:
    """Record the sha256 of an imported weight file `path` in `record` on first use; later, WeightsError
    unless the file still matches it. `record` maps each imported file's real path to its sha256 (a
    file at another path, as a new hub revision's, is a new import)."""
    path, record = Path(path), Path(record)
    where = os.path.realpath(path)
    try:
        known = json.loads(record.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    files = known.get("files", {}) if isinstance(known, dict) else {}
    if where in files:
        check_digest(path, files[where], record,
                     f"restore it, or delete {record} to import the file as it is now; {fix}", "on its first import")
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"files": {**files, where: digest(path)}, "note": "sha256 recorded on first import"})
