import pytest
import torch

from repro.models.hf_ssl import load_hf_ssl, save_random_hf_ssl
from repro.models.upstream import pad_waveforms

torch.set_num_threads(2)


def batch_and_single(up, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = [torch.randn(n, generator=g) * 0.1 for n in lengths]
    padded, lens = pad_waveforms(wavs)
    batch = up(padded, lens)
    singles = [up(w[None], torch.tensor([len(w)])) for w in wavs]
    return batch, singles


@pytest.mark.parametrize("model_type", ["wavlm", "hubert", "wav2vec2"])
def test_batch_equals_one_at_a_time(hf_folder, model_type):
    up = load_hf_ssl(str(hf_folder(model_type)))
    batch, singles = batch_and_single(up, [16000, 9000, 4321])
    worst = 0.0
    for b, single in enumerate(singles):
        for l, (h, n) in enumerate(zip(batch.layers, batch.lengths)):
            t = int(n[b])
            assert t == single.layers[l].shape[1] == int(single.lengths[l][0])
            worst = max(worst, (h[b, :t] - single.layers[l][0]).abs().max().item())
    assert worst < 1e-4


def test_without_masked_norm_padding_would_change_features(hf_folder):
    """The GroupNorm fix matters: the unpatched transformers model differs under padding."""
    from transformers import AutoModel

    raw = AutoModel.from_pretrained(str(hf_folder("hubert"))).eval()
    wavs = [torch.randn(16000) * 0.1, torch.randn(6000) * 0.1]
    padded, lens = pad_waveforms(wavs)
    mask = (torch.arange(16000)[None] < lens[:, None]).long()
    with torch.no_grad():
        b = raw(padded, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        s = raw(wavs[1][None], output_hidden_states=True).hidden_states[-1]
    assert (b[1, : s.shape[1]] - s[0]).abs().max() > 1e-2


def test_base_layout_13_layers_50_fps(tmp_path):
    save_random_hf_ssl(tmp_path, "wavlm", seed=0, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                       intermediate_size=32, conv_dim=(8,) * 7, num_conv_pos_embeddings=8,
                       num_conv_pos_embedding_groups=2)
    up = load_hf_ssl(str(tmp_path))
    info = up.layer_info()
    assert len(info) == 13 and all(l.frame_rate == 50.0 and l.dim == 32 for l in info)
    out = up(torch.randn(1, 32000) * 0.1, torch.tensor([32000]))
    assert len(out.layers) == 13 and out.layers[0].shape == (1, 99, 32) and out.embedding is None
    assert not up.training and not any(p.requires_grad for p in up.parameters())
    up.train()  # a downstream's .train() must not unfreeze the upstream
    assert not up.model.training


def test_layer0_is_transformer_input(hf_folder):
    """hidden state 0 is the input of the first Transformer block (s3prl's convention), on every attention path."""
    up = load_hf_ssl(str(hf_folder("wavlm")), attention="eager")  # eager calls transformers' block itself
    seen = {}

    def grab(_m, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

    wav = torch.randn(1, 8000) * 0.1
    handle = up.model.encoder.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    out = up(wav, torch.tensor([8000]))
    handle.remove()
    assert torch.equal(out.layers[0], seen["x"])
    for attention in ("sdpa", "flex"):
        assert torch.equal(load_hf_ssl(str(hf_folder("wavlm")), attention=attention)(wav, torch.tensor([8000])).layers[0],
                           seen["x"])


def test_waveform_normalisation_follows_the_checkpoint(hf_folder, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    folder = hf_folder("hubert")
    plain = load_hf_ssl(str(folder))
    assert plain.normalize_waveform is False
    normed = load_hf_ssl(str(folder), normalize_waveform=True)
    x = torch.randn(1, 8000) * 0.3 + 0.05
    xn = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    a = normed(x, torch.tensor([8000])).layers[-1]
    b = plain(xn, torch.tensor([8000])).layers[-1]
    assert torch.allclose(a, b, atol=1e-5)
    # from a preprocessor_config.json with do_normalize: true
    import shutil

    shutil.copytree(folder, tmp_path / "m")
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "m")
    assert load_hf_ssl(str(tmp_path / "m")).normalize_waveform is True
