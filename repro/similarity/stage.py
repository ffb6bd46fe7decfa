"""The CKA stage: two models' feature stores -> `results/<profile>/cka/<A>__<B>.{npz,json}`.

For a pair of models (A may equal B) it reads `Workspace.store_dir(model,
cka.task, cka.split)` of both, pairs their items (frames aligned across frame
rates, or mean-pooled utterances; `repro.similarity.align`), optionally keeps a
seeded subset of frames, streams everything through one `CKAAccumulator` per
bootstrap block and writes:

    <A>__<B>.npz   cka [L_A, L_B] (the configured estimator), cka_biased, cka_debiased,
                   ci_low / ci_high (with bootstrap), layers_a, layers_b (names)
    <A>__<B>.json  models, layers, corpus/task/split, items, level, alignment, seed,
                   subsampling, bootstrap, the provenance stamp, the matrix

Both files are written atomically, the JSON last. A pair whose JSON carries the stamp a run
would write now (`repro.provenance`: the CKA settings key and both store keys) is skipped.
The same inputs give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from repro.config import to_dict
from repro.errors import ReproError
from repro.features.pooling import frames_mean
from repro.features.stage import open_store
from repro.features.store import FeatureStore
from repro.provenance import Stamp, cka_key, is_complete
from repro.runtime import exchange, resolve_device, writer_lock
from repro.similarity.align import aligned_length, align_frames, mean_pool, rate_factors
from repro.similarity.bootstrap import BlockBootstrap
from repro.similarity.cka import cka_from_terms
from repro.similarity.sampling import assign_blocks, subsample_frames
from repro.similarity.shards import stream_sharded
from repro.util.atomic import atomic_write_json, check_writable
from repro.util.hashing import config_hash
from repro.util.npz import atomic_write_npz
from repro.util.progress import progress_bar
from repro.workspace import Workspace

RESULT_FORMAT = 1


class CKAError(ReproError, ValueError):
    """Inputs of the CKA stage that cannot be used (missing or mismatched feature stores, settings)."""


def default_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Every model with itself, then every unordered pair of different models, in profile order."""
    return [(m, m) for m in models] + [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]


def result_paths(ws: Workspace, a: str, b: str) -> tuple[Path, Path]:
    """(`.npz`, `.json`) of the pair under `results/<profile>/cka/`."""
    return ws.cka_file(a, b, "npz"), ws.cka_file(a, b, "json")


def _check_same_items(sa: FeatureStore, sb: FeatureStore) -> list[str]:
    ia, ib = set(sa.ids), set(sb.ids)
    if ia != ib:
        only_a, only_b = sorted(ia - ib), sorted(ib - ia)
        raise CKAError(f"{sa.path} and {sb.path} do not hold the same utterances ({len(only_a)} only in the first, "
                       f"e.g. {only_a[:3]}; {len(only_b)} only in the second, e.g. {only_b[:3]}); "
                       "extract both models over the same corpus again")
    if not ia:
        raise CKAError(f"{sa.path} holds no utterances")
    return sorted(ia)


def check_settings(cfg) -> None:
    """Refuse `cka` settings outside their range, naming the key."""
    problems = []
    if cfg.batch_frames < 1:
        problems.append(f"cka.batch_frames = {cfg.batch_frames} must be at least 1")
    if cfg.max_frames < 0:
        problems.append(f"cka.max_frames = {cfg.max_frames} must be 0 (all frames) or positive")
    if cfg.bootstrap.blocks < 0 or cfg.bootstrap.blocks == 1:
        problems.append(f"cka.bootstrap.blocks = {cfg.bootstrap.blocks} must be 0 (no interval) or at least 2")
    if cfg.bootstrap.blocks and cfg.bootstrap.resamples < 1:
        problems.append(f"cka.bootstrap.resamples = {cfg.bootstrap.resamples} must be at least 1")
    if not 0 < cfg.bootstrap.confidence < 1:
        problems.append(f"cka.bootstrap.confidence = {cfg.bootstrap.confidence} must be between 0 and 1")
    if problems:
        raise CKAError("; ".join(problems))


def _up_to_date(npz: Path, js: Path, expected: Stamp) -> bool:
    import json

    if not (npz.is_file() and js.is_file()):
        return False
    try:
        return is_complete(json.loads(js.read_text()).get("provenance"), expected)
    except (OSError, ValueError):
        return False


