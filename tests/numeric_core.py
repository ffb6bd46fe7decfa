"""The numeric core of the pipeline in a few steps: prints the sha256 of everything it computes.

`python tests/numeric_core.py [--pin-kernels]` (run by tests/test_cpu_numerics.py in subprocesses, natively
and under qemu-x86_64, with and without the variables of `repro.cpu_numerics.PINNED_ENV`). Each part
uses the operations of one stage, at tiny sizes, on one thread:

- speaker recipes: Conv1d (dilated) + BatchNorm + ReLU, statistics pooling (mean, sqrt of the variance),
  a classifier, cross-entropy, Adam;
- speech SSL recipes: a convolutional front end, LayerNorm, multi-head attention, GELU feed-forward,
  masked prediction of cluster targets, AdamW;
- features: every layer of the trained SSL model in eval mode;
- a probe: a learnable layer weighting, a linear head, cross-entropy, Adam;
- CKA: one pair of layers, the float64 sums X^T X, Y^T Y, X^T Y and their ratio.

Prints `<ATen capability> speaker=<sha256 prefix> ssl=... features=... probe=... cka=...`.

`--values PATH` also saves what it computed (float64 `.npz`): each part's tensors flattened (`speaker`,
`ssl`, `features`, `probe`, `cka`), the CKA matrices (biased and debiased, `repro.similarity.cka`) of
every pair of layers of the trained model's features (`cka_layers`, `cka_layers_debiased`), and the same
for the untrained model's features (`fixed_features`, `fixed_cka_layers`, `fixed_cka_layers_debiased`: a
model whose weights no run trains, as a downloaded one), computed after the digests, so the line printed
is the same with or without it. `--steps N` trains each recipe N steps (default 4).
tests/measure_tolerances.py compares these values across CPU settings.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import torch

if "--pin-kernels" in sys.argv:
    from repro.runtime import pin_cpu_kernels

    pin_cpu_kernels()

torch.set_num_threads(1)
torch.manual_seed(0)  # the initial weights
F = torch.nn.functional
digests: dict[str, "hashlib._Hash"] = {}
values: dict[str, list[np.ndarray]] = {}
VALUES = sys.argv[sys.argv.index("--values") + 1] if "--values" in sys.argv else None
STEPS = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 4


def keep(*tensors: torch.Tensor) -> None:
    """Add the bytes of `tensors` to the digest of the current part (and their values to `values`)."""
    for t in tensors:
        digests[part].update(t.detach().contiguous().numpy().tobytes())
        values.setdefault(part, []).append(t.detach().double().reshape(-1).numpy())


def start(name: str) -> None:
    global part
    part = name
    digests[name] = hashlib.sha256()


def train(params, loss_of, opt, steps: int = STEPS) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        opt.step()
        keep(loss)


g = torch.Generator().manual_seed(0)

# speaker recipe
start("speaker")
spk = torch.nn.Sequential(torch.nn.Conv1d(20, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.BatchNorm1d(32),
                          torch.nn.Conv1d(32, 32, 3, padding=2, dilation=2), torch.nn.ReLU(), torch.nn.BatchNorm1d(32))
spk_head = torch.nn.Linear(64, 6)
fbank, who = torch.randn(8, 20, 80, generator=g), torch.randint(0, 6, (8,), generator=g)


def speaker_loss():
    h = spk(fbank)
    pooled = torch.cat([h.mean(-1), (h.var(-1) + 1e-5).sqrt()], 1)
    return F.cross_entropy(spk_head(pooled), who)


params = [*spk.parameters(), *spk_head.parameters()]
train(params, speaker_loss, torch.optim.Adam(params, 1e-3))
keep(*params)

# speech SSL recipe
start("ssl")
front = torch.nn.Conv1d(1, 32, 10, stride=5)
layers = torch.nn.ModuleList(torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                                             batch_first=True, norm_first=True) for _ in range(2))
norm, ssl_head = torch.nn.LayerNorm(32), torch.nn.Linear(32, 10)
untrained = [{k: v.clone() for k, v in m.state_dict().items()} for m in (front, layers, norm)]
wave, targets = torch.randn(4, 1, 805, generator=g), torch.randint(0, 10, (4, 160), generator=g)
mask = torch.rand(4, 160, generator=g) < 0.5


def hidden_states(x):
    h = [norm(front(x).transpose(1, 2))]
    for layer in layers:
        h.append(layer(h[-1]))
    return h


def ssl_loss():
    return F.cross_entropy(ssl_head(hidden_states(wave)[-1])[mask], targets[mask])


params = [*front.parameters(), *layers.parameters(), *norm.parameters(), *ssl_head.parameters()]
train(params, ssl_loss, torch.optim.AdamW(params, 1e-3, weight_decay=0.01))
keep(*params)

# features
start("features")
for m in (front, layers, norm):
    m.eval()
with torch.no_grad():
    feats = hidden_states(torch.randn(6, 1, 805, generator=g))
keep(*feats)

# a probe over the layers
start("probe")
stack = torch.stack(feats).detach()  # (L, B, T, D)
weights, probe = torch.zeros(len(feats), requires_grad=True), torch.nn.Linear(32, 5)
labels = torch.randint(0, 5, (6,), generator=g)


def probe_loss():
    mixed = (weights.softmax(0)[:, None, None, None] * stack).sum(0).mean(1)
    return F.cross_entropy(probe(mixed), labels)


params = [weights, *probe.parameters()]
train(params, probe_loss, torch.optim.Adam(params, 1e-2))
keep(*params)

# CKA of one layer pair, float64
start("cka")
x = feats[1].reshape(-1, 32).double()
y = feats[2].reshape(-1, 32).double()
x, y = x - x.mean(0), y - y.mean(0)
xy, xx, yy = (x.T @ y).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum()
keep(xy / (xx.sqrt() * yy.sqrt()))

print(torch.backends.cpu.get_cpu_capability(), " ".join(f"{k}={d.hexdigest()[:16]}" for k, d in digests.items()))

if VALUES:
    from repro.similarity.cka import linear_cka

    def cka_layers(hidden: list[torch.Tensor], debiased: bool) -> np.ndarray:
        rows = [h.reshape(-1, h.shape[-1]).double().numpy() for h in hidden]
        return np.array([[linear_cka(a, b, debiased) for b in rows] for a in rows])

    out = {k: np.concatenate(v) for k, v in values.items()}
    out["cka_layers"], out["cka_layers_debiased"] = cka_layers(feats, False), cka_layers(feats, True)
    for m, state in zip((front, layers, norm), untrained):
        m.load_state_dict(state)
    with torch.no_grad():
        fixed = hidden_states(torch.randn(6, 1, 805, generator=torch.Generator().manual_seed(1)))
    out["fixed_features"] = torch.cat([h.reshape(-1) for h in fixed]).double().numpy()
    out["fixed_cka_layers"], out["fixed_cka_layers_debiased"] = cka_layers(fixed, False), cka_layers(fixed, True)
    np.savez(VALUES, **out)
