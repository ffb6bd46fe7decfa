"""What every output of the pipeline depends on, and the one key that says whether it is up to date.

Each kind of output declares, in `READS`, the profile settings it reads itself and, in
`inputs_of`, the outputs it is made from. Its **settings key** hashes the values of those
settings, the settings keys of its inputs (recursively) and the identities of the models
involved (`model_identity`: the registry entry, the ECAPA-TDNN layers exposed, the settings of
the recipe that trained it). A settings key is computed from the profile and the model registry
alone: no data, no model weights.

Every output records a `Stamp`: its settings key and the content identities of what it actually
read (feature-store keys, weight digests, manifest digests). Then

    complete, skip it       the recorded stamp equals the stamp the run would write now;
    acceptable as input     the recorded settings key equals the settings key the profile gives now.

A complete output is always acceptable, and an output a later stage refuses is never
skipped by the stage that makes it: both questions are answered from the same declarations.
Every stage asks them here, the corpus folder (`corpus.json`) and trained models (`model.json`)
included: `read_stamp` reads a recorded stamp, `complete_record` keeps an output whose stamp is
complete and says in one line (`why_not_complete`) why any other is redone.

Settings that never change a result (devices, worker counts, threads, logging, timeouts, where
files live) are listed in `RUNTIME`: a device or a thread count may change the last bits of a
float, never what a result says (docs/reviewing.md states where bytes are identical and where a
tolerance holds); settings that only choose which outputs exist (the model lists,
the task list, the learning-rate grid of single-lr results) in `SELECTION`. Every setting of the
profile schema is in exactly one of `READS`, `RUNTIME` or `SELECTION` (a test checks this).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from repro.config.schema import CorpusConfig, SynthConfig
from repro.config.typed import to_dict
from repro.models.ecapa import FORWARD_VERSION as ECAPA_FORWARD_VERSION
from repro.models.hf_encoder import ATTENTION_PATH_VERSION
from repro.models.loaders import LOADERS, recipe_of
from repro.models.registry import registry_signature, resolve_spec, spec_identity
from repro.tasks import PROBE_READS, TASKS, task_input, idt_store_kind
from repro.util.hashing import config_hash

FORMAT = 1

# Settings read by each kind of output, as dotted profile keys. `{task}` and `{recipe}` are filled
# in per output; a key names a whole section when it names a mapping.
READS: dict[str, tuple[str, ...]] = {
    # one task's manifest (and, for ASV, its trial lists)
    "corpus": ("seed", "corpus.kind", "corpus.synthetic", "data.corpora.{task}", "data.subsets.{task}"),
    # a model trained by one of the project's recipes
    "trained_model": ("seed", "speaker_training.{recipe}", "speaker_training.train_task",
                      "speaker_training.train_split", "speaker_training.eval_task", "speaker_training.eval_split",
                      "speaker_training.grad_accumulation", "speaker_training.augment"),
    # a speech SSL model pre-trained by one of the project's masked-prediction recipes
    "trained_ssl": ("ssl_training.{recipe}", "ssl_training.train_tasks"),
    # the layers a model exposes (ECAPA-TDNN blocks), how a transformers model computes attention
    "model": ("models.ecapa_layers", "extraction.attention"),
    # every layer of a model over one split of a task (`frames`) or their utterance means (`pooled`)
    "store": ("extraction.dtype", "extraction.max_batch_seconds", "extraction.autocast", "extraction.tf32",
              "extraction.resample", "extraction.downmix"),
    # the probe of one (model, task, learning rate)
    "probe": ("seed", "probing.tf32", "probing.tasks.{task}.steps", "probing.tasks.{task}.batch_size",
              "probing.tasks.{task}.eval_every", "probing.tasks.{task}.grad_accum", "probing.tasks.{task}.optimizer",
              "probing.tasks.{task}.grad_clip", "probing.tasks.{task}.train_crop_seconds"),
    # the learning rate selected on dev among a task's grid
    "best": ("probing.tasks.{task}.lr_grid",),
    # ASV with the model's own embedding
    "asv_idt": ("probing.asv_idt_without_embedding",),
    # linear CKA between the layers of two models
    "cka": ("cka.task", "cka.split", "cka.level", "cka.alignment", "cka.estimator", "cka.max_frames", "cka.seed",
            "cka.bootstrap", "cka.dtype", "cka.batch_frames"),
    # figures, tables, checks and report (always redrawn from the results)
    "paper": ("paper",),
}
# Settings that never change a result.
RUNTIME: tuple[str, ...] = (
    "name", "description", "extraction.device", "extraction.num_workers", "probing.device", "probing.max_group",
    "probing.length_window",  # which micro-batches share a forward: float rounding, as probing.device
    "cka.device",
    "data.root", "data.lock_file", "data.manual_paths", "data.workers", "distributed", "runtime",
    "speaker_training.device", "speaker_training.num_workers", "speaker_training.log_every",
    "speaker_training.checkpoint_every", "speaker_training.eval_every_epochs",
    # whether a finished training run is published, not what it is
    "speaker_training.require_eer_improvement", "speaker_training.collapse_min_embedding_std",
    "speaker_training.collapse_min_teacher_kl",
    "ssl_training.device", "ssl_training.threads", "ssl_training.log_every", "ssl_training.checkpoint_every",
    "ssl_training.require_above_majority",
)
# Settings that choose which outputs exist, not what any of them holds.
SELECTION: tuple[str, ...] = (
    "models.speech_ssl", "models.speaker_ssl", "models.speaker_sup", "tasks", "speaker_training.pipeline_recipes",
    "speaker_training.supervised.output_name", "speaker_training.dino.output_name",
    "ssl_training.pipeline_recipes", "ssl_training.hubert.output_name", "ssl_training.wavlm.output_name",
)


@dataclass(frozen=True)
class Stamp:
    """What an output was made from: its settings key and the content identities of its inputs."""

    settings: str
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "settings": self.settings, "inputs": self.inputs}

    @property
    def key(self) -> str:
        """One hash of the whole stamp (for outputs that carry a single key, like feature stores)."""
        return config_hash(self.as_dict())


RESUME_FIELD = "run_key"  # the entry of a checkpoint that holds its resume key


def resume_key(stamp: Stamp) -> str:
    """The key a checkpoint of a run records and must carry to be resumed (probes, trained models): one hash
    of the stamp of the output the run makes, so a checkpoint is resumed only by a run that would make the
    same output from the same inputs."""
    return stamp.key


def resumes(checkpoint: dict, key: str) -> bool:
    """Does `checkpoint` (a loaded checkpoint's dict) carry the resume key `key`?"""
    return checkpoint.get(RESUME_FIELD) == key


def is_complete(recorded: Any, expected: Stamp) -> bool:
    """Is an output stamped `recorded` exactly what a run would make now (skip it)?"""
    return recorded == expected.as_dict()


def is_acceptable(recorded: Any, settings: str) -> bool:
    """May a later stage read an output stamped `recorded` under the current settings key?"""
    return isinstance(recorded, dict) and recorded.get("settings") == settings


def recorded_settings(recorded: Any) -> str | None:
    """The settings key in a recorded stamp (None for outputs made before stamps existed)."""
    return recorded.get("settings") if isinstance(recorded, dict) else None


DAMAGED = "damaged"  # what `read_stamp` returns for a file that is there but cannot be read


def read_stamp(path: str | Path) -> Any:
    """The stamp recorded in the JSON file `path` (its `provenance` entry): None when the file is
    absent or holds no stamp (made before stamps existed), `DAMAGED` when it cannot be read as a
    JSON object."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return DAMAGED
    return data.get("provenance") if isinstance(data, dict) else DAMAGED


def why_not_complete(recorded: Any, expected: Stamp) -> str:
    """Why an output stamped `recorded` is not complete against `expected`, in a few words ('' when it is)."""
    if is_complete(recorded, expected):
        return ""
    if recorded is DAMAGED or (recorded is not None and not isinstance(recorded, dict)):
        return "its stamp cannot be read (damaged)"
    if recorded is None:
        return "it has no stamp (made by an earlier version)"
    if recorded.get("settings") != expected.settings:
        return "made under other settings"
    now, then = expected.inputs, recorded.get("inputs") if isinstance(recorded.get("inputs"), dict) else {}
    changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    return f"made from other inputs ({', '.join(changed)})" if changed else "its stamp is of another format"


def complete_record(path: str | Path, expected: Stamp, redo: str, log=None) -> dict | None:
    """The JSON record `path` of an output (its `corpus.json`, `model.json`) when the stamp it records is
    complete against `expected` (skip the output); otherwise None, after one line to `log`, when the
    record is there, saying why and what happens: `<folder>: not complete (<why>): <redo>`."""
    path = Path(path)
    recorded = read_stamp(path)
    if is_complete(recorded, expected):
        return json.loads(path.read_text())
    if log is not None and path.is_file():
        log(f"{path.parent}: not complete ({why_not_complete(recorded, expected)}): {redo}")
    return None


def _value(config: Any, dotted: str) -> Any:
    """The plain-data value of setting `dotted` in a profile (None for an absent optional entry,
    like a task without a budget or a subset rule not given)."""
    node: Any = config
    for part in dotted.split("."):
        if dataclasses.is_dataclass(node):
            node = getattr(node, part)
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    value = to_dict(node)
    if isinstance(value, dict):  # a section: without the settings that change no result
        value = {k: v for k, v in value.items() if f"{dotted}.{k}" not in RUNTIME + SELECTION}
    return value


def settings_read(profile, kind: str, *, task: str | None = None, recipe: str | None = None) -> dict[str, Any]:
    """The settings `kind` reads itself, `{dotted key: value}`, for one task or recipe."""
    keys = list(READS[kind])
    if kind == "corpus":
        keys += TASKS[task].data_reads if task in TASKS else CKA_DATA_READS if task == "CKA" else ()
        if profile.corpus.kind == "synthetic":  # the synthetic corpus reads no real-corpus setting
            keys = [k for k in keys if not k.startswith("data.")]
        else:
            keys.remove("corpus.synthetic")
    if kind == "probe":
        keys += [f"probing.{k}" for k in PROBE_READS + TASKS[task].reads]
    chosen = {k.format(task=task, recipe=recipe): None for k in keys}
    read = {k: _value(profile, k) for k in sorted(chosen)}
    if kind == "probe":  # the input actually used, from `probing.input` and the task's own `input`
        read["input"] = task_input(profile, task)
    return read


# The CKA manifest (a seeded subset of LibriSpeech test-clean) of the real profiles.
CKA_DATA_READS = ("data.cka_utterances", "data.cka_split", "data.corpora.PR", "data.pr_oov")


class _Memo:
    """Keys already computed for a profile object (profiles are frozen: a key of the same object does not
    change while the model registry files stay the same). Holds the last few profiles."""

    def __init__(self, size: int = 16):
        self.size, self.entries = size, collections.OrderedDict()

    def get(self, profile, what: tuple, compute):
        ident = (id(profile), registry_signature())
        entry = self.entries.get(ident)
        if entry is None or entry[0] is not profile:
            entry = (profile, {})
            self.entries[ident] = entry
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        if what not in entry[1]:
            entry[1][what] = compute()
        return entry[1][what]


_MEMO = _Memo()


def _memoized(fn):
    """`fn(profile, *args)` computed once per (profile object, args, registry files)."""
    @functools.wraps(fn)
    def wrapper(profile, *args):
        return _MEMO.get(profile, (fn.__name__, *args), lambda: fn(profile, *args))
    return wrapper


def _key(kind: str, own: dict, inputs: Iterable[str], **ids) -> str:
    return config_hash({"format": FORMAT, "kind": kind, "reads": own, "inputs": sorted(inputs), **ids})


@_memoized
def corpus_key(profile, task: str) -> str:
    """Settings key of one task's manifest (`CKA` for the CKA utterance set)."""
    return _key("corpus", settings_read(profile, "corpus", task=task), [], task=task)


@dataclass(frozen=True)
class _SyntheticCorpusSettings:
    """The part of a profile the synthetic corpus reads (`READS["corpus"]` without the `data.*` settings)."""

    seed: int
    corpus: CorpusConfig


def corpus_folder_key(profile) -> str:
    """Settings key of the corpus folder the corpus stage writes.

    The synthetic corpus holds every task whatever the profile probes: its key is that of its
    settings (`corpus.synthetic`, `seed`). The real corpora are prepared for the profile's tasks and
    the CKA set (when `data.cka_utterances` asks for one): their key hashes those manifests' keys
    (`corpus_key`), so a setting of a task the profile does not prepare changes nothing."""
    if profile.corpus.kind == "synthetic":
        return _key("corpus", settings_read(profile, "corpus"), [])
    cka = ["CKA"] if profile.data.cka_utterances > 0 else []
    return _key("corpus", {}, [corpus_key(profile, t) for t in (*profile.tasks, *cka)])


def synthetic_corpus_key(config: SynthConfig, seed: int) -> str:
    """`corpus_folder_key` of a profile whose synthetic corpus is made from `config` and `seed`."""
    return corpus_folder_key(_SyntheticCorpusSettings(seed, CorpusConfig("synthetic", config)))


@_memoized
def trained_model_key(profile, recipe: str) -> str:
    """Settings key of the model a recipe trains (its settings and its training and evaluation data).

    Speaker recipes read `speaker_training`, the speech SSL recipes `ssl_training` (`repro.recipes.section`)."""
    from repro.recipes import section

    if section(recipe) == "ssl_training":
        data = {corpus_key(profile, t) for t in profile.ssl_training.train_tasks}
        return _key("trained_ssl", settings_read(profile, "trained_ssl", recipe=recipe), data, recipe=recipe)
    st = profile.speaker_training
    data = {corpus_key(profile, st.train_task), corpus_key(profile, st.eval_task)}
    return _key("trained_model", settings_read(profile, "trained_model", recipe=recipe), data, recipe=recipe)


def model_identity(profile, name: str) -> dict[str, Any]:
    """What identifies model `name` under `profile`, without loading it.

    Its registry entry (prose and family left out: the family is the profile's to give), the
    ECAPA-TDNN blocks it exposes, and for a model trained by a recipe that recipe's settings key.
    A `path/to/file.py:factory` plug-in is identified by that reference; its weights are
    identified by the feature stores made from it (their keys hold a digest of the weights).
    """
    spec = resolve_spec(name)
    ident = spec_identity(name)
    ident.pop("family", None)
    loader = LOADERS[spec.loader]
    if loader.network == "ecapa":
        ident["layers"] = settings_read(profile, "model")["models.ecapa_layers"]
        ident["forward"] = ECAPA_FORWARD_VERSION  # how a batch is computed (repro.models.ecapa)
    if loader.network == "transformers":
        ident["attention"] = settings_read(profile, "model")["extraction.attention"]
        ident["attention_path"] = ATTENTION_PATH_VERSION  # how the forward computes it (repro.models.hf_encoder)
    if loader.trained:
        ident["trained"] = trained_model_key(profile, recipe_of(spec))
    return ident


@_memoized
def model_key(profile, name: str) -> str:
    """Settings key of a model's identity (`model_identity`)."""
    return config_hash({"format": FORMAT, "kind": "model", "identity": model_identity(profile, name)})


@_memoized
def store_key(profile, model: str, task: str, kind: str = "frames") -> str:
    """Settings key of the feature store of `model` over one split of `task` (`frames` or `pooled`).

    Every split of a task shares it: the split is part of the store's place, not of its settings."""
    own = settings_read(profile, "store")
    if kind == "pooled":  # utterance means are kept in float32 whatever the cache precision
        own.pop("extraction.dtype")
    return _key("store", own, [model_key(profile, model), corpus_key(profile, task)], task=task, store_kind=kind)


@_memoized
def probe_key(profile, model: str, task: str, lr: float | None) -> str:
    """Settings key of the probe of (`model`, `task`, `lr`); `lr=None` for the learning-rate selection."""
    own = settings_read(profile, "probe", task=task)
    source = task_input(profile, task)
    if source == "upstream":  # layers recomputed from the audio: the model, the corpus, how it runs
        store_settings = settings_read(profile, "store")
        store_settings.pop("extraction.dtype")
        store_settings.pop("extraction.max_batch_seconds")
        inputs = [model_key(profile, model), corpus_key(profile, task), config_hash(store_settings)]
    else:
        inputs = [store_key(profile, model, task, "pooled" if source == "pooled" else "frames")]
    if lr is None:
        own.update(settings_read(profile, "best", task=task))
    return _key("probe", own, inputs, task=task, lr=lr)


@_memoized
def asv_idt_key(profile, model: str) -> str:
    """Settings key of ASV-IDT of `model` (its own embedding scored on the ASV trials)."""
    kind = idt_store_kind(profile)
    return _key("asv_idt", settings_read(profile, "asv_idt"), [store_key(profile, model, "ASV", kind)],
                store_kind=kind)


@_memoized
def cka_key(profile, a: str, b: str) -> str:
    """Settings key of the linear CKA of models `a` and `b` on the profile's CKA utterances."""
    task = profile.cka.task
    return _key("cka", settings_read(profile, "cka"),
                [store_key(profile, a, task), store_key(profile, b, task)], pair=[a, b])