def _finite_or_none(m: np.ndarray) -> list:
    return [[None if not math.isfinite(v) else round(float(v), 6) for v in row] for row in m]


class _PairReader:
    """The paired items of one utterance for two stores (or one store with itself), per the CKA settings."""

    def __init__(self, sa: FeatureStore, sb: FeatureStore, a: str, b: str, ids: list[str], cfg):
        self.sa, self.sb, self.sym, self.cfg = sa, sb, sa is sb, cfg
        self.row = {u: i for i, u in enumerate(ids)}
        self.alignment = self.subsampling = self.selection = None
        if cfg.level == "utterance":
            self.counts = [1] * len(ids)
            return
        layers = list(sa.layers) + ([] if self.sym else list(sb.layers))
        labels = [f"{a}:{l.name}" for l in sa.layers] + ([] if self.sym else [f"{b}:{l.name}" for l in sb.layers])
        common, factors = rate_factors([l.frame_rate for l in layers], labels)
        La = len(sa.layers)
        self.fa, self.fb = factors[:La], (factors[:La] if self.sym else factors[La:])
        self.counts = [aligned_length(self._lengths(u), factors) for u in ids]
        self.selection = subsample_frames(self.counts, cfg.max_frames, cfg.seed)
        self.alignment = {"alignment": cfg.alignment, "frame_rate": common, "factors": {"a": self.fa, "b": self.fb}}
        self.subsampling = {"max_frames": cfg.max_frames, "available": int(sum(self.counts)), "seed": cfg.seed,
                            "applied": self.selection is not None}

    def _lengths(self, u: str) -> list[int]:
        own = [int(t) for t in self.sa.lengths[self.sa.position[u]]]
        return own if self.sym else own + [int(t) for t in self.sb.lengths[self.sb.position[u]]]

    def count(self, u: str) -> int:
        """Items of `u` before subsampling."""
        return self.counts[self.row[u]]

    def items(self, u: str, select: bool = True) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Per layer `[items, d_l]` of model A and of model B (None within one model)."""
        la = self.sa.utterance(u)
        lb = None if self.sym else self.sb.utterance(u)
        if self.cfg.level == "utterance":
            return mean_pool(la), (None if self.sym else mean_pool(lb))
        k = self.row[u]
        xa = align_frames(la, self.fa, self.counts[k], self.cfg.alignment)
        xb = None if self.sym else align_frames(lb, self.fb, self.counts[k], self.cfg.alignment)
        if select and self.selection is not None:
            xa = [x[self.selection[k]] for x in xa]
            xb = None if xb is None else [x[self.selection[k]] for x in xb]
        return xa, xb


def _stream(boot: BlockBootstrap, reader: _PairReader, order: list[str], block_of: dict[str, int],
            batch_frames: int, desc: str, progress: bool) -> None:
    """Feed every utterance's items to its block, `batch_frames` items per update (blocks in order)."""
    La = len(reader.sa.layers)
    buf_a: list[list[np.ndarray]] = [[] for _ in range(La)]
    buf_b: list[list[np.ndarray]] = [[] for _ in reader.sb.layers]
    state = {"block": None, "rows": 0}

    def flush() -> None:
        if state["rows"]:
            boot.update(state["block"], [np.concatenate(p) for p in buf_a],
                        None if reader.sym else [np.concatenate(p) for p in buf_b])
        for p in buf_a + buf_b:
            p.clear()
        state["rows"] = 0

    for u in progress_bar(order, desc=desc, unit="utt", disable=not progress, leave=False):
        xa, xb = reader.items(u)
        if state["block"] != block_of[u] or state["rows"] >= batch_frames:
            flush()
            state["block"] = block_of[u]
        for p, x in zip(buf_a, xa):
            p.append(x)
        for p, x in zip(buf_b, xb or []):
            p.append(x)
        state["rows"] += xa[0].shape[0]
    flush()


@dataclass(frozen=True)
class CKAOutcome:
    """One pair's result of the CKA stage, and whether it was made now or was up to date."""

    a: str
    b: str
    layers: tuple[int, int]  # layers of model a, of model b
    items: int  # items the matrix was computed over
    level: str  # frame | utterance
    npz: Path
    skipped: bool
    meta: dict = field(default_factory=dict, repr=False)  # the result JSON's content


