"""What the command line prints for typed stage outcomes."""

from pathlib import Path

from repro.console import describe
from repro.pipeline import TrainOutcome, train_outcome
from repro.similarity.stage import CKAOutcome


class _Ws:
    models_dir = Path("/w/models")


def test_train_outcomes_of_both_recipe_kinds_are_described_from_their_fields():
    ssl = train_outcome({"name": "m", "recipe": "hubert", "heldout": {
        "masked_accuracy": {"trained": 0.5, "untrained": 0.1}, "majority_rate": 0.2, "masked_frames": 100}})
    spk = train_outcome({"name": "e", "recipe": "supervised", "eer": {"trained": 0.1, "untrained": 0.4},
                         "eval": {"trials": 30}})
    assert isinstance(ssl, TrainOutcome) and ssl.metric == "accuracy" and spk.metric == "eer" and spk.chance is None
    assert describe("train", ssl, _Ws()) == [
        "m (hubert): held-out masked-prediction accuracy 50.0% (untrained 10.0%, majority cluster 20.0%) over "
        "100 frames -> /w/models/m"]
    assert describe("train", spk, _Ws()) == ["e (supervised): EER 10.00% (untrained 40.00%) on 30 trials -> /w/models/e"]


def test_a_cka_outcome_is_described_from_its_fields():
    o = CKAOutcome("a", "b", (13, 5), 400, "frame", Path("/r/cka/a__b.npz"), skipped=True)
    assert describe("cka", o, _Ws()) == ["cka a x b: 13x5 layers, 400 frame items; up to date: /r/cka/a__b.npz"]
