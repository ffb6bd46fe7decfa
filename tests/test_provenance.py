"""One key for "up to date": every setting of the schema, changed in turn, makes exactly the outputs
that depend on it stale; the autocast case (a probe on the upstream) through the command line."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, Union

import pytest
from click.testing import CliRunner

from repro import provenance as P
from repro.cli import main
from repro.config import ConfigError, load_profile
from repro.config.schema import ProfileConfig
from repro.config.typed import from_dict, to_dict
from repro.models.loaders import LOADERS
from repro.tasks import TASKS, idt_store_kind, task_input

KINDS = ("frames", "pooled")
SPEAKER_RECIPES, SSL_RECIPES = ("supervised", "dino"), ("hubert", "wavlm")
RECIPES = SPEAKER_RECIPES + SSL_RECIPES


def trained_by(p) -> dict[str, str]:
    """The model each recipe trains, by recipe."""
    return {**{r: getattr(p.speaker_training, r).output_name for r in SPEAKER_RECIPES},
            **{r: getattr(p.ssl_training, r).output_name for r in SSL_RECIPES}}


# ---------------------------------------------------------------------------------------------
# the outputs of a profile and their settings keys


def outputs(profile) -> dict[str, str]:
    """Settings key of every output of `profile`, by a name like `probe:tiny-wavlm:PR:0.01`."""
    models, tasks = profile.models.all(), list(profile.tasks)
    manifests = tasks + ([profile.cka.task] if profile.cka.task not in tasks else [])
    keys = {f"corpus:{t}": P.corpus_key(profile, t) for t in manifests}
    keys |= {f"trained:{r}": P.trained_model_key(profile, r) for r in RECIPES}
    keys |= {f"model:{m}": P.model_key(profile, m) for m in models}
    keys |= {f"store:{m}:{t}:{k}": P.store_key(profile, m, t, k) for m in models for t in manifests for k in KINDS}
    for m in models:
        for t in tasks:
            keys |= {f"probe:{m}:{t}:{lr}": P.probe_key(profile, m, t, lr) for lr in profile.probing.tasks[t].lr_grid}
            keys[f"best:{m}:{t}"] = P.probe_key(profile, m, t, None)
        if "ASV" in tasks:
            keys[f"asv_idt:{m}"] = P.asv_idt_key(profile, m)
    keys |= {f"cka:{a}:{b}": P.cka_key(profile, a, b) for i, a in enumerate(models) for b in models[i:]}
    return keys


# ---------------------------------------------------------------------------------------------
# what each setting must make stale: the outputs that read it, and everything made from them


def direct(setting: str, p) -> set[str]:
    """Output patterns that read `setting` themselves (`*` matches one field), for profile `p`."""
    parts = setting.split(".")
    synthetic = p.corpus.kind == "synthetic"
    ecapa = [m for m in p.models.all() if LOADERS[P.model_identity(p, m)["loader"]].network == "ecapa"]
    head = {"head_dim": [t for t in TASKS if TASKS[t].head != "xvector"],
            "pooled_shortcut": [t for t in TASKS if TASKS[t].mean_pooled], "er_folds": ["ER"],
            **{k: ["ASV"] for k in ("xvector_dims", "xvector_embedding_dim", "am_softmax", "asv_selection")}}
    if setting == "seed":
        return {"corpus:*", "trained:*", "probe:*:*:*"}
    if parts[0] == "corpus":
        return {"corpus:*"} if setting == "corpus.kind" or synthetic else set()
    if setting == "models.ecapa_layers":
        return {f"model:{m}" for m in ecapa}
    if setting == "extraction.attention":
        return {f"model:{m}" for m in p.models.all()
                if LOADERS[P.model_identity(p, m)["loader"]].network == "transformers"}
    if parts[0] == "extraction":
        if parts[1] == "dtype":
            return {"store:*:*:frames"}
        if parts[1] == "max_batch_seconds":
            return {"store:*:*:*"}
        if parts[1] in ("autocast", "tf32", "resample", "downmix"):
            upstream = [t for t in p.tasks if task_input(p, t) == "upstream"]
            return {"store:*:*:*"} | {f"probe:*:{t}:*" for t in upstream}
    if parts[0] == "probing":
        if parts[1] == "tasks":
            task, field = parts[2], parts[3]
            if field == "lr_grid":
                return {f"best:*:{task}"}
            return {f"probe:*:{task}:*"} | ({"asv_idt:*"} if (task, field) == ("ASV", "input") else set())
        if parts[1] in ("layer_norm", "projection", "projection_dim", "layers", "tf32"):
            return {"probe:*:*:*"}
        if parts[1] in head:
            return {f"probe:*:{t}:*" for t in head[parts[1]]}
        if parts[1] == "input":  # the tasks that take the profile's input; ASV-IDT follows ASV's
            follow = [t for t in p.tasks if p.probing.tasks[t].input is None]
            return {f"probe:*:{t}:*" for t in follow} | ({"asv_idt:*"} if "ASV" in follow else set())
        if parts[1] == "asv_idt_without_embedding":
            return {"asv_idt:*"}
    if parts[0] == "data" and not synthetic:
        data = {"pr_oov": ["PR", "CKA"], "er_test_fold": ["ER"], "er_valid_ratio": ["ER"],
                "asv_min_seconds": ["ASV"], "cka_utterances": ["CKA"], "cka_split": ["CKA"]}
        if parts[1] in ("corpora", "subsets"):
            task = parts[2] if len(parts) > 2 else "PR"  # an empty `subsets` gets a PR rule
            return {f"corpus:{task}"} | ({"corpus:CKA"} if parts[1] == "corpora" and task == "PR" else set())
        return {f"corpus:{t}" for t in data.get(parts[1], [])}
    if parts[0] == "speaker_training":
        if parts[1] in ("supervised", "dino"):
            return set() if parts[2] == "output_name" else {f"trained:{parts[1]}"}
        if parts[1] in ("train_task", "train_split", "eval_task", "eval_split", "grad_accumulation", "augment"):
            return {f"trained:{r}" for r in SPEAKER_RECIPES}
    if parts[0] == "ssl_training":
        if parts[1] in SSL_RECIPES:
            return set() if parts[2] == "output_name" else {f"trained:{parts[1]}"}
        if parts[1] == "train_tasks":
            return {f"trained:{r}" for r in SSL_RECIPES}
    if parts[0] == "cka" and parts[1] != "device":
        return {"cka:*:*"}
    return set()


def _match(pattern: str, name: str) -> bool:
    a, b = pattern.split(":"), name.split(":")
    return len(a) == len(b) and all(x in ("*", y) for x, y in zip(a, b))


def closure(p, changed: set[str], names: list[str]) -> set[str]:
    """Every output made (directly or not) from an output in `changed`, by the pipeline's data flow."""
    st = p.speaker_training
    made_by = trained_by(p)
    trained_reads = {**{r: {f"corpus:{st.train_task}", f"corpus:{st.eval_task}"} for r in SPEAKER_RECIPES},
             **{r: {f"corpus:{t}" for t in p.ssl_training.train_tasks} for r in SSL_RECIPES}}
    out = set(changed)
    while True:
        grown = set(out)
        for name in names:
            kind, *ids = name.split(":")
            if kind == "trained" and trained_reads[ids[0]] & out:
                grown.add(name)
            if kind == "model":
                recipe = next((r for r, n in made_by.items() if n == ids[0]), None)
                if recipe and P.model_identity(p, ids[0]).get("trained") and f"trained:{recipe}" in out:
                    grown.add(name)
            if kind == "store" and ({f"corpus:{ids[1]}", f"model:{ids[0]}"} & out):
                grown.add(name)
            if kind == "probe":
                m, t, _ = ids
                source = task_input(p, t)
                reads = ({f"model:{m}", f"corpus:{t}"} if source == "upstream"
                         else {f"store:{m}:{t}:{'pooled' if source == 'pooled' else 'frames'}"})
                if reads & out:
                    grown.add(name)
            if kind == "best" and any(n.startswith(f"probe:{ids[0]}:{ids[1]}:") for n in out):
                grown.add(name)
            if kind == "asv_idt" and f"store:{ids[0]}:ASV:{idt_store_kind(p)}" in out:
                grown.add(name)
            if kind == "cka" and {f"store:{m}:{p.cka.task}:frames" for m in ids} & out:
                grown.add(name)
        if grown == out:
            return out
        out = grown


