"""The cost model: GPU hours of a profile as a table of terms, each counted, measured or assumed.

A term is one cost of one model on one task (or stage) at one precision, in hours; it names the inputs
it multiplies, and each input carries its kind:
    counted   derived from the code, the profile and the corpora's sizes (FLOPs by
              `torch.utils.flop_counter`, operators by a `TorchDispatchMode`, bytes from tensor shapes,
              lengths from the pinned LibriSpeech distribution, `repro.bench.lengths`);
    measured  timed, with where, on what and the library versions (a record in artifacts/bench/);
    assumed   a number about hardware this machine does not have, with its source (a datasheet, or
              the reasoning that gives it).
A term's kind is its weakest input's (assumed < measured < counted).

What today's code does is a table of code-path facts, `CODE_PATHS` (`repro.bench.cost_inputs`, which
describes each fact and the code it describes); the sourced hardware numbers and the assumptions are
`H100` and `ASSUMED` there. Each term reads the facts and inputs it depends on.
"""

from __future__ import annotations

import dataclasses

from repro.bench import lengths as lengths_mod
from repro.bench.cost_inputs import (ASSUMED, CODE_PATHS, CODE_PATHS_VERSION, H100, KINDS,  # noqa: F401
                                     CodePaths, Input, Pass, Term, facts, largest, totals,
                                     weakest_kind)
from repro.bench.shapes import MODELS, SPEECH_HEADS, SPEECH_LAYERS, SPEECH_WIDTH
from repro.tasks import TASKS


def full_corpus() -> dict:
    """The full corpus of every registered task (its module's `corpus_size`) and of the CKA set."""
    return {**{t.name: t.corpus_size for t in TASKS.values() if t.corpus_size},
            "CKA": {"test": 500 * 7.42 / 3600, "format": "flac", "utterances": {"test": 500}}}


CORPUS = full_corpus()  # the built-in tasks'
KS_LABELS = 12
CKA_FRAME_RATE = 50.0


def corpus_for(profile) -> dict:
    """The corpus sizes a profile reads: the full corpora, shrunk by `data.subsets` (hours scale with
    utterances at the split's mean length; SID's speaker subsets shrink every split)."""
    full_sizes = full_corpus()
    out = {t: {**c, "utterances": dict(c["utterances"])} for t, c in full_sizes.items()}
    out["CKA"]["utterances"]["test"] = profile.data.cka_utterances
    out["CKA"]["test"] = profile.data.cka_utterances * 7.42 / 3600
    for task, splits in (profile.data.subsets or {}).items():
        c = out.get(task)
        if c is None:
            continue
        for split, rule in splits.items():
            rule = rule if isinstance(rule, dict) else dataclasses.asdict(rule)
            full = full_sizes[task]["utterances"].get(split)
            if full is None:
                continue
            if rule.get("utterances"):
                n = min(full, rule["utterances"])
            elif rule.get("per_label"):
                n = min(full, rule["per_label"] * KS_LABELS)
            elif rule.get("speakers"):
                n = round(full * min(1.0, rule["speakers"] / full_sizes[task]["speakers"]))
            else:
                continue
            c[split] = full_sizes[task][split] * n / full
            c["utterances"][split] = n
    return out


