"""Byte-stable `.npz` files: the same arrays always give the same bytes.

`np.savez` writes whatever order and zip metadata the installed numpy chooses.
Here members are written in sorted key order, uncompressed, with a fixed
timestamp (1980-01-01, the zip epoch) and fixed permissions, so a result file's
checksum depends on its content only. `np.load` reads the files as usual.

Each member is serialised first and written whole (`ZipFile.writestr`), so the
zip headers say what its size needs: a member streamed with `force_zip64` (as
`np.savez` does) is marked "version needed 4.5" by Python 3.11.7 and "2.0" by
3.11.2, for the same bytes of data.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Mapping

import numpy as np

from repro.util.atomic import atomic_path

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write `arrays` (name -> array; no object arrays) to an uncompressed `.npz`, deterministically."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, whatever the platform (the permissions below are Unix's)
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """`write_npz` to a temporary sibling, then rename onto `path` (never half-written)."""
    with atomic_path(path) as tmp:
        write_npz(tmp, arrays)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file, loaded into memory (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