def expected_stale(setting: str, p, names: list[str]) -> set[str]:
    first = {n for n in names if any(_match(pat, n) for pat in direct(setting, p))}
    return closure(p, first, names)


# ---------------------------------------------------------------------------------------------
# every leaf setting of a profile, and a valid other value for it


def leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() for leaf in leaves(v, f"{prefix}.{k}" if prefix else k)]
    return [prefix]


def _type_at(key: str):
    tp: Any = ProfileConfig
    for part in key.split("."):
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp)[part]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return Any
        if typing.get_origin(tp) in (Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = inner[0] if len(inner) == 1 else tp
    return tp


def _range_at(key: str):
    """The `Range` of a setting (its class's `RANGES`), or None."""
    parent, _, name = key.rpartition(".")
    owner = _type_at(parent) if parent else ProfileConfig
    return getattr(owner, "RANGES", {}).get(name) if dataclasses.is_dataclass(owner) else None


OVERRIDES = {  # values a mutation must take to mean something (or to stay valid)
    "probing.input": "upstream", "corpus.kind": "real", "tasks": ["PR", "KS"], "cka.split": "dev",
    "data.subsets": {"PR": {"train": {"utterances": 10}}}, "probing.layers": [0, 1],
    "speaker_training.eval_task": "SID", "speaker_training.train_task": "SID", "data.manual_paths": {"iemocap": "/x"},
    "models.speaker_sup": ["tiny-ecapa-sup"],
}


def other_value(key: str, value: Any) -> Any:
    if key in OVERRIDES and OVERRIDES[key] != value:
        return OVERRIDES[key]
    if key.endswith(".input"):
        return "cache" if value == "upstream" else "upstream"
    tp = _type_at(key)
    if typing.get_origin(tp) is Literal:
        if isinstance(value, list):
            return value[:-1]
        return next(a for a in typing.get_args(tp) if a != value)
    if typing.get_origin(tp) is list and typing.get_origin(typing.get_args(tp)[0]) is Literal:
        return value[:-1] if value else list(typing.get_args(typing.get_args(tp)[0]))[:1]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):  # a value the setting's range allows (probabilities, momenta stay below 1)
        allowed = _range_at(key)
        return next(v for v in (value * 2 + 0.5, value / 2) if allowed is None or allowed.allows(v))
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):  # numbers: the last one changed (lengths and distinct items are ranges)
        if value and isinstance(value[-1], (int, float)) and not isinstance(value[-1], bool):
            allowed, last = _range_at(key), value[-1]
            return [*value[:-1], next(v for v in (last * 2 + 1, last / 2) if allowed is None or allowed.allows(v))]
        return [*value, value[-1]] if value else [1.0]
    if value is None:
        inner = typing.get_args(_type_at(key)) or (tp,)
        return 1.0 if float in inner else 2
    if isinstance(value, dict):
        return {"extra": 1}
    raise AssertionError(f"no mutation for {key} = {value!r}")


