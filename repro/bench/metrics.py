"""Benchmark: evaluation at full scale, the library-backed metrics against the hand-written ones.

Each case runs the code the project uses now and the implementation it replaced (kept here only,
as the baseline) on the same data in one process, checks that they agree, and keeps the fastest
of `repeats` runs of each (the baselines that take seconds run once).

    per       one PR evaluation's scoring at LibriSpeech test-clean size: 2,620 reference phone
              sequences (lengths ~ N(110, 25), at least 5; 71 phone symbols) and hypotheses with
              `phone_errors` edits per reference phone (half substitutions, a quarter each
              deletions and insertions); `repro.metrics.error_rate` (RapidFuzz) against the
              pure-Python dynamic programme
    decode    greedy CTC decoding of the same number of utterances, batches of 16, 7.4 s each on
              average (50 frames/s, 72 classes with blank, peaky log-probabilities), on this
              machine's device: `PhoneTask.predict` (`ctc_greedy_decode`: the argmax, one host copy
              and one mask for the whole batch) against the per-utterance numpy loop; `argmax` is
              the share both pay for the class argmax
    eer       one EER at VoxCeleb1-O size: 37,720 trials, half targets, cosine-like scores;
              `repro.metrics.equal_error_rate` (scikit-learn's ROC) against the Python sweep over
              every distinct score
    trials    cosine scoring of the same 37,720 trials over 4,715 utterance embeddings of 512
              dimensions (the x-vector head's): `repro.probing.trainer.trial_scores` (stacked,
              row-wise) against one dot product per trial, and the whole `score_trials` (scores +
              EER) against the old loop + old EER
    share     the share of a PR probe's wall time spent in dev evaluation, for the full profile's
              PR budget (`probing.tasks.PR`: steps, eval_every, batch_size x grad_accum; dev-clean:
              2,703 utterances of 7.19 s on average; training items of 12.7 s), before and after.
              Measured on this machine's device with a WavLM Base+-sized model with random
              weights (as the probe benchmark's), PR's input `upstream` (the layers recomputed
              every step): the seconds of one training step (frozen upstream forward, weighted
              sum + CTC head forward and backward, optimiser step) and of the dev forward per
              utterance (fastest of two runs after a warm-up), each on `share_items` items per batch
              (default: 16 on a GPU, 1 on a CPU) and scaled by items; decoding and
              scoring from the cases above (old and new), scaled to the dev set's utterances.
              The same with the model's forward at the projection's assumed GPU rates
              (`repro.bench.costmodel.ASSUMED`, float32 and autocast; FLOPs counted on the same
              model), with decoding's host part (without the argmax) and scoring as measured here.
              Decoding and scoring count as this process's CPU seconds: single-threaded host work
              (bar the argmax), whose CPU time is its wall time on an idle core, whereas wall time
              on a shared machine includes waiting for one; the model's steps count as wall time.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from repro.bench.common import machine_info
from repro.metrics import eer_crossing

DEFAULTS = {"repeats": 3, "share_items": 1}
NUM_PHONES = 71
FRAME_RATE = 50.0
DEV = {"utterances": 2703, "seconds": 5.4 * 3600 / 2703}  # LibriSpeech dev-clean
TRAIN_ITEM_SECONDS = 12.7  # LibriSpeech train-clean-100's mean utterance


# --- the replaced implementations (baselines) ---------------------------------------------------

def baseline_edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """The pure-Python dynamic programme the project used before RapidFuzz."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def baseline_error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    return sum(baseline_edit_distance(r, h) for r, h in zip(refs, hyps)) / sum(len(r) for r in refs)


