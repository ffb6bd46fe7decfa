"""Where each probing task reads its layers from, and which feature stores that needs.

    cache     every frame, from a frame store `<split>/`; any task
    pooled    per-layer utterance means, from a pooled store `<split>.pooled/` (KB per utterance);
              mean-pooled heads without layer norm or training crops (KS, IC, ER; SID without crops)
    upstream  layers recomputed by the frozen model at every step (training crops cut from the
              audio); any task, no store

`probing.tasks.<TASK>.input` chooses per task; unset, the task uses `probing.input`. ASV-IDT
(the model's own embedding) reads the ASV frame store when ASV reads the cache, else the ASV
pooled stores of the splits with trial lists (dev, test), which hold the embeddings too.
"""

from __future__ import annotations

from repro.config.typed import ConfigError

# Tasks whose head is a mean over frames followed by linear maps (tasks.py: `pooled = True`).
MEAN_POOLED_TASKS = ("KS", "IC", "SID", "ER")
INPUTS = ("cache", "upstream", "pooled")


def why_not_pooled(profile, task: str) -> str | None:
    """None when `task` can train on utterance means exactly, else the reason it cannot."""
    budget = profile.probing.tasks.get(task)
    if task not in MEAN_POOLED_TASKS:
        return f"the {task} head does not average its frames"
    if profile.probing.layer_norm:
        return "probing.layer_norm normalises every frame, which does not commute with the mean"
    if budget is not None and budget.train_crop_seconds:
        return f"its training crops (probing.tasks.{task}.train_crop_seconds) need the frames"
    if not profile.probing.pooled_shortcut:
        return "probing.pooled_shortcut is off"
    return None


def task_input(profile, task: str) -> str:
    """The input of `task`: its budget's `input`, else `probing.input`; ConfigError if it cannot be used."""
    budget = profile.probing.tasks.get(task)
    chosen = budget.input if budget is not None and budget.input else profile.probing.input
    if chosen == "pooled":
        reason = why_not_pooled(profile, task)
        if reason:
            raise ConfigError(f"profile {profile.name}: probing.tasks.{task}.input is 'pooled', but {reason}; "
                              "use 'cache' or 'upstream' for this task")
    return chosen


def stores_needed(profile, task: str, split: str | None = None) -> list[str]:
    """Store kinds (`frames`, `pooled`) the profile's probes of `task` read from `split` (None: any split)."""
    if task not in profile.probing.tasks:
        return ["frames"]
    chosen = task_input(profile, task)
    if chosen == "cache":
        return ["frames"]
    if chosen == "pooled":
        return ["pooled"]
    if task == "ASV" and split != "train":  # ASV-IDT scores the dev/test trials with the pooled stores' embeddings
        return ["pooled"]
    return []


def idt_store_kind(profile) -> str:
    """The ASV store kind ASV-IDT reads: frames when ASV reads the cache, else pooled."""
    return "frames" if "ASV" not in profile.probing.tasks or task_input(profile, "ASV") == "cache" else "pooled"