def _set(tree: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for part in path:
        tree = tree[part]
    tree[last] = value


def mutations(profile) -> list[tuple[str, Any]]:
    tree = to_dict(profile)
    out = []
    for key in leaves(tree):
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        changed = json.loads(json.dumps(tree))
        _set(changed, key, other_value(key, node))
        out.append((key, from_dict(ProfileConfig, changed, f"{profile.name} with {key} changed")))
    return out


def _classified(key: str) -> str | None:
    """Which declaration of `repro.provenance` covers `key` (READS, RUNTIME, SELECTION), or None."""
    generic = ".".join("{task}" if part in TASKS else "{recipe}" if part in RECIPES else part
                       for part in key.split("."))
    task_reads = {f"probing.{r}" for t in TASKS.values() for r in t.reads} | {f"probing.{r}" for r in P.PROBE_READS}
    data_reads = {r for t in TASKS.values() for r in t.data_reads} | set(P.CKA_DATA_READS)
    for name, group in (("RUNTIME", P.RUNTIME), ("SELECTION", P.SELECTION)):
        if any(key == g or key.startswith(g + ".") for g in group):
            return name
    reads = {r for rs in P.READS.values() for r in rs} | task_reads | data_reads | {
        "probing.input", "probing.tasks.{task}.input", "probing.tasks.{task}.lr_grid"}
    if any(generic == r or generic.startswith(r + ".") or r.startswith(generic + ".") or key == r
           or key.startswith(r + ".") for r in reads):
        return "READS"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smoke", "full"])
def test_every_setting_is_declared_and_makes_exactly_its_outputs_stale(name):
    base = load_profile(name)
    # two models of each kind the profile has (speech SSL, ECAPA-TDNN) keep the test to minutes
    base = dataclasses.replace(base, models=dataclasses.replace(
        base.models, speech_ssl=base.models.speech_ssl[:1], speaker_ssl=base.models.speaker_ssl[:1], speaker_sup=[]))
    before = outputs(base)
    checked = refused = 0
    for key, changed in mutations(base):
        assert _classified(key), f"{key}: not declared in repro.provenance (READS, RUNTIME or SELECTION)"
        try:
            after = outputs(changed)
        except ConfigError as err:  # the change makes the profile invalid (e.g. crops for a pooled input)
            assert key.split(".")[-1] in str(err), err
            refused += 1
            continue
        common = sorted(set(before) & set(after))
        stale = {n for n in common if before[n] != after[n]}
        want = (expected_stale(key, changed, list(after)) | expected_stale(key, base, list(before))) & set(common)
        assert stale == want, f"{name}: changing {key}: stale {sorted(stale - want)} unexpectedly, " \
                              f"not stale {sorted(want - stale)}"
        checked += 1
    assert checked > 100 and refused <= 6


def test_selection_and_runtime_settings_change_no_output():
    base = load_profile("smoke")
    for key, changed in mutations(base):
        if _classified(key) in ("RUNTIME", "SELECTION") and not key.startswith("paper"):
            after = outputs(changed)
            assert all(after[n] == v for n, v in outputs(base).items() if n in after), key


def test_a_complete_stamp_is_acceptable_and_other_settings_are_not():
    stamp = P.Stamp("abc", {"train": "k1"})
    assert P.is_complete(stamp.as_dict(), stamp) and P.is_acceptable(stamp.as_dict(), "abc")
    assert not P.is_complete({**stamp.as_dict(), "inputs": {"train": "k2"}}, stamp)
    assert P.is_acceptable({**stamp.as_dict(), "inputs": {"train": "k2"}}, "abc")  # made from other data, same settings
    assert not P.is_acceptable(stamp.as_dict(), "abd") and not P.is_acceptable(None, "abc")


# ---------------------------------------------------------------------------------------------
# the regression: a probe on the upstream under another autocast is trained again, then accepted

AUTOCAST_PROFILE = """
name: {name}
description: a probe on the upstream
seed: 0
corpus: {{kind: synthetic}}
models: {{speech_ssl: [tiny-hubert], speaker_ssl: [], speaker_sup: []}}
tasks: [KS]
extraction: {{device: cpu, max_batch_seconds: 16, autocast: {autocast}}}
probing:
  device: cpu
  head_dim: 16
  tasks:
    KS: {{steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2, input: upstream}}
"""


def test_a_changed_autocast_retrains_the_upstream_probe_and_the_paper_accepts_it(tmp_path, workspace_env,
                                                                                  tiny_corpus):
    import shutil

    from repro.paper.results import ConfigMismatchError, ResultReader
    from repro.workspace import Workspace

    first = second = tmp_path / "a.yaml"  # the profile file, then the same file edited (its folders are its own)
    first.write_text(AUTOCAST_PROFILE.format(name="autocast", autocast="none"))
    ws = Workspace.for_profile(str(first))
    shutil.copytree(tiny_corpus, ws.corpus_dir)
    runner = CliRunner()
    res = runner.invoke(main, ["probe", "--profile", str(first), "--quiet"])
    assert res.exit_code == 0 and "KS lr=0.01" in res.output and "written" in res.output, res.output
    assert ResultReader(ws).probe("tiny-hubert", "KS")["input"] == "upstream"
    second.write_text(AUTOCAST_PROFILE.format(name="autocast", autocast="bf16"))
    later = Workspace.for_profile(str(second))
    with pytest.raises(ConfigMismatchError):
        ResultReader(later).probe("tiny-hubert", "KS")
    res = runner.invoke(main, ["probe", "--profile", str(second), "--quiet"])
    assert res.exit_code == 0 and "written" in res.output and "up to date" not in res.output.split("\n")[0], res.output
    assert ResultReader(later).probe("tiny-hubert", "KS")["lr"] == 0.01
    res = runner.invoke(main, ["probe", "--profile", str(second), "--quiet"])
    assert res.exit_code == 0 and "up to date" in res.output
    res = runner.invoke(main, ["probe", "--profile", str(second), "--quiet", "--force"])
    assert res.exit_code == 0 and "written" in res.output


def test_the_corpus_folder_key_is_made_of_what_the_corpus_stage_writes():
    """Synthetic: every task from (corpus.synthetic, seed), whatever the profile probes or its data.*;
    real: the manifests of the profile's tasks (and the CKA set), so a setting of another task changes nothing."""
    smoke = load_profile("smoke")
    key = P.corpus_folder_key(smoke)
    assert key == P.synthetic_corpus_key(smoke.corpus.synthetic, smoke.seed)
    assert P.corpus_folder_key(dataclasses.replace(smoke, tasks=["PR"])) == key
    assert P.corpus_folder_key(dataclasses.replace(smoke, seed=1)) != key
    assert P.synthetic_corpus_key(dataclasses.replace(smoke.corpus.synthetic, speakers=3), smoke.seed) != key
    full = load_profile("full")
    ks = dataclasses.replace(full, tasks=["KS"])
    er_ratio = dataclasses.replace(ks.data, er_valid_ratio=0.3)
    assert P.corpus_folder_key(dataclasses.replace(ks, data=er_ratio)) == P.corpus_folder_key(ks)  # ER not prepared
    er = dataclasses.replace(full, tasks=["ER"])
    assert P.corpus_folder_key(dataclasses.replace(er, data=er_ratio)) != P.corpus_folder_key(er)
    assert P.corpus_folder_key(dataclasses.replace(er, data=dataclasses.replace(er.data, cka_utterances=7))) != \
        P.corpus_folder_key(er)
