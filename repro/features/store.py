"""The feature store: every layer of one model over one list of utterances, on disk.

Layout of a store folder:

    meta.json        key (hash of the configuration), layers (name, dim, frame rate),
                     dtype, embedding size, file sizes, provenance
    index.json       utterance ids in storage order and their frame counts per layer
    layer_XX.bin     raw float16/float32 rows, [total frames of layer XX, dim]
    embedding.bin    [utterances, embedding dim] for models with an utterance embedding

meta.json also records the sha256 of every other file of the store (`checksums`), computed
from the files on disk when the store is completed. Opening a store checks them once per
process (`FeatureStore(path)`; about 1 CPU-second per GB, see docs/FAULTS.md): a file changed
afterwards (bytes flipped, a file copied over another) is refused, naming the file, instead
of giving other metrics under the same settings. A store of the format before checksums is
refused the same way: extracting again remakes it.

While it is being written the folder is `<store>.partial/`, with one line in
`progress.jsonl` per committed batch (written after the data is flushed to
disk). An interrupted build resumes from the last committed batch; the folder
is renamed to its final name only once everything is written, so a store that
exists is complete. A store whose key differs from the requested one is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repro.errors import ReproError
from repro.models.upstream import LayerInfo
from repro.util.atomic import atomic_write_json, atomic_write_text, stable_json_dumps, writable
from repro.util.hashing import sha256_file

FORMAT_VERSION = 2  # 2: meta.json records the sha256 of every file
DTYPES = {"float16": np.float16, "float32": np.float32}


class StoreError(ReproError, RuntimeError):
    """A feature store that is missing, incomplete or inconsistent."""


def partial_dir(store: Path) -> Path:
    return store.with_name(store.name + ".partial")


def layer_file(folder: Path, index: int) -> Path:
    return folder / f"layer_{index:02d}.bin"


@dataclass
class _Committed:
    ids: list[str]
    lengths: list[list[int]]  # per utterance, per layer


class StoreWriter:
    """Appends batches to `<store>.partial/`; `finish()` renames it to `<store>`.

    Opening a writer on an existing partial folder with the same key resumes
    it: data past the last committed batch is truncated away.
    """

    def __init__(self, store: str | os.PathLike, key: str, info: dict, layers: list[LayerInfo],
                 embedding_dim: int | None, dtype: str):
        self.store = Path(store)
        self.folder = partial_dir(self.store)
        self.key = key
        self.info = info
        self.layers = layers
        self.embedding_dim = embedding_dim
        self.dtype = dtype
        self.np_dtype = DTYPES[dtype]
        header = {"key": key, "format": FORMAT_VERSION, "layers": [l.__dict__ for l in layers],
                  "embedding_dim": embedding_dim, "dtype": dtype}
        head_path = self.folder / "partial.json"
        if self.folder.is_dir():
            try:
                same = json.loads(head_path.read_text()) == header
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not head_path.is_file():
            atomic_write_json(head_path, header)
        self.committed = self._read_progress()
        self._truncate_to_committed()
        self._files = [open(layer_file(self.folder, i), "ab") for i in range(len(layers))]
        self._emb = open(self.folder / "embedding.bin", "ab") if embedding_dim else None
        self._progress = open(self.folder / "progress.jsonl", "a")

    def done_ids(self) -> set[str]:
        return set(self.committed.ids)

    def _read_progress(self) -> _Committed:
        ids, lengths, good = [], [], []
        path = self.folder / "progress.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines(keepends=True)
            for line in lines:
                if not line.endswith("\n"):
                    break  # a torn last line: that batch was never committed
                rec = json.loads(line)
                ids += rec["ids"]
                lengths += rec["lengths"]
                good.append(line)
            if len(good) != len(lines):
                atomic_write_text(path, "".join(good))
        return _Committed(ids, lengths)

    def _truncate_to_committed(self) -> None:
        item = np.dtype(self.np_dtype).itemsize
        for i, layer in enumerate(self.layers):
            frames = sum(l[i] for l in self.committed.lengths)
            _truncate(layer_file(self.folder, i), frames * layer.dim * item)
        if self.embedding_dim:
            _truncate(self.folder / "embedding.bin", len(self.committed.ids) * self.embedding_dim * item)

    def append(self, ids: list[str], layers: list[list[np.ndarray]], embeddings: np.ndarray | None) -> None:
        """Commit one batch.

        Args:
            ids: utterance ids of the batch.
            layers: per layer, per utterance, an array `[T, D_l]` (unpadded).
            embeddings: `[len(ids), E]` or None.
        """
        lengths = [[int(layers[l][b].shape[0]) for l in range(len(self.layers))] for b in range(len(ids))]
        rows = [np.concatenate([np.asarray(a, dtype=self.np_dtype) for a in per_utt]) if per_utt
                else np.zeros((0, self.layers[l].dim), self.np_dtype) for l, per_utt in enumerate(layers)]
        self.append_rows(ids, rows, lengths, embeddings)

    def append_rows(self, ids: list[str], rows: list[np.ndarray], lengths: list[list[int]],
                    embeddings: np.ndarray | None) -> None:
        """Commit one batch given as the valid rows of every layer.

        Args:
            ids: utterance ids of the batch.
            rows: per layer, `[sum of the batch's frames of that layer, D_l]`, utterance after utterance.
            lengths: per utterance, its frames in every layer (`[len(ids)][L]`).
            embeddings: `[len(ids), E]` or None.
        """
        with writable(self.folder):  # a full disk: one line naming the store
            self._append_rows(ids, rows, lengths, embeddings)

    def _append_rows(self, ids: list[str], rows: list[np.ndarray], lengths: list[list[int]],
                     embeddings: np.ndarray | None) -> None:
        for l, (f, arr) in enumerate(zip(self._files, rows)):
            expected = sum(n[l] for n in lengths)
            if arr.shape != (expected, self.layers[l].dim):
                raise ValueError(f"layer {l}: rows of shape {arr.shape}, expected ({expected}, {self.layers[l].dim})")
            f.write(memoryview(np.ascontiguousarray(arr, dtype=self.np_dtype)).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        if self._emb is not None:
            self._emb.write(memoryview(np.ascontiguousarray(embeddings, dtype=self.np_dtype)).cast("B"))
            self._emb.flush()
            os.fsync(self._emb.fileno())
        lengths = [[int(n) for n in per_utt] for per_utt in lengths]
        self._progress.write(json.dumps({"ids": ids, "lengths": lengths}) + "\n")
        self._progress.flush()
        os.fsync(self._progress.fileno())
        self.committed.ids += ids
        self.committed.lengths += lengths

    def finish(self, extra_meta: dict | None = None) -> "FeatureStore":
        """Write index and meta, then rename the folder to its final name."""
        self.close()
        with writable(self.folder):
            return self._finish(extra_meta)

    def _finish(self, extra_meta: dict | None) -> "FeatureStore":
        index = {"ids": self.committed.ids, "lengths": self.committed.lengths}
        index_text = stable_json_dumps(index)
        (self.folder / "index.json").write_text(index_text)
        sizes = {p.name: p.stat().st_size for p in sorted(self.folder.glob("*.bin"))}
        checksums = {name: sha256_file(self.folder / name) for name in [*sizes, "index.json"]}
        meta = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "info": self.info,
            "layers": [l.__dict__ for l in self.layers],
            "embedding_dim": self.embedding_dim,
            "dtype": self.dtype,
            "utterances": len(self.committed.ids),
            "frames": [sum(l[i] for l in self.committed.lengths) for i in range(len(self.layers))],
            "file_sizes": sizes,
            "checksums": checksums,
            **(extra_meta or {}),
        }
        atomic_write_json(self.folder / "meta.json", meta)
        (self.folder / "progress.jsonl").unlink()
        (self.folder / "partial.json").unlink()
        if self.store.exists():
            shutil.rmtree(self.store)
        os.replace(self.folder, self.store)
        _VERIFIED.add(_identity(self.store))  # its checksums were just computed from these files
        return FeatureStore(self.store)

    def close(self) -> None:
        for f in self._files:
            f.close()
        if self._emb is not None:
            self._emb.close()
        self._progress.close()


def _truncate(path: Path, size: int) -> None:
    if path.exists():
        if path.stat().st_size < size:
            raise StoreError(f"{path}: shorter than its committed batches; delete {path.parent} and extract again")
        os.truncate(path, size)


# Stores whose files matched their checksums in this process: (folder, meta.json's inode and mtime).
_VERIFIED: set[tuple[str, int, int]] = set()


def _identity(store: Path) -> tuple[str, int, int]:
    st = (store / "meta.json").stat()
    return str(store.resolve()), st.st_ino, st.st_mtime_ns


def verify_checksums(store: str | os.PathLike, meta: dict) -> None:
    """StoreError naming the first file of `store` whose sha256 differs from `meta["checksums"]`.

    Reads every file of the store once (about 1 CPU-second per GB)."""
    store = Path(store)
    for name, want in sorted(meta["checksums"].items()):
        path = store / name
        if not path.is_file():
            raise StoreError(f"{path}: missing from a completed store; extract it again")
        if sha256_file(path) != want:
            raise StoreError(f"{path}: changed after the store was completed (its sha256 differs from the one "
                             "meta.json records); extract it again")


class FeatureStore:
    """Read access to a complete store (memory-mapped; nothing is loaded until used).

    `store.layer(l, utt_id)` -> `[T, D_l]`; `store.utterance(utt_id)` -> list over layers;
    `store.embedding(utt_id)` -> `[E]`.

    Opening checks the sizes of the files, and their sha256 once per process (`verify=False`
    skips that: only for a store this process checks otherwise).
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            hint = " (an interrupted extraction: run it again to resume)" if partial_dir(self.path).exists() else ""
            raise StoreError(f"{self.path}: no complete feature store here{hint}")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            older = " (made before stores recorded checksums)" if self.meta.get("format") == 1 else ""
            raise StoreError(f"{self.path}: store format {self.meta.get('format')}{older}, expected "
                             f"{FORMAT_VERSION}; extract it again")
        self.layers = [LayerInfo(**l) for l in self.meta["layers"]]
        self.dtype = DTYPES[self.meta["dtype"]]
        for name, size in self.meta["file_sizes"].items():
            actual = (self.path / name).stat().st_size if (self.path / name).exists() else -1
            if actual != size:
                raise StoreError(f"{self.path / name}: {actual} bytes, expected {size}; delete {self.path} and extract again")
        if verify:
            identity = _identity(self.path)
            if identity not in _VERIFIED:
                verify_checksums(self.path, self.meta)
                _VERIFIED.add(identity)
        index = json.loads((self.path / "index.json").read_text())
        self.ids: list[str] = index["ids"]
        lengths = np.asarray(index["lengths"], dtype=np.int64).reshape(len(self.ids), len(self.layers))
        self.lengths = lengths
        self.offsets = np.concatenate([np.zeros((1, lengths.shape[1]), np.int64), np.cumsum(lengths, 0)[:-1]], 0)
        self.position = {u: i for i, u in enumerate(self.ids)}
        self._maps: dict[int, np.memmap] = {}
        self._emb: np.memmap | None = None

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _map(self, l: int) -> np.ndarray:
        if l not in self._maps:
            frames = int(self.meta["frames"][l])
            dim = self.layers[l].dim
            if frames == 0:
                self._maps[l] = np.zeros((0, dim), self.dtype)
            else:
                self._maps[l] = np.memmap(layer_file(self.path, l), dtype=self.dtype, mode="r", shape=(frames, dim))
        return self._maps[l]

    def _pos(self, utt_id: str) -> int:
        try:
            return self.position[utt_id]
        except KeyError:
            raise StoreError(f"{self.path}: utterance {utt_id!r} is not in this store") from None

    def num_frames(self, l: int, utt_id: str) -> int:
        """Frames of layer `l` for one utterance."""
        return int(self.lengths[self._pos(utt_id), l])

    def layer(self, l: int, utt_id: str) -> np.ndarray:
        """Features of layer `l` for one utterance, `[T, D_l]` (a read-only view)."""
        i = self._pos(utt_id)
        o, n = int(self.offsets[i, l]), int(self.lengths[i, l])
        return self._map(l)[o : o + n]

    def rows(self, l: int, start: int, stop: int) -> np.ndarray:
        """Layer `l` of the utterances at storage positions `start:stop`, one block `[frames, D_l]`."""
        if start >= stop:
            return self._map(l)[:0]
        first = int(self.offsets[start, l])
        return self._map(l)[first : int(self.offsets[stop - 1, l] + self.lengths[stop - 1, l])]

    def embeddings(self, start: int, stop: int) -> np.ndarray:
        """Embeddings of the utterances at storage positions `start:stop`, `[stop - start, E]`."""
        self.embedding(self.ids[start])  # maps the file (or raises for a model without embedding)
        return self._emb[start:stop]

    @property
    def pooled(self) -> bool:
        """True for a store of per-layer utterance means (one row per utterance and layer)."""
        return bool(self.meta["info"].get("pooled", False))

    def utterance(self, utt_id: str) -> list[np.ndarray]:
        """All layers of one utterance: list of `[T_l, D_l]`."""
        return [self.layer(l, utt_id) for l in range(self.num_layers)]

    def embedding(self, utt_id: str) -> np.ndarray:
        """The model's utterance embedding `[E]`; StoreError when the model has none."""
        dim = self.meta["embedding_dim"]
        if not dim:
            raise StoreError(f"{self.path}: model {self.meta['info'].get('model')} has no utterance embedding")
        if self._emb is None:
            self._emb = np.memmap(self.path / "embedding.bin", dtype=self.dtype, mode="r", shape=(len(self.ids), dim))
        return self._emb[self._pos(utt_id)]

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.position

    def __len__(self) -> int:
        return len(self.ids)

