"""The utterance mean (`repro.features.pooling`): every form gives the bytes of the arithmetic the
stores and results it replaced were written with."""

import numpy as np
import pytest
import torch

from repro.features.pooling import frames_mean, utterance_mean


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (33, 3), (257, 32), (1000, 8)])
def test_numpy_frames_are_summed_frame_after_frame_in_float64(shape, dtype):
    x = (np.random.default_rng(shape[0]).standard_normal(shape) * 3).astype(dtype)
    want = np.asarray(x, dtype=np.float64).mean(0)  # pooled store shortcut, ASV-IDT
    assert frames_mean(x).tobytes() == want.tobytes() == x.mean(axis=0, dtype=np.float64).tobytes()  # CKA


def test_numpy_padding_is_ignored_and_an_empty_utterance_gives_zeros():
    x = np.random.default_rng(0).standard_normal((3, 9, 4)).astype(np.float32)
    got = utterance_mean(x, [9, 4, 0])
    assert got.dtype == np.float64 and got.shape == (3, 4)
    assert got[1].tobytes() == np.asarray(x[1, :4], np.float64).mean(0).tobytes()
    assert not got[2].any()


def test_torch_forms_give_the_bytes_of_the_extractor_and_of_the_heads():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 37, 16, generator=g)
    n = torch.tensor([37, 1, 20, 0, 36])
    mask = torch.arange(37)[None, :] < n[:, None]
    store = torch.where(mask[..., None], h.double(), 0.0).sum(1) / n.clamp(min=1).double()[:, None]
    head = (h * mask.float()[..., None]).sum(1) / n.clamp(min=1).float()[:, None]
    assert utterance_mean(h, n).numpy().tobytes() == store.numpy().tobytes()
    assert utterance_mean(h, n, "input").numpy().tobytes() == head.numpy().tobytes()
    x = h.clone().requires_grad_(True)
    utterance_mean(x, n, "input").sum().backward()  # differentiable: the heads train through it
    assert x.grad[1, 1:].abs().sum() == 0 and x.grad[1, 0].abs().sum() > 0


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="accumulate must be one of"):
        utterance_mean(torch.zeros(1, 2, 3), [2], "float16")
    with pytest.raises(ValueError, match="float64 only"):
        utterance_mean(np.zeros((1, 2, 3)), [2], "input")
