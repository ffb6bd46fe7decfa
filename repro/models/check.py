"""The upstream contract as a suite of checks, as scikit-learn's `check_estimator` is for estimators.

`check_upstream(model)` takes an `Upstream`, a factory returning one, or a model name (a registry entry or
`path/to/file.py:factory`), runs it on a padded batch of three utterances of lengths no hop divides, then
on each utterance alone, and reports one line per check (`repro check-model MODEL` prints them):

    builds             the model loads (a factory or loader that raises is this one FAIL)
    forward            a padded batch `[B, S]` with lengths `[B]` gives an `UpstreamOutput`
    layers             `layer_info()`: one entry per output layer, distinct names, positive width and rate
    shapes             each layer `[B, T, D]` (float) with `D` as declared; lengths `[B]` int64; the embedding
                       `[B, embedding_dim]` where the model has one
    lengths            the output lengths are `frame_lengths(wav_lengths)`, within `T`, the same alone as batched
    frame rates        each utterance has its duration x the layer's frame rate of frames (to 50 ms + 1 frame)
    padding invariance an utterance alone gives its frames in the padded batch, to `tolerance` of the layer's
                       largest value (and its embedding)
    determinism        two forwards of the same batch are identical
    frozen weights     no parameter requires grad, every module in eval mode (also after `.train()`), and the
                       forwards change no parameter or buffer

A check that cannot run because one it needs failed is reported as SKIP. No check raises.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from repro.models.loaders import built
from repro.models.upstream import LayerInfo, Upstream, UpstreamOutput, pad_waveforms

# utterance lengths in samples (1.30 s, 0.83 s, 0.41 s at 16 kHz): no multiple of any usual hop
SAMPLES = (20817, 13293, 6571)
TOLERANCE = 1e-4
RATE_SLACK_SECONDS = 0.05  # frames a receptive field may trim or add at the edges, as audio


class CheckFailed(Exception):
    """A check's reason to fail."""


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, PASS / FAIL / SKIP, and what was found."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


@dataclass
class CheckReport:
    """Every check of one model, in order."""

    model: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.status == "PASS" for r in self.results)

    def lines(self) -> list[str]:
        return [r.line() for r in self.results]

    def summary(self) -> str:
        failed = sum(r.status == "FAIL" for r in self.results)
        if not failed:
            return f"{self.model}: all {len(self.results)} checks pass"
        return f"{self.model}: {failed} of {len(self.results)} checks fail"


def check_upstream(model: Upstream | Callable[[], Any] | str, models_dir: str | Path | None = None,
                   tolerance: float = TOLERANCE) -> CheckReport:
    """Check `model` against the upstream contract (module doc); never raises.

    Args:
        model: an Upstream (checked as it is), a factory without arguments (its result frozen, as the
            registry does), or a registry name or `path/to/file.py:factory` (loaded by the registry).
        models_dir: where the registry finds or makes generated and trained models (default: a
            temporary folder, enough for random models and plug-ins).
        tolerance: padding invariance, relative to the largest absolute value of each layer.
    """
    name = model if isinstance(model, str) else getattr(model, "__name__", type(model).__name__)
    report = CheckReport(str(name))
    with tempfile.TemporaryDirectory(prefix="repro-check-") as tmp:
        try:
            upstream = _build(model, Path(models_dir) if models_dir is not None else Path(tmp))
            suite = _Suite(upstream, tolerance)
        except Exception as err:  # noqa: BLE001 - a model that cannot be built is one FAIL line
            report.results.append(CheckResult("builds", "FAIL", _reason(err)))
            return report
        report.results.append(CheckResult("builds", "PASS", f"{type(upstream).__name__}"))
        suite.run(report)
    return report