def baseline_equal_error_rate(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The sweep over every distinct score with one Python-level comparison pass per threshold (the
    crossing of the two rates is `repro.metrics.eer_crossing`, as in the code it is compared with)."""
    thresholds = np.concatenate([np.unique(scores), [np.inf]])
    far = np.array([(scores[~targets] >= t).mean() for t in thresholds])
    frr = np.array([(scores[targets] < t).mean() for t in thresholds])
    return eer_crossing(far, frr, thresholds)


def baseline_trial_scores(embeddings: dict, trials: Sequence) -> np.ndarray:
    """One float64 dot product of unit vectors per trial."""
    def unit(v):
        v = torch.as_tensor(np.asarray(v, dtype=np.float64))
        return v / v.norm().clamp(min=1e-12)

    cache = {k: unit(v) for k, v in embeddings.items()}
    return np.array([float(cache[t.enroll] @ cache[t.test]) for t in trials])


def baseline_predict(phones: list[str], out: torch.Tensor, lengths: torch.Tensor) -> list[list[str]]:
    """The per-utterance greedy decoding loop of `PhoneTask.predict` before the tensor decoder."""
    best = out.argmax(-1).cpu().numpy()
    hyps = []
    for b, n in enumerate(lengths.tolist()):
        seq = best[b, :n]
        keep = seq[np.r_[True, seq[1:] != seq[:-1]]]
        hyps.append([phones[i - 1] for i in keep if i != 0])
    return hyps


# --- data ---------------------------------------------------------------------------------------

def phone_pairs(n: int, mean_len: float, errors: float, seed: int = 0) -> tuple[list[list[str]], list[list[str]]]:
    """`n` reference phone sequences and hypotheses with about `errors` edits per reference phone."""
    rng = random.Random(seed)
    phones = [f"ph{i:02d}" for i in range(NUM_PHONES)]
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(phones) for _ in range(max(5, round(rng.gauss(mean_len, mean_len / 4.4))))]
        hyp = []
        for p in ref:
            u = rng.random()
            if u < errors / 2:
                hyp.append(rng.choice(phones))            # substitution (sometimes the same phone)
            elif u < errors * 3 / 4:
                pass                                      # deletion
            elif u < errors:
                hyp += [p, rng.choice(phones)]            # insertion
            else:
                hyp.append(p)
        refs.append(ref)
        hyps.append(hyp)
    return refs, hyps


def ctc_batches(n: int, batch: int = 16, mean_seconds: float = 7.4, device: torch.device | str = "cpu",
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of peaky CTC log-probabilities `[B, T, 72]` (blank most likely on most frames) and lengths."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        seconds = (mean_seconds * (0.5 + torch.rand(b, generator=gen))).clamp(min=1.0)
        lengths = (seconds * FRAME_RATE).long()
        x = torch.randn(b, int(lengths.max()), NUM_PHONES + 1, generator=gen) * 2
        x[..., 0] += 3.0
        out.append((x.log_softmax(-1).to(device), lengths.to(device)))
    return out


def cosine_trials(n_utts: int, dim: int, n_trials: int, seed: int = 0) -> tuple[dict, list]:
    """Embeddings by utterance id (float32 `[dim]`, 20 per speaker) and trials, half of them targets."""
    from repro.data.manifest import Trial

    rng = np.random.default_rng(seed)
    speakers = rng.standard_normal((n_utts // 20 + 1, dim))
    spk = np.arange(n_utts) // 20
    emb = speakers[spk] + 1.2 * rng.standard_normal((n_utts, dim))
    ids = [f"utt{i:05d}" for i in range(n_utts)]
    embeddings = {u: emb[i].astype(np.float32) for i, u in enumerate(ids)}
    trials = []
    for k in range(n_trials):
        a = int(rng.integers(n_utts))
        if k % 2 == 0:  # target: another utterance of the same speaker
            same = np.flatnonzero(spk == spk[a])
            b = int(rng.choice(same[same != a])) if len(same) > 1 else a
        else:
            b = int(rng.integers(n_utts))
            while spk[b] == spk[a]:
                b = int(rng.integers(n_utts))
        trials.append(Trial(bool(spk[a] == spk[b]), ids[a], ids[b]))
    return embeddings, trials


# --- measuring ----------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], Any], repeats: int, device: torch.device | None = None) -> tuple[Any, float, float]:
    """Run `fn` `repeats` times: (last result, fewest wall seconds, fewest CPU seconds of this process)."""
    wall = cpu = float("inf")
    out = None
    for _ in range(max(1, repeats)):
        if device is not None:
            _sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if device is not None:
            _sync(device)
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return out, wall, cpu


def _case(old: tuple, new: tuple, **extra) -> dict:
    (_, old_wall, old_cpu), (_, new_wall, new_cpu) = old, new
    return {"old": {"wall_s": old_wall, "cpu_s": old_cpu}, "new": {"wall_s": new_wall, "cpu_s": new_cpu},
            "speedup": old_wall / max(new_wall, 1e-12), "speedup_cpu": old_cpu / max(new_cpu, 1e-12), **extra}


def bench_per(utterances: int, phones: float, errors: float, repeats: int) -> dict:
    from repro.metrics import error_rate

    refs, hyps = phone_pairs(utterances, phones, errors)
    new = best_of(lambda: error_rate(refs, hyps), repeats)
    old = best_of(lambda: baseline_error_rate(refs, hyps), 1)
    if new[0] != old[0]:
        raise AssertionError(f"PER differs: {new[0]!r} (RapidFuzz) vs {old[0]!r} (dynamic programme)")
    return _case(old, new, utterances=utterances, reference_phones=sum(map(len, refs)), per=new[0])


def bench_decode(utterances: int, repeats: int, device: torch.device) -> dict:
    from repro.data.manifest import Utterance
    from repro.probing.tasks import make_task

    phones = [f"ph{i:02d}" for i in range(NUM_PHONES)]
    utt = Utterance(id="u", split="train", path="u.wav", num_samples=16000, duration=1.0, speaker="s",
                    label=phones, sha256="0" * 64)
    task = make_task("PR", {"train": [utt]})
    batches = ctc_batches(utterances, device=device)
    new = best_of(lambda: [h for x, n in batches for h in task.predict(x, n)], repeats, device)
    old = best_of(lambda: [h for x, n in batches for h in baseline_predict(task.phones, x, n)], repeats, device)
    if new[0] != old[0]:
        raise AssertionError("the tensor decoder and the per-utterance loop decode differently")
    argmax = best_of(lambda: [x.argmax(-1) for x, _ in batches], repeats, device)
    return _case(old, new, utterances=utterances, batches=len(batches), device=str(device),
                 frames=int(sum(int(n.sum()) for _, n in batches)), argmax_wall_s=argmax[1], argmax_cpu_s=argmax[2],
                 hypothesis_phones=sum(map(len, new[0])))


def bench_eer(trials: int, repeats: int) -> dict:
    from repro.metrics import equal_error_rate

    rng = np.random.default_rng(1)
    targets = np.arange(trials) % 2 == 0
    scores = np.tanh(rng.standard_normal(trials) * 0.25 + np.where(targets, 0.55, 0.05))
    equal_error_rate(scores[:10], targets[:10])  # import scikit-learn off the clock
    new = best_of(lambda: equal_error_rate(scores, targets), repeats)
    old = best_of(lambda: baseline_equal_error_rate(scores, targets), 1)
    diff = max(abs(new[0][0] - old[0][0]), abs(new[0][1] - old[0][1]))
    if diff > 1e-12:
        raise AssertionError(f"EER differs: {new[0]} (roc_curve) vs {old[0]} (sweep)")
    return _case(old, new, trials=trials, eer=new[0][0], max_abs_difference=diff)


def bench_trials(utts: int, dim: int, trials: int, repeats: int) -> dict:
    from repro.metrics import equal_error_rate
    from repro.probing.trainer import score_trials, trial_scores

    embeddings, trial_list = cosine_trials(utts, dim, trials)
    new = best_of(lambda: trial_scores(embeddings, trial_list), repeats)
    old = best_of(lambda: baseline_trial_scores(embeddings, trial_list), repeats)
    diff = float(np.max(np.abs(new[0] - old[0])))
    if diff > 1e-12:
        raise AssertionError(f"trial scores differ by up to {diff:g}")
    targets = np.array([t.target for t in trial_list])
    equal_error_rate(new[0][:10], targets[:10])  # import scikit-learn off the clock
    whole_new = best_of(lambda: score_trials(embeddings, trial_list), repeats)
    whole_old = best_of(lambda: baseline_equal_error_rate(baseline_trial_scores(embeddings, trial_list), targets)[0], 1)
    if abs(whole_new[0] - whole_old[0]) > 1e-12:
        raise AssertionError(f"score_trials EER {whole_new[0]} vs {whole_old[0]} before")
    return {**_case(old, new, trials=trials, utterances=utts, embedding_dim=dim, max_abs_difference=diff),
            "score_trials": _case(whole_old, whole_new, eer=whole_new[0])}


def _probe_costs(items: int, repeats: int, device: torch.device, model_config: dict | None) -> dict:
    """Seconds of one training micro-batch item and one dev item of PR with input `upstream`, and FLOPs/audio s."""
    import tempfile
    from pathlib import Path

    import torch.nn.functional as F

    from repro.bench.extract import base_plus_model, flops_per_audio_second
    from repro.config import load_profile
    from repro.models.hf_ssl import load_hf_ssl
    from repro.probing.featurizer import make_featurizer
    from repro.probing.heads import CTCHead

    cfg = load_profile("full").probing
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        upstream = load_hf_ssl(str(base_plus_model(Path(tmp) / "wavlm-base-plus-random", model_config)))
    upstream.to(device)
    dims = [i.dim for i in upstream.layer_info()]
    torch.manual_seed(0)
    featurizer = make_featurizer(dims, "auto", cfg.projection_dim, False).to(device)
    head = CTCHead(dims[0], cfg.head_dim, NUM_PHONES).to(device)
    params = [p for m in (featurizer, head) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def wavs(seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(seconds * upstream.sample_rate)
        return (torch.randn(items, n, generator=gen) * 0.1).to(device), torch.full((items,), n, device=device)

    train_wav, train_len = wavs(TRAIN_ITEM_SECONDS)
    dev_wav, dev_len = wavs(DEV["seconds"])
    targets = torch.randint(1, NUM_PHONES + 1, (items, int(TRAIN_ITEM_SECONDS * 15)), generator=gen).to(device)
    target_lengths = torch.full((items,), targets.shape[1], device=device)

    def train_micro_batch() -> None:
        with torch.no_grad():
            out = upstream(train_wav, train_len)
        logp = head(featurizer(out.layers), out.lengths[0])
        loss = F.ctc_loss(logp.transpose(0, 1), targets, out.lengths[0], target_lengths, blank=0,
                          zero_infinity=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def dev_batch() -> torch.Tensor:
        out = upstream(dev_wav, dev_len)
        return head(featurizer(out.layers), out.lengths[0])

    train_micro_batch()  # warm-up (allocator, kernels)
    _, train_s, _ = best_of(train_micro_batch, min(repeats, 2), device)
    _, dev_s, _ = best_of(dev_batch, min(repeats, 2), device)
    flops = flops_per_audio_second(upstream, 8.0, device)
    return {"items_per_batch": items, "train_seconds_per_item": train_s / items,
            "dev_seconds_per_item": dev_s / items, "flops_per_audio_second": flops}


def eval_share(costs: dict, per: dict, decode: dict, budget, assumed_tflops: dict) -> dict:
    """Share of a PR probe's wall time in dev evaluation (see the module doc), measured and at assumed GPU rates."""
    between = budget.eval_every
    items_per_step = budget.batch_size * budget.grad_accum
    dev_scale = DEV["utterances"] / per["utterances"]
    decode_scale = DEV["utterances"] / decode["utterances"]
    host = {}
    for k in ("old", "new"):
        host[k] = {"score_s": per[k]["cpu_s"] * dev_scale, "decode_s": decode[k]["cpu_s"] * decode_scale,
                   "decode_host_s": max(decode[k]["cpu_s"] - decode["argmax_cpu_s"], 0.0) * decode_scale}

    def shares(train_s: float, dev_forward_s: float, decode_key: str) -> dict:
        out = {"train_between_evals_s": train_s, "dev_forward_s": dev_forward_s}
        for k in ("old", "new"):
            ev = dev_forward_s + host[k][decode_key] + host[k]["score_s"]
            out[k] = {"eval_s": ev, "share": ev / (ev + train_s)}
        return out

    measured = shares(between * items_per_step * costs["train_seconds_per_item"],
                      DEV["utterances"] * costs["dev_seconds_per_item"], "decode_s")
    assumed = {}
    for mode, tflops in assumed_tflops.items():
        per_audio_s = costs["flops_per_audio_second"] / (tflops * 1e12)
        assumed[mode] = shares(between * items_per_step * TRAIN_ITEM_SECONDS * per_audio_s,
                               DEV["utterances"] * DEV["seconds"] * per_audio_s, "decode_host_s")
        assumed[mode]["tflops"] = tflops
    return {"budget": {"steps": budget.steps, "eval_every": between, "batch_size": budget.batch_size,
                       "grad_accum": budget.grad_accum, "evaluations": budget.steps // between},
            "dev": DEV, "train_item_seconds": TRAIN_ITEM_SECONDS, "host": host, "measured": measured,
            "assumed_gpu": assumed}


@dataclass(frozen=True)
class Sizes:
    """The evaluation's sizes at full scale: PER and CTC decoding over LibriSpeech test-clean (utterances,
    mean phones per utterance, the share of them wrong), EER over VoxCeleb1-O's trials, and trial scoring
    of its utterances' embeddings."""

    utterances: int = 2620
    phones: float = 110.0
    phone_errors: float = 0.10
    trials: int = 37720
    trial_utterances: int = 4715
    embedding_dim: int = 512


def run(sizes: Sizes = Sizes(), repeats: int = DEFAULTS["repeats"], share: bool = True,
        share_items: int | None = None, model_config: dict | None = None) -> dict[str, Any]:
    """Measure and return the figures (see module doc); smaller `sizes` and `model_config` (a tiny model)
    are for tests."""
    from repro.bench.costmodel import ASSUMED
    from repro.config import load_profile
    from repro.features.extract import resolve_device

    started = time.perf_counter()
    device = resolve_device("auto")
    out: dict[str, Any] = {"benchmark": "metrics", "machine": machine_info(), "device": str(device),
                           "repeats": repeats}
    out["per"] = bench_per(sizes.utterances, sizes.phones, sizes.phone_errors, repeats)
    out["decode"] = bench_decode(sizes.utterances, repeats, device)
    out["eer"] = bench_eer(sizes.trials, repeats)
    out["trials"] = bench_trials(sizes.trial_utterances, sizes.embedding_dim, sizes.trials, repeats)
    if share:
        items = share_items or (16 if device.type == "cuda" else DEFAULTS["share_items"])
        costs = _probe_costs(items, repeats, device, model_config)
        out["share"] = {"model": "WavLM Base+ shape, random weights" if not model_config else
                        f"WavLM {model_config}, random weights", "device": str(device), **costs,
                        **eval_share(costs, out["per"], out["decode"], load_profile("full").probing.tasks["PR"],
                                     {"float32": ASSUMED["fp32_tflops"].value,
                                      "autocast": ASSUMED["autocast_tflops"].value})}
    out["wall_seconds"] = time.perf_counter() - started
    return out


def table(r: dict) -> str:
    """A short text table of a `run` result."""
    p, d, e, t = r["per"], r["decode"], r["eer"], r["trials"]
    lines = [f"evaluation at full scale on {r['device']}: old (hand-written) vs new (libraries); seconds of this "
             "process's CPU time (wall seconds on a shared machine include waiting for a core)",
             f"{'case':34s} {'old CPU s':>10s} {'new CPU s':>10s} {'x faster':>9s} {'old wall s':>11s} {'new wall s':>11s}"]
    rows = [(f"PER, {p['utterances']:,} utterances", p), (f"CTC greedy decoding, {d['utterances']:,} utt.", d),
            (f"EER, {e['trials']:,} trials", e), (f"trial scoring, {t['trials']:,} trials", t),
            ("score_trials (scores + EER)", t["score_trials"])]
    for name, c in rows:
        lines.append(f"{name:34s} {c['old']['cpu_s']:>10.3f} {c['new']['cpu_s']:>10.4f} {c['speedup_cpu']:>9.1f} "
                     f"{c['old']['wall_s']:>11.3f} {c['new']['wall_s']:>11.4f}")
    lines.append(f"decoding: the class argmax alone (paid by both) {d['argmax_cpu_s']:.3f} CPU s, "
                 f"{d['argmax_wall_s']:.3f} wall s")
    lines.append(f"PER {p['per']:.4f} and EER {e['eer']:.4f} equal both ways (EER to {e['max_abs_difference']:.0e}); "
                 f"trial scores to {t['max_abs_difference']:.0e}")
    if "share" in r:
        s = r["share"]
        b = s["budget"]
        lines.append(f"share of a PR probe's wall time in dev evaluation (full profile: {b['steps']:,} steps, "
                     f"dev every {b['eval_every']:,}, {b['batch_size']}x{b['grad_accum']} items of "
                     f"{s['train_item_seconds']} s; dev {s['dev']['utterances']:,} utt. of {s['dev']['seconds']:.2f} s)")
        lines.append(f"{'model forward':34s} {'train/eval s':>12s} {'eval s old':>10s} {'new':>8s} "
                     f"{'share old':>9s} {'new':>7s}")
        rows = [(f"measured ({s['device']}, {s['items_per_batch']} item/batch)", s["measured"])]
        rows += [(f"assumed GPU {m} ({v['tflops']:g} TFLOP/s)", v) for m, v in s["assumed_gpu"].items()]
        for name, v in rows:
            lines.append(f"{name:34s} {v['train_between_evals_s']:>12.4g} {v['old']['eval_s']:>10.4g} "
                         f"{v['new']['eval_s']:>8.4g} {100 * v['old']['share']:>8.1f}% {100 * v['new']['share']:>6.1f}%")
    return "\n".join(lines)
