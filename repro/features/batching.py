"""Length-bucketed batches: utterances sorted by length, packed up to a padded-seconds budget."""

from __future__ import annotations

from repro.data.manifest import Utterance


def plan_batches(utterances: list[Utterance], max_batch_seconds: float) -> list[list[int]]:
    """Indices of `utterances` grouped into batches, longest first.

    Sorting by length (ties by id) keeps padding small; a batch grows while
    `len(batch) * longest duration <= max_batch_seconds` (a single longer
    utterance still forms its own batch). Deterministic for a given input.
    """
    order = sorted(range(len(utterances)), key=lambda i: (-utterances[i].num_samples, utterances[i].id))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in order:
        d = utterances[i].duration
        if current and (len(current) + 1) * max(longest, d) > max_batch_seconds:
            batches.append(current)
            current, longest = [], 0.0
        current.append(i)
        longest = max(longest, d)
    if current:
        batches.append(current)
    return batches


def padding_fraction(utterances: list[Utterance], batches: list[list[int]]) -> float:
    """Share of padded samples in the planned batches (0 = no padding)."""
    padded = sum(len(b) * max(utterances[i].num_samples for i in b) for b in batches)
    valid = sum(utterances[i].num_samples for b in batches for i in b)
    return 1.0 - valid / padded if padded else 0.0