def _outcome(meta: dict, npz: Path, skipped: bool) -> CKAOutcome:
    a, b = meta["models"]
    return CKAOutcome(a, b, (len(meta["layers"]["a"]), len(meta["layers"]["b"])), meta["items"], meta["level"], npz,
                      skipped, meta)


@dataclass(frozen=True)
class _Pair:
    """What the computation of one pair works on: the workspace, the models, the settings, the stores
    (`sb is sa` within one model), their common utterances and the stamp the result carries."""

    ws: Workspace
    a: str
    b: str
    cfg: Any  # the profile's `cka` section
    sa: FeatureStore
    sb: FeatureStore
    ids: list[str]
    expected: Stamp

    @property
    def sym(self) -> bool:
        return self.a == self.b

    @property
    def paths(self) -> tuple[Path, Path]:
        return result_paths(self.ws, self.a, self.b)


def compute_pair(ws: Workspace, a: str, b: str, *, force: bool = False, progress: bool = True,
                 env=None) -> CKAOutcome:
    """Compute (or reuse) the CKA matrix of models `a` and `b`.

    With `env` (torchrun, several ranks) the utterances are sharded across the ranks and the
    statistics merged by addition on rank 0, which writes the result (`repro.similarity.shards`).
    The pair's result has one writer at a time (`repro.runtime.writer_lock`).
    """
    cfg = ws.profile.cka
    check_settings(cfg)
    sa = open_store(ws, a, cfg.task, cfg.split)
    sb = sa if a == b else open_store(ws, b, cfg.task, cfg.split)
    pair = _Pair(ws, a, b, cfg, sa, sb, _check_same_items(sa, sb),
                 Stamp(cka_key(ws.profile, a, b), {"a": sa.key, "b": sb.key}))
    with writer_lock(env if env is not None and env.distributed else None, ws.lock_file(pair.paths[1]),
                     f"CKA result {pair.paths[1]}", ws.profile.distributed.timeout_seconds):
        return _compute_pair(pair, force, progress, env)


def _compute_pair(pair: _Pair, force: bool, progress: bool, env) -> CKAOutcome:
    """`compute_pair` under the lock of the pair's result."""
    import json

    cfg, ids, (npz_path, json_path) = pair.cfg, pair.ids, pair.paths
    if not force and _up_to_date(npz_path, json_path, pair.expected):
        return _outcome(json.loads(json_path.read_text()), npz_path, skipped=True)

    reader = _PairReader(pair.sa, pair.sb, pair.a, pair.b, ids, cfg)
    blocks = max(1, cfg.bootstrap.blocks)
    if blocks > len(ids):
        raise CKAError(f"cka.bootstrap.blocks = {blocks} exceeds the {len(ids)} utterances of "
                       f"{cfg.task}/{cfg.split}; use fewer blocks")
    block_of = assign_blocks(ids, blocks, cfg.seed) if blocks > 1 else {u: 0 for u in ids}
    boot = _bootstrap(pair, reader, blocks)
    order = sorted(ids, key=lambda u: (block_of[u], u))
    desc = f"cka {pair.a} x {pair.b}"
    if env is not None and env.distributed:
        timeout = pair.ws.profile.distributed.timeout_seconds
        merged = stream_sharded(
            boot, lambda mine: _stream(boot, reader, mine, block_of, cfg.batch_frames, desc, progress and env.is_main),
            order, env, pair.ws.cka_shard_dir(pair.a, pair.b), f"CKA statistics of {pair.a} x {pair.b}", timeout)
        error = None
        if merged is not None:  # rank 0 finalises and writes; the others wait for it
            try:
                done = _finish(pair, merged, reader, block_of, blocks)
            except Exception as err:
                error = err
        exchange(env, f"CKA result of {pair.a} x {pair.b}", error, timeout)
        return done if merged is not None else _outcome(json.loads(json_path.read_text()), npz_path, skipped=False)
    _stream(boot, reader, order, block_of, cfg.batch_frames, desc, progress)
    return _finish(pair, boot, reader, block_of, blocks)


