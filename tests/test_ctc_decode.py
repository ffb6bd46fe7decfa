import pytest
import torch

from repro.data.manifest import Utterance
from repro.probing.decode import ctc_greedy_decode
from repro.probing.tasks import make_task


def naive_greedy(logits: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Frame by frame in Python: emit the best class when it is not blank and differs from the last frame's."""
    out = []
    for b in range(logits.shape[0]):
        seq, prev = [], None
        for t in range(min(int(lengths[b]), logits.shape[1])):
            c = int(logits[b, t].argmax())
            if c != prev and c != blank:
                seq.append(c)
            prev = c
        out.append(seq)
    return out


def test_by_hand():
    # frames: a a _ a b b _ _ b | padding c
    classes = [1, 1, 0, 1, 2, 2, 0, 0, 2, 3]
    logits = torch.nn.functional.one_hot(torch.tensor([classes, classes]), 4).float()
    assert ctc_greedy_decode(logits, torch.tensor([9, 2])) == [[1, 1, 2, 2], [1]]
    assert ctc_greedy_decode(logits, torch.tensor([0, 10])) == [[], [1, 1, 2, 2, 3]]
    assert ctc_greedy_decode(logits, torch.tensor([10, 10]), blank=2) == [[1, 0, 1, 0, 3]] * 2


def test_matches_the_frame_loop_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for case in range(60):
        b, t, c = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
        c += 1
        logits = torch.randn(b, t * 5, c, generator=gen)
        logits[..., 0] += float(torch.rand(1, generator=gen)) * 3  # more blanks
        if case % 3 == 0:
            logits = logits.round()  # ties: argmax takes the first maximum in both
        lengths = torch.randint(0, t * 5 + 1, (b,), generator=gen)
        blank = case % c
        assert ctc_greedy_decode(logits, lengths, blank) == naive_greedy(logits, lengths, blank)


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"logits \[B, T, C\] and lengths \[B\]"):
        ctc_greedy_decode(torch.zeros(2, 5), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match=r"lengths \[B\]"):
        ctc_greedy_decode(torch.zeros(2, 5, 3), torch.tensor([5]))


def test_phone_task_predicts_phone_strings():
    utts = [Utterance(id=f"u{i}", split="train", path=f"u{i}.wav", num_samples=16000, duration=1.0, speaker="s",
                      label=lab, sha256="0" * 64)
            for i, lab in enumerate([["AA", "B"], ["B", "K"]])]
    task = make_task("PR", {"train": utts})
    assert task.phones == ["AA", "B", "K"]  # ids 1, 2, 3; 0 is the blank
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 1, 0, 2, 2, 3], [3, 0, 3, 3, 0, 0]]), 4).float()
    assert task.predict(logits.log_softmax(-1), torch.tensor([5, 6])) == [["AA", "B"], ["K", "K"]]
