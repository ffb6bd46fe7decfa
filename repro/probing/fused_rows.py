"""The rows a fused group of pooled probes reads (`repro.probing.fused`): a split's pooled means on the
device (`DeviceRows`), and the train splits of a group's folds read as one, a step's micro-batches at once
(`GroupRows`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from repro.probing.sources import StorePooled
from repro.runtime import all_reduce_sum


class DeviceRows:
    """A pooled split as one device tensor `[N, sum D_l]`; any other source read per batch (`source.batch`)."""

    def __init__(self, source: Any, device: torch.device):
        self.source, self.device = source, device
        self.table = None
        if isinstance(source, StorePooled):
            self.table = torch.from_numpy(np.concatenate(source.means, axis=1)).to(device)

    def rows(self, idx: Sequence[int], step: int | None) -> Tensor:
        """`[B, sum D_l]` float32 on the device."""
        if self.table is not None:
            return self.table.index_select(0, _index(idx, self.device))
        layers, _ = self.source.batch(list(idx), step)
        return torch.cat([h.to(self.device)[:, 0] for h in layers], dim=1)


def _index(idx: Sequence[int], device: torch.device) -> Tensor:
    """`idx` as int64 on `device` (the one upload of a micro-batch read from resident rows)."""
    return torch.as_tensor(np.asarray(idx, dtype=np.int64)).to(device)


class GroupRows:
    """The train splits of a group's folds read as one: the pooled means of every utterance any fold trains on
    in one device table `[U, sum D_l]` (one row per utterance) and the folds' targets `[sum N_f, blocks]`: a
    step's rows of every fold are one index upload and three gathers. Other sources are read fold by fold."""

    def __init__(self, folds: Sequence[Any], device: torch.device):  # `fused.Fold`s
        self.device, self.sizes = device, [len(f.train.utts) for f in folds]
        self.width = sum(folds[0].train.source.dims)  # sum D_l
        self.starts = np.cumsum([0] + self.sizes[:-1])
        targets = [f.task.collate(f.train.targets) for f in folds]  # one column per output block (IC's slots)
        self.targets = torch.cat([t[:, None] if t.dim() == 1 else t for t in targets]).to(device)  # [sum N_f, blocks]
        self.table, self.rows = None, None
        if all(isinstance(f.train.source, StorePooled) for f in folds):
            row: dict[str, int] = {}  # utterance -> its table row
            for f in folds:
                for u in f.train.utts:
                    row.setdefault(u.id, len(row))
            where = [np.array([row[u.id] for u in f.train.utts], dtype=np.int64) for f in folds]
            table = np.empty((len(row), self.width), dtype=np.float32)
            for f, at in zip(folds, where):  # rows of utterances in two folds are written twice, alike
                table[at] = np.concatenate(f.train.source.means, axis=1)
            self.table = torch.from_numpy(table).to(device)
            self.where = torch.from_numpy(np.concatenate(where)).to(device)  # [sum N_f]: a position's table row
        else:
            self.rows = [DeviceRows(f.train.source, device) for f in folds]

    def read(self, idx: Sequence[Sequence[int]], step: int) -> tuple[Tensor, Tensor]:
        """Each fold's rows (`idx[f]`: positions in its split) -> `x` `[F, R, sum D_l]`, `y` `[F, R, blocks]`."""
        n, r = len(idx), len(idx[0])
        index = self._upload(idx)
        y = self.targets.index_select(0, index).view(n, r, -1)
        if self.table is not None:
            return self.table.index_select(0, self.where.index_select(0, index)).view(n, r, -1), y
        return self._computed(idx, step), y

    def read_step(self, batches: Sequence[Sequence[Sequence[int]]], mine: Sequence[int], step: int,
                  env: Any = None) -> tuple[Tensor, Tensor]:
        """A step's rows: `batches[a][f]` (fold f's micro-batch a, positions in its split) -> `x`
        `[F, G B, sum D_l]`, `y` `[F, G B, blocks]`, micro-batch after micro-batch in each fold.

        A resident table is read whole on every rank. Rows computed per batch are read micro-batch by
        micro-batch (an upstream forward keeps its batch shape); under torchrun (`env`) a rank reads its own
        (`mine`, from `rank_micro_batches`) and the ranks exchange them in a sum to which the others add
        zeros (exact), so every rank holds the rows of one process."""
        whole = [np.concatenate([np.asarray(mb[f], dtype=np.int64) for mb in batches])
                 for f in range(len(self.sizes))]
        if self.table is not None:
            return self.read(whole, step)
        n, r = len(whole), len(whole[0])
        y = self.targets.index_select(0, self._upload(whole)).view(n, r, -1)
        if env is None or not env.distributed:
            return torch.cat([self._computed(mb, step) for mb in batches], dim=1), y
        x = torch.zeros(n, len(batches), r // len(batches), self.width, device=self.device)
        for a in mine:
            if a >= 0:
                x[:, a] = self._computed(batches[a], step)
        return all_reduce_sum(x, env).view(n, r, -1), y

    def _computed(self, idx: Sequence[Sequence[int]], step: int) -> Tensor:
        """Each fold's rows from a source that computes them per batch -> `[F, B, sum D_l]`."""
        return torch.stack([rows.rows(i, step) for rows, i in zip(self.rows, idx)])

    def _upload(self, idx: Sequence[Sequence[int]]) -> Tensor:
        """The one upload of a read: positions in the folds' splits, end to end, int64 on the device."""
        return _index(np.concatenate([np.asarray(i, dtype=np.int64) + s for i, s in zip(idx, self.starts)]),
                      self.device)
