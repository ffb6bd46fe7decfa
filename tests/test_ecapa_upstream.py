import pytest
import torch

from conftest import TINY_ECAPA
from repro.models import ecapa
from repro.models.upstream import pad_waveforms


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ecapa.speechbrain_ecapa(TINY_ECAPA).eval()


@pytest.mark.parametrize("frontend", ["speechbrain", "kaldi"])
def test_layers_shapes_rates_and_embedding(model, frontend):
    up = ecapa.wrap_speechbrain_ecapa(model, frontend)
    info = up.layer_info()
    assert [l.name for l in info] == list(ecapa.ECAPA_LAYERS)
    assert [l.dim for l in info] == [16, 16, 16, 16, 48]
    assert all(l.frame_rate == 100.0 for l in info)
    assert up.embedding_dim == 8
    wavs = [torch.randn(16000) * 0.1, torch.randn(9999) * 0.1]
    padded, lens = pad_waveforms(wavs)
    out = up(padded, lens)
    expect = [16000 // 160 + 1, 9999 // 160 + 1] if frontend == "speechbrain" else [1 + (16000 - 400) // 160,
                                                                                   1 + (9999 - 400) // 160]
    for h, n in zip(out.layers, out.lengths):
        assert n.tolist() == expect and h.shape[1] == max(expect)
    # the embedding is the model's own output on the front-end's features
    for b, w in enumerate(wavs):
        direct = model(up.frontend(w[None])).reshape(-1)
        assert torch.allclose(out.embedding[b], direct, atol=1e-6)
        single = up(w[None], torch.tensor([len(w)]))
        for l in range(5):
            ref = single.layers[l][0]
            assert (out.layers[l][b, : expect[b]] - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_mfa_layer_is_the_aggregation_of_the_three_blocks(model):
    up = ecapa.wrap_speechbrain_ecapa(model)
    out = up(torch.randn(1, 8000) * 0.1, torch.tensor([8000]))
    blocks = torch.cat([out.layers[i][0].T for i in (1, 2, 3)], 0)[None]
    assert torch.allclose(model.mfa(blocks)[0].T, out.layers[4][0], atol=1e-5)


def test_layer_subset_and_unknown_layer(model):
    up = ecapa.wrap_speechbrain_ecapa(model, layers=("res2net3", "mfa"))
    assert [l.name for l in up.layer_info()] == ["res2net3", "mfa"]
    with pytest.raises(ValueError, match="known: tdnn"):
        ecapa.wrap_speechbrain_ecapa(model, layers=("res2net9",))


def test_checkpoint_roundtrip_is_strict(model, tmp_path):
    ecapa.save_ecapa_checkpoint(tmp_path, model)
    fresh = ecapa.speechbrain_ecapa(TINY_ECAPA)
    fresh.load_state_dict(ecapa.load_ecapa_state(str(tmp_path)), strict=True)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    wider = ecapa.speechbrain_ecapa({**TINY_ECAPA, "channels": [32, 32, 32, 32, 96]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        wider.load_state_dict(ecapa.load_ecapa_state(str(tmp_path)), strict=True)
