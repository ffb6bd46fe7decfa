"""Outputs are readable by the users the umask lets read them: the atomic writers and the feature store give
files and folders the modes `open` and `mkdir` would (0644/0755 under umask 022), not tempfile's 0600/0700.
The command-line case is `tests/test_faults_fetch.py::test_fetched_outputs_have_the_modes_of_the_umask`."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from repro.features.store import FeatureStore, StoreWriter
from repro.models.upstream import LayerInfo
from repro.util.atomic import atomic_directory, atomic_write_json, make_temp_dir, process_umask
from repro.util.npz import atomic_write_npz


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root):
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in sorted(root.rglob("*"))}


def test_the_umask_is_read_without_changing_it(umask):
    assert process_umask() == umask
    assert os.umask(umask) == umask  # still in place


def test_atomic_writers_and_feature_stores_follow_the_umask(tmp_path, umask):
    atomic_write_json(tmp_path / "out/result.json", {"a": 1})
    atomic_write_npz(tmp_path / "out/arrays.npz", {"x": np.zeros(3)})
    with atomic_directory(tmp_path / "out/folder") as tmp:
        (tmp / "inner.txt").write_text("x")
    make_temp_dir(".staging-", tmp_path / "out")
    layers = [LayerInfo("l0", 4, 50.0), LayerInfo("l1", 4, 50.0)]
    writer = StoreWriter(tmp_path / "out/store", "key", {"name": "tiny"}, layers, 3, "float32")
    writer.append(["u1", "u2"], [[np.ones((5, 4)), np.ones((2, 4))]] * 2, np.zeros((2, 3)))
    store = writer.finish()
    assert isinstance(store, FeatureStore) and len(store) == 2
    modes = _modes(tmp_path / "out")
    files = {k for k in modes if (tmp_path / "out" / k).is_file()}
    assert {"result.json", "arrays.npz", "folder/inner.txt", "store/meta.json", "store/index.json",
            "store/layer_00.bin", "store/embedding.bin"} <= files
    assert {k: oct(v) for k, v in modes.items()} == {
        k: oct((0o666 if k in files else 0o777) & ~umask) for k in modes}