def _bootstrap(pair: _Pair, reader: _PairReader, blocks: int) -> BlockBootstrap:
    """The empty per-block sums of a pair, shifted by the first utterance's items (unsubsampled): one
    reference row for all blocks (and any shard)."""
    cfg = pair.cfg
    device = resolve_device(cfg.device, "cka.device")  # products with numpy on the CPU, with torch on a GPU
    dims_b = None if pair.sym else [l.dim for l in pair.sb.layers]
    boot = BlockBootstrap(blocks, [l.dim for l in pair.sa.layers], dims_b, compute_dtype=cfg.dtype,
                          backend="numpy" if device.type == "cpu" else "torch", device=str(device))
    first = next((u for u in pair.ids if reader.count(u) > 0), None)
    if first is None:
        raise CKAError(f"{pair.sa.path}: no utterance has a frame left after alignment")
    ref_a, ref_b = reader.items(first, select=False)
    boot.set_shift(np.concatenate([frames_mean(x) for x in ref_a]),
                   None if pair.sym else np.concatenate([frames_mean(x) for x in ref_b]))
    return boot


def _finish(pair: _Pair, boot: BlockBootstrap, reader: _PairReader, block_of: dict[str, int],
            blocks: int) -> CKAOutcome:
    """Matrices, bootstrap interval and the two result files of a pair from its accumulated sums."""
    cfg, ws, (npz_path, json_path) = pair.cfg, pair.ws, pair.paths
    if boot.n < 4:
        raise CKAError(f"only {boot.n} {cfg.level} items in {cfg.task}/{cfg.split}; CKA needs at least 4")

    terms = boot.terms()
    matrices = {"cka_biased": cka_from_terms(terms, False), "cka_debiased": cka_from_terms(terms, True)}
    arrays = {**matrices, "cka": matrices[f"cka_{cfg.estimator}"],
              "layers_a": np.array([l.name for l in pair.sa.layers]),
              "layers_b": np.array([l.name for l in pair.sb.layers])}
    boot_meta = None
    if blocks > 1:
        low, high = boot.interval(cfg.bootstrap.resamples, cfg.bootstrap.confidence, cfg.seed,
                                  debiased=cfg.estimator == "debiased")
        arrays.update(ci_low=low, ci_high=high)
        boot_meta = {"blocks": blocks, "resamples": cfg.bootstrap.resamples, "confidence": cfg.bootstrap.confidence,
                     "seed": cfg.seed, "resampled": "blocks of utterances, with replacement; percentile interval",
                     "utterances_per_block": sorted(int(c) for c in np.bincount(list(block_of.values()),
                                                                                 minlength=blocks))}
    meta = {
        "format": RESULT_FORMAT,
        "models": [pair.a, pair.b],
        "within_model": pair.sym,
        "layers": {"a": list(arrays["layers_a"]), "b": list(arrays["layers_b"])},
        "corpus": {"profile": ws.profile.name, "kind": ws.profile.corpus.kind, "task": cfg.task, "split": cfg.split,
                   "utterances": len(pair.ids)},
        "level": cfg.level,
        "alignment": reader.alignment,
        "items": boot.n,
        "subsampling": reader.subsampling,
        "seed": cfg.seed,
        "estimator": cfg.estimator,
        "dtype": cfg.dtype,
        "bootstrap": boot_meta,
        "config_hash": config_hash(to_dict(cfg)),
        "config": to_dict(cfg),
        "provenance": pair.expected.as_dict(),
        "cka": _finite_or_none(arrays["cka"]),
    }
    atomic_write_npz(npz_path, arrays)
    atomic_write_json(json_path, meta)
    return _outcome(meta, npz_path, skipped=False)


def run_cka(ws: Workspace, pairs: Iterable[tuple[str, str]] | None = None, *, force: bool = False,
            progress: bool = True, env=None) -> list[CKAOutcome]:
    """Every requested pair (default: `default_pairs` of the profile's models); returns their outcomes
    (`skipped`: the result was up to date).

    With `env` (torchrun) each pair's statistics are sharded across the ranks."""
    chosen = list(pairs) if pairs is not None else default_pairs(ws.profile.models.all())
    if env is None or env.is_main:
        check_writable(ws.results / "cka")  # before the statistics, not after them
    return [compute_pair(ws, a, b, force=force, progress=progress, env=env) for a, b in chosen]