def _build(model, models_dir: Path) -> Upstream:
    if isinstance(model, Upstream):
        return model
    if isinstance(model, str):
        from repro.models.registry import load_upstream

        return load_upstream(model, models_dir)
    if callable(model):
        return built(model(), getattr(model, "__name__", repr(model)))
    raise TypeError(f"not an Upstream, a factory or a model name: {type(model).__name__}")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class _Suite:
    """The checks of one built upstream, sharing the forwards they read."""

    ORDER = ("forward", "layers", "shapes", "lengths", "frame rates", "padding invariance", "determinism",
             "frozen weights")
    NEEDS = {"forward": (), "layers": ("forward",), "shapes": ("layers",), "lengths": ("shapes",),
             "frame rates": ("lengths",), "padding invariance": ("lengths",), "determinism": ("shapes",),
             "frozen weights": ()}

    def __init__(self, upstream: Upstream, tolerance: float):
        self.up, self.tolerance = upstream, tolerance
        self.device = next((t.device for t in (*upstream.parameters(), *upstream.buffers())), torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        self.wavs = [torch.randn(n, generator=g) * 0.1 for n in SAMPLES]
        self.padded, self.lengths = pad_waveforms(self.wavs)
        self.state = {k: v.detach().clone() for k, v in upstream.state_dict().items()}
        self.out: UpstreamOutput | None = None  # the padded batch's (check_forward)
        self.singles: list[UpstreamOutput] = []  # each utterance's alone (check_lengths)

    def run(self, report: CheckReport) -> None:
        status: dict[str, str] = {}
        for name in self.ORDER:
            missing = [n for n in self.NEEDS[name] if status.get(n) != "PASS"]
            if missing:
                result = CheckResult(name, "SKIP", f"needs {', '.join(missing)}")
            else:
                try:
                    result = CheckResult(name, "PASS", getattr(self, "check_" + name.replace(" ", "_"))())
                except CheckFailed as failed:
                    result = CheckResult(name, "FAIL", str(failed))
                except Exception as err:  # noqa: BLE001 - a model that raises fails the check, never the suite
                    result = CheckResult(name, "FAIL", f"raised {_reason(err)}")
            status[name] = result.status
            report.results.append(result)

    def forward(self, wavs: Tensor, lengths: Tensor) -> UpstreamOutput:
        """The model's output on `wavs` `[B, S]`, `lengths` `[B]` (its tensors detached from any graph)."""
        out = self.up(wavs.to(self.device), lengths.to(self.device))
        if isinstance(out, UpstreamOutput):
            detach = lambda t: t.detach() if isinstance(t, Tensor) else t  # noqa: E731
            out = UpstreamOutput([detach(h) for h in out.layers], [detach(n) for n in out.lengths],
                                 detach(out.embedding))
        return out

    # ------------------------------------------------------------------ the checks (return what passed)

    def check_forward(self) -> str:
        out = self.forward(self.padded, self.lengths)
        if not isinstance(out, UpstreamOutput):
            raise CheckFailed(f"forward returned {type(out).__name__}, not an UpstreamOutput")
        self.out = out
        return f"a padded batch of {len(SAMPLES)} utterances ({', '.join(f'{n} samples' for n in SAMPLES)})"

    def check_layers(self) -> str:
        info = self.up.layer_info()
        if not isinstance(info, list) or not info or not all(isinstance(i, LayerInfo) for i in info):
            raise CheckFailed(f"layer_info() must be a non-empty list of LayerInfo, got {info!r:.100}")
        bad = [i.name for i in info if not (int(i.dim) > 0 and float(i.frame_rate) > 0)]
        if bad:
            raise CheckFailed(f"layer(s) {', '.join(bad)} declare a width or frame rate that is not positive")
        if len({i.name for i in info}) != len(info):
            raise CheckFailed(f"layer names repeat: {[i.name for i in info]}")
        n_layers, n_lengths = len(self.out.layers), len(self.out.lengths)
        if not n_layers == n_lengths == len(info):
            raise CheckFailed(f"layer_info() lists {len(info)} layers, forward returned {n_layers} layer "
                              f"outputs and {n_lengths} lengths")
        return f"{len(info)} layers ({info[0].name} .. {info[-1].name})"

    def check_shapes(self) -> str:
        batch = len(SAMPLES)
        for info, h, n in zip(self.up.layer_info(), self.out.layers, self.out.lengths):
            if not isinstance(h, Tensor) or h.dim() != 3 or h.shape[0] != batch or h.shape[2] != info.dim:
                shape = list(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise CheckFailed(f"layer {info.name} is {shape}; expected [B={batch}, T, D={info.dim}] "
                                  "(batch, frames, the width layer_info() declares)")
            if not h.is_floating_point():
                raise CheckFailed(f"layer {info.name} has dtype {h.dtype}; expected a float tensor")
            if not isinstance(n, Tensor) or n.shape != (batch,) or n.dtype != torch.long:
                desc = f"{list(n.shape)} {n.dtype}" if isinstance(n, Tensor) else type(n).__name__
                raise CheckFailed(f"lengths of layer {info.name} are {desc}; expected [B={batch}] int64")
        emb, dim = self.out.embedding, self.up.embedding_dim
        if dim is not None and (emb is None or tuple(emb.shape) != (batch, dim)):
            raise CheckFailed(f"embedding is {None if emb is None else list(emb.shape)}; expected [B={batch}, "
                              f"E={dim}] (embedding_dim)")
        if dim is None and emb is not None:
            raise CheckFailed(f"forward returns an embedding {list(emb.shape)} but embedding_dim is None")
        dims = sorted({i.dim for i in self.up.layer_info()})
        return f"[B, T, D] per layer with D as declared ({', '.join(map(str, dims))})" + (
            f"; embedding [B, {dim}]" if dim is not None else "")

    def check_lengths(self) -> str:
        expected = self.up.frame_lengths(self.lengths.to(self.device))
        for info, h, n, e in zip(self.up.layer_info(), self.out.layers, self.out.lengths, expected):
            if n.tolist() != torch.as_tensor(e).tolist():
                raise CheckFailed(f"layer {info.name}: forward gives lengths {n.tolist()}, frame_lengths() "
                                  f"{torch.as_tensor(e).tolist()}")
            if int(n.max()) > h.shape[1] or int(n.min()) < 1:
                raise CheckFailed(f"layer {info.name}: lengths {n.tolist()} do not fit the {h.shape[1]} frames")
        self.singles = [self.forward(w[None], torch.tensor([len(w)])) for w in self.wavs]
        for b, single in enumerate(self.singles):
            for info, n, alone in zip(self.up.layer_info(), self.out.lengths, single.lengths):
                if int(alone[0]) != int(n[b]):
                    raise CheckFailed(f"layer {info.name}: utterance {b} has {int(alone[0])} frames alone, "
                                      f"{int(n[b])} in the batch")
        return "forward's lengths equal frame_lengths(), the same alone as in the batch"

    def check_frame_rates(self) -> str:
        seconds = self.lengths.double() / self.up.sample_rate
        worst = 0.0
        for info, n in zip(self.up.layer_info(), self.out.lengths):
            expect = seconds * info.frame_rate
            off = (n.cpu().double() - expect).abs()
            slack = info.frame_rate * RATE_SLACK_SECONDS + 1
            if float(off.max()) > slack:
                b = int(off.argmax())
                raise CheckFailed(f"layer {info.name}: {int(n[b])} frames for {float(seconds[b]):.3f} s, "
                                  f"expected about {float(expect[b]):.1f} at the declared {info.frame_rate:g} "
                                  f"frames/s")
            worst = max(worst, float(off.max()))
        rates = sorted({i.frame_rate for i in self.up.layer_info()})
        return f"{', '.join(f'{r:g}' for r in rates)} frames/s (worst {worst:.1f} frames off)"

    def check_padding_invariance(self) -> str:
        worst, where = 0.0, ""
        for b, single in enumerate(self.singles):
            pairs = [(info.name, h[b, : int(n[b])], s[0, : int(n[b])])
                     for info, h, n, s in zip(self.up.layer_info(), self.out.layers, self.out.lengths, single.layers)]
            if self.out.embedding is not None:
                pairs.append(("embedding", self.out.embedding[b], single.embedding[0]))
            for name, batched, alone in pairs:
                scale = float(alone.abs().max()) or 1.0
                diff = float((batched.float() - alone.float()).abs().max()) / scale
                if not diff <= worst:
                    worst, where = diff, f"{name}, utterance {b}"
        if not worst <= self.tolerance:
            raise CheckFailed(f"utterance alone vs padded in a batch differ by {worst:.2e} of the layer's largest "
                              f"value ({where}); tolerance {self.tolerance:.0e}: mask the padding")
        return f"each utterance alone equals its frames in the padded batch (worst {worst:.1e}, " \
               f"tolerance {self.tolerance:.0e})"

    def check_determinism(self) -> str:
        again = self.forward(self.padded, self.lengths)
        first = [*self.out.layers, *self.out.lengths, self.out.embedding]
        second = [*again.layers, *again.lengths, again.embedding]
        names = [i.name for i in self.up.layer_info()]
        names = names + [f"lengths of {n}" for n in names] + ["embedding"]
        for name, a, b in zip(names, first, second):
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                gap = "" if a is None or b is None or a.shape != b.shape else \
                    f" (max difference {float((a.double() - b.double()).abs().max()):.2e})"
                raise CheckFailed(f"two forwards of the same batch differ in {name}{gap}: dropout or random "
                                  "layers left on?")
        return "two forwards of the same batch are identical"

    def check_frozen_weights(self) -> str:
        problems = []
        grads = [n for n, p in self.up.named_parameters() if p.requires_grad]
        if grads:
            problems.append(f"{len(grads)} parameter(s) require grad ({_few(grads)}): call self.freeze() "
                            "(the registry does for a factory)")
        training = [n or type(self.up).__name__ for n, m in self.up.named_modules() if m.training]
        if training:
            problems.append(f"{len(training)} module(s) in training mode ({_few(training)})")
        now = self.up.state_dict()
        changed = [k for k, v in self.state.items() if k not in now or not torch.equal(v, now[k])]
        changed += sorted(set(now) - set(self.state))
        if changed:
            problems.append(f"the forwards changed {len(changed)} parameter(s) or buffer(s) ({_few(changed)})")
        modes = {n: m.training for n, m in self.up.named_modules()}
        self.up.train()
        flipped = [n or type(self.up).__name__ for n, m in self.up.named_modules() if m.training and not modes[n]]
        for n, m in self.up.named_modules():
            m.training = modes[n]
        if flipped:
            problems.append(f".train() put {len(flipped)} module(s) in training mode ({_few(flipped)}); an "
                            "upstream stays in eval mode (keep Upstream.train)")
        if problems:
            raise CheckFailed("; ".join(problems))
        return f"{sum(p.numel() for p in self.up.parameters())} parameters without grad, eval mode, " \
               "unchanged by the forwards"


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