class CostModel:
    """The terms of one profile (see the module doc).

    Args:
        profile: a loaded profile (`repro.config.load_profile`).
        flops: FLOPs per audio second of each model, counted at `flop_seconds` per item.
        head_flops: `{model: {task: {"forward", "train"}}}` FLOPs per frame of one probe.
        pooled_ops: `{model: {task: {"micro_batch", "optimizer_step", "fused": {"batch", "optimizer_step",
            "evaluation"}}}}` operators of one pooled probe, and of a fused group (`shapes.fused_step_ops`).
        measured: `Input`s measured on this machine or read from records (decode rates, pooled steps,
            host scoring, CKA's GEMM share, a GPU record's rates), overriding the assumed ones by name.
        code: the code-path facts.
    """

    def __init__(self, profile, flops: dict[str, float], head_flops: dict, pooled_ops: dict,
                 measured: dict[str, Input], code: CodePaths = CODE_PATHS, flop_seconds: float = 8.0,
                 step_seconds: dict | None = None):
        self.profile, self.flops, self.head_flops, self.pooled_ops = profile, flops, head_flops, pooled_ops
        self.code, self.flop_seconds = code, flop_seconds
        self.inputs: dict[str, Input] = {**H100, **ASSUMED, **measured}
        self.corpus = corpus_for(profile)
        self.lengths = lengths_mod.load()["splits"]
        self.step_seconds = step_seconds or {}  # {(model, task, precision): Input} from a GPU record

    def v(self, name: str) -> float:
        return self.inputs[name].value

    # ---- counted pieces ----
    def _attention_flops_per_item(self, model: str, seconds: float) -> float:
        if MODELS[model]["kind"] != "speech":
            return 0.0
        t = seconds * MODELS[model]["frame_rate"]
        return 4 * t * t * SPEECH_WIDTH * SPEECH_LAYERS

    def upstream_flops(self, model: str, seconds: float) -> float:
        """FLOPs of one forward over an item of `seconds` (padded length), attention included: counted FLOPs
        hold the attention of an item of `flop_seconds` (rescaled to `seconds`), unless the counter missed a
        fused path (`attention_flops_counted` False), whose attention is added from the shapes."""
        counted = self.flops[model] * seconds
        attention = MODELS[model].get("attention")
        if attention is None:
            return counted
        path = self.code.wavlm_attention if attention == "wavlm" else self.code.hubert_attention
        if path != "unfused_eager_TxT" and not self.code.attention_flops_counted:  # the counter missed it
            return counted + self._attention_flops_per_item(model, seconds)
        # eager attention: counted at flop_seconds; rescale its T^2 part to this length
        return counted + (self._attention_flops_per_item(model, seconds)
                          - self._attention_flops_per_item(model, self.flop_seconds) * seconds / self.flop_seconds)

    def _tput(self, precision: str) -> tuple[float, str]:
        name = "autocast_tflops" if precision == "bf16" else "fp32_tflops"
        return 1e12 * self.v(name), name

    def padded_seconds(self, task: str, split: str, batch: int, train: bool) -> tuple[float, float, str]:
        """(mean seconds per item, padded seconds per item, how) of the batches of a split."""
        c = self.corpus[task]
        hours = c.get(split, 0.0)
        mean = c["item_seconds"] if train else 3600 * hours / max(c["utterances"].get(split, 1), 1)
        dist = c.get("lengths", {}).get(split)
        padded_by = self.code.pr_batches if train else self.code.eval_batches
        if dist and padded_by == "length_window_padded":
            d = self.lengths[dist]
            name = self.padding_input(task)
            how = f"LibriSpeech {dist} lengths, forwards of {batch} regrouped by length in windows of " \
                  f"{self.profile.probing.length_window} steps"
            return d["mean_seconds"], d["mean_seconds"] * self.v(name), how
        if dist and padded_by.endswith("padded"):
            d = self.lengths[dist]
            how = f"LibriSpeech {dist} lengths, batches of {batch}"
            return d["mean_seconds"], lengths_mod.padded_mean(d, batch), how
        return mean, mean, "the mean length (no pinned length distribution: padding not counted)"

    def padding_input(self, task: str) -> str:
        """The name of the input that holds the padded over valid audio of `task`'s windowed training
        forwards in this profile: read from padding.json (`measured` inputs), else counted here."""
        name = f"padded_over_valid:{self.profile.name}:{task}:train:W{self.profile.probing.length_window}"
        if name not in self.inputs:
            from repro.bench.padding import QUICK_STEPS, measure

            b = self.profile.probing.tasks[task]
            steps = min(QUICK_STEPS, b.steps)
            ratio = measure(self.corpus[task]["utterances"]["train"], b.batch_size, b.grad_accum, steps,
                            self.profile.probing.length_window, self.profile.seed)["windowed"]["padded_over_valid"]
            self.inputs[name] = Input(ratio, "padded / valid audio", "counted",
                                      f"repro.bench.padding.measure, {steps} steps (no padding.json)")
        return name

    # ---- terms ----
    def terms(self) -> list[Term]:
        out: list[Term] = []
        for model in MODELS:
            for task in self.profile.tasks:
                for precision in ("float32", "bf16"):
                    out += self._task_terms(model, task, precision)
            for precision in ("float32", "bf16"):
                out += self._feature_terms(model, precision)
        out += self._cka_terms()
        return out

    def _term(self, model, task, precision, what, hours, inputs, source) -> Term:
        return Term(model, task, precision, what, hours, inputs, weakest_kind(self.inputs, inputs), source)

    def _task_terms(self, model: str, task: str, precision: str) -> list[Term]:
        from repro.tasks import task_input

        b = self.profile.probing.tasks[task]
        lrs = len(b.lr_grid)
        runs = 1 if self.code.upstream_grouped else lrs
        folds = len(self.profile.probing.er_folds) if task == "ER" else 1
        micro = b.steps * b.grad_accum * runs * folds
        evals = (b.steps // b.eval_every) * runs * folds
        if task_input(self.profile, task) == "pooled":
            return self._pooled_terms(model, task, precision, b, lrs, micro, evals)
        c = self.corpus[task]
        dev_split = "dev" if "dev" in c else "test"
        passes = self._passes(task, b, (micro, evals, runs * folds), dev_split)
        terms: list[Term] = []
        key = (model, task, precision)
        if key in self.step_seconds:  # measured probe-group step on a GPU, for training micro-batches
            name = f"step_seconds:{model}:{task}:{precision}"
            self.inputs[name] = self.step_seconds[key]
            terms.append(self._term(model, task, precision, "probe-group micro-batches (measured step)",
                                    micro * self.v(name) / 3600, [name], self.step_seconds[key].source))
            passes = passes[1:]
        for p in passes:
            self._pass_terms(key, p, lrs, b.train_crop_seconds, terms)
        if task == "PR" and "pr_eval_host_s_per_utt" in self.inputs:
            utts = evals * c["utterances"][dev_split]
            terms.append(self._term(model, task, precision, "CTC decoding and PER on the host, eval",
                                    lrs * utts * self.v("pr_eval_host_s_per_utt") / 3600, ["pr_eval_host_s_per_utt"],
                                    f"{evals} evaluations x {lrs} probes"))
        device = sum(t.hours for t in terms)
        audio_s = sum(p.batches * p.items * p.mean for p in passes)
        dec_rate = self.inputs.get(f"decode_{c['format']}")
        if dec_rate is not None:
            decode = audio_s / (dec_rate.value * self.v("decode_threads")) / 3600
            terms.append(self._term(model, task, precision, "audio decoding beyond the device work (overlaps)",
                                    max(0.0, decode - device), [f"decode_{c['format']}", "decode_threads"],
                                    f"{decode:.1f} h of decoding in worker threads"))
        return terms

    def _passes(self, task: str, b, counts: tuple[int, int, int], dev_split: str) -> list[Pass]:
        """The passes of a frame-level probe group over its splits: training micro-batches, then the dev
        evaluations and one test evaluation per run; `counts` = (micro-batches, evaluations, runs)."""
        micro, evals, runs = counts
        c = self.corpus[task]
        crop = b.train_crop_seconds
        if crop:
            tr_mean = min(c["item_seconds"], crop)  # 8 s crops: most batches hold one full crop
            passes = [Pass("train", micro, b.batch_size, tr_mean, tr_mean,
                            f"{crop:g} s crops (an upper bound: shorter utterances are not cropped)")]
        else:
            tr_mean, tr_pad, how_train = self.padded_seconds(task, "train", b.batch_size, True)
            passes = [Pass("train", micro, b.batch_size, tr_pad, tr_mean, how_train)]
        for split, n in ((dev_split, evals), ("test", runs if dev_split != "test" else 0)):
            if n == 0 or split not in c:
                continue
            mean, pad, how = self.padded_seconds(task, split, b.batch_size, False)
            batches = c["utterances"][split] / b.batch_size
            passes.append(Pass(split, n * batches, b.batch_size, pad, mean, how))
        return passes

    def _pass_terms(self, key: tuple[str, str, str], p: Pass, lrs: int, crop: float | None,
                    terms: list[Term]) -> None:
        """Append the terms of one pass to `terms`: the upstream's, the heads' (K probes), the features'
        round trip to the host and the loss reads, as the code paths say."""
        model, task, precision = key
        width = sum(MODELS[model]["dims"])
        tput, tname = self._tput(precision)
        if MODELS[model]["kind"] == "ecapa":
            frames_padded = self._ecapa_pass_terms(key, p, crop, terms)
        else:
            frames_padded = self._speech_pass_terms(key, p, crop, terms)
        # heads: forward + backward per probe in training, forward in evaluation, K probes
        hf = self.head_flops[model][task]["train" if p.training else "forward"]
        head_name = self._head_rate()
        head_rate = 1e12 * self.v(head_name) if head_name != "upstream" else tput
        head_in = [tname if head_name == "upstream" else head_name]
        head_label = "tf32" if head_name == "tf32_tflops" else "float32"
        terms.append(self._term(model, task, precision, f"heads ({head_label}), {p.label}",
                                lrs * frames_padded * hf / head_rate / 3600, head_in,
                                f"{lrs} probes x {hf / 1e6:.1f} MFLOP per frame, "
                                f"{'forward + backward' if p.training else 'forward'}"))
        if self.code.features_round_trip_host:
            bytes_ = frames_padded * width * 4
            copy = 2 * bytes_ / (1e9 * self.v("pcie_gb_s")) / 3600
            if self.code.terms_overlap:  # copies behind the compute of the same pass count only beyond it
                copy = max(0.0, copy - sum(t.hours for t in terms if t.what.endswith(p.label)))
            terms.append(self._term(model, task, precision, f"features to the host and back, {p.label}",
                                    copy, ["pcie_gb_s"],
                                    f"{bytes_ / 1e15:.2f} PB each way ({width} float32 per frame)"))
        if p.training and self.code.loss_read_per_probe:
            syncs = p.batches * lrs
            terms.append(self._term(model, task, precision, "loss reads (host syncs), train",
                                    syncs * self.v("sync_us") / 1e6 / 3600, ["sync_us"],
                                    f"{syncs / 1e6:.1f} M `float(loss)` reads"))

    def _ecapa_pass_terms(self, key: tuple[str, str, str], p: Pass, crop: float | None, terms: list[Term]) -> float:
        """Append an ECAPA-TDNN pass's upstream terms (FLOPs, per-forward overhead); returns its frames."""
        model, task, precision = key
        tput, tname = self._tput(precision)
        batches, items = p.batches, p.items
        if self.code.ecapa_forward == "batched":
            forwards, seconds_run = batches, batches * items * p.pad
        elif p.training and crop:
            short = self.v("voxceleb_short_share")
            forwards = batches * (1 + items * short)
            seconds_run = batches * items * p.mean
        else:  # every utterance alone (lengths differ)
            forwards, seconds_run = batches * items, batches * items * p.mean
        flops = seconds_run * self.upstream_flops(model, 1.0)
        ins = [tname] + (["voxceleb_short_share"] if p.training and crop and
                         self.code.ecapa_forward != "batched" else [])
        terms.append(self._term(model, task, precision, f"upstream FLOPs, {p.label}", flops / tput / 3600,
                                ins, f"{seconds_run / 3600:.0f} audio h, each utterance run as "
                                f"{self.code.ecapa_forward}"))
        terms.append(self._term(model, task, precision, f"ECAPA-TDNN forwards, {p.label}",
                                forwards * self.v("ecapa_overhead_ms") / 1e3 / 3600, ["ecapa_overhead_ms"],
                                f"{forwards / 1e6:.2f} M forwards ({self.code.ecapa_forward})"))
        return seconds_run * MODELS[model]["frame_rate"]  # features per utterance, no padding

    def _speech_pass_terms(self, key: tuple[str, str, str], p: Pass, crop: float | None, terms: list[Term]) -> float:
        """Append a speech model's pass's upstream terms (FLOPs, WavLM's T x T traffic); returns its padded
        frames."""
        model, task, precision = key
        tput, tname = self._tput(precision)
        spec, fr = MODELS[model], MODELS[model]["frame_rate"]
        batches, items, pad = p.batches, p.items, p.pad
        flops = batches * items * self.upstream_flops(model, pad)
        padding = [self.padding_input(task)] if p.training and not crop and self.corpus[task].get("lengths") and \
            self.code.pr_batches == "length_window_padded" else []
        terms.append(self._term(model, task, precision, f"upstream FLOPs, {p.label}", flops / tput / 3600,
                                [tname] + padding, f"{batches * items * pad / 3600:.0f} padded audio h "
                                f"({pad / p.mean:.2f}x the mean: {p.how}), attention included"))
        passes_in = {"unfused_eager_TxT": "wavlm_tt_passes", "sdpa_float_mask": "wavlm_sdpa_mask_passes"}
        if spec.get("attention") == "wavlm" and self.code.wavlm_attention in passes_in:
            passes_name = passes_in[self.code.wavlm_attention]
            t = pad * fr
            element = 4 if precision == "float32" else 3  # bf16 scores, float32 softmax under autocast
            per_layer = self.v(passes_name) * items * SPEECH_HEADS * t * t * element
            bytes_ = batches * SPEECH_LAYERS * per_layer
            terms.append(self._term(model, task, precision, f"attention T x T traffic, {p.label}",
                                    bytes_ / (1e12 * self.v("hbm_tb_s")) / 3600,
                                    [passes_name, "hbm_tb_s"],
                                    f"{bytes_ / 1e15:.1f} PB of (B x heads, T, T) tensors"))
        return batches * items * pad * fr

    def _head_rate(self) -> str:
        """The input that prices the heads' FLOPs: `fp32_tflops`, `tf32_tflops` (`probing.tf32` on, where the
        heads have their own switch) or `upstream` (the upstream's rate: the heads under its precision)."""
        if self.code.head_precision == "probing_tf32":
            return "tf32_tflops" if getattr(self.profile.probing, "tf32", False) else "fp32_tflops"
        return "fp32_tflops" if self.code.head_precision == "float32" else "upstream"

    def _pooled_terms(self, model, task, precision, b, lrs, micro, evals) -> list[Term]:
        c = self.corpus[task]
        ops = self.pooled_ops[model][task]
        steps = micro / b.grad_accum
        terms = []
        measured = f"pooled_step_s:{model}:{task}"
        folds = len(self.profile.probing.er_folds) if task == "ER" else 1
        if self.code.pooled_heads in ("fused_step", "fused_group"):
            fused = ops["fused"]
            group_micro, group_steps = micro / folds, steps / folds  # every fold in the same step
            # a step's rows as one batch (fused_step), or each micro-batch its own (fused_group, before)
            batches, per = (group_steps, "step") if self.code.pooled_heads == "fused_step" else \
                (group_micro, "micro-batch")
            n = batches * fused["batch"] + group_steps * fused["optimizer_step"]
            terms.append(self._term(model, task, precision, "pooled-head steps, train",
                                    n * self.v("host_op_us") / 1e6 / 3600, ["host_op_us"],
                                    f"one fused step for {lrs} learning rates x {folds} fold(s): "
                                    f"{fused['batch']} operators per {per}, {fused['optimizer_step']} "
                                    f"per optimiser step, {n / 1e9:.3f} G operators"))
            split = "dev" if "dev" in c else "all"
            batches = evals * c["utterances"][split] / b.batch_size
            n = batches * fused["evaluation"]
            terms.append(self._term(model, task, precision, "pooled-head evaluation",
                                    n * self.v("host_op_us") / 1e6 / 3600, ["host_op_us"],
                                    f"one fused forward for {lrs} probes x {batches:.0f} dev batches"))
            return terms
        if self.code.pooled_heads == "one_step_per_probe" and measured in self.inputs:
            terms.append(self._term(model, task, precision, "pooled-head steps, train",
                                    lrs * micro * self.v(measured) / 3600, [measured],
                                    f"{lrs} probes x {micro:.0f} micro-batches, each a measured step (an upper "
                                    "bound: the optimiser steps once per grad_accum)"))
        elif self.code.pooled_heads == "one_step_per_probe":
            n = lrs * (micro * ops["micro_batch"] + steps * ops["optimizer_step"])
            terms.append(self._term(model, task, precision, "pooled-head steps, train",
                                    n * self.v("host_op_us") / 1e6 / 3600, ["host_op_us"],
                                    f"{ops['micro_batch']} operators per micro-batch, {ops['optimizer_step']} per "
                                    f"optimiser step, {n / 1e9:.2f} G operators"))
            syncs = micro * lrs
            terms.append(self._term(model, task, precision, "loss reads (host syncs), train",
                                    syncs * self.v("sync_us") / 1e6 / 3600, ["sync_us"],
                                    f"{syncs / 1e6:.1f} M `float(loss)` reads"))
        split = "dev" if "dev" in c else "all"
        batches = evals * c["utterances"][split] / b.batch_size
        n = lrs * batches * ops["micro_batch"] / 3  # a forward is about a third of forward + backward
        terms.append(self._term(model, task, precision, "pooled-head evaluation",
                                n * self.v("host_op_us") / 1e6 / 3600, ["host_op_us"],
                                f"{lrs} probes x {batches:.0f} dev batches"))
        return terms

    def _extract_hours(self, model: str, precision: str, hours: float, utterances: float,
                       equal_lengths: bool) -> tuple[float, float]:
        """(compute hours, ECAPA-TDNN forward overhead hours) of extracting `hours` of audio: length-sorted
        batches (`repro.features.batching`), padding negligible; ECAPA-TDNN per its `ecapa_forward` fact."""
        tput, _ = self._tput(precision)
        mean = 3600 * hours / max(utterances, 1)
        compute = utterances * self.upstream_flops(model, mean) / tput / 3600
        if MODELS[model]["kind"] != "ecapa":
            return compute, 0.0
        forwards = utterances / 32 if equal_lengths or self.code.ecapa_forward == "batched" else utterances
        return compute, forwards * self.v("ecapa_overhead_ms") / 1e3 / 3600

    def _feature_terms(self, model: str, precision: str) -> list[Term]:
        from repro.tasks import task_input

        _, tname = self._tput(precision)
        out = []
        stores = [(t, [s for s in ("train", "dev", "test", "all") if s in self.corpus[t]]) for t in self.profile.tasks
                  if task_input(self.profile, t) == "pooled"]
        if "ASV" in self.profile.tasks:
            stores.append(("ASV", ["test"]))  # ASV-IDT reads the test store's embeddings
        stores.append(("CKA", ["test"]))
        for task, splits in stores:
            c = self.corpus[task]
            hours = sum(c[s] for s in splits)
            utts = sum(c["utterances"][s] for s in splits)
            compute, overhead = self._extract_hours(model, precision, hours, utts, equal_lengths=task == "KS")
            name = "ASV-IDT" if task == "ASV" else task  # the ASV test store serves ASV-IDT
            out.append(self._term(model, name, precision, "features: upstream FLOPs", compute, [tname],
                                  f"{hours:.1f} audio h, length-sorted batches"))
            if overhead:
                out.append(self._term(model, name, precision, "features: ECAPA-TDNN forwards", overhead,
                                      ["ecapa_overhead_ms"], "KS's 1 s clips together, other utterances alone"))
        return out

    def _cka_terms(self) -> list[Term]:
        frames = self.corpus["CKA"]["test"] * 3600 * CKA_FRAME_RATE
        names = list(MODELS)
        pairs = [(a, a) for a in names] + [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        rate = 1e12 * self.v("fp64_tflops") * self.v("cka_gemm_fraction")
        out = []
        for a, b in pairs:
            flops = cka_pair_flops(frames, MODELS[a]["dims"], None if a == b else MODELS[b]["dims"])
            for precision in ("float32", "bf16"):
                out.append(self._term(f"{a}__{b}", "CKA", precision, "CKA accumulator (float64)",
                                      flops / rate / 3600, ["fp64_tflops", "cka_gemm_fraction"],
                                      f"{flops / 1e12:.1f} TFLOP"))
        return out


def cka_pair_flops(frames: float, dims_a: list[int], dims_b: list[int] | None) -> float:
    """Matrix-product flops of the streaming accumulator for one pair (`repro.bench.cka.flops`;
    across models: X^T Y plus each side's own layer blocks)."""
    if dims_b is None:
        return frames * sum(dims_a) * (sum(dims_a) + 1)
    return 2 * frames * sum(dims_a) * sum(dims_b) + sum(frames * d * (d + 1) for d in dims_a + dims_b)
