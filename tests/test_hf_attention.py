"""The project's forward of transformers speech models: exactness of every attention path, no host syncs,
FLOPs that include attention, the `extraction.attention` check."""

import copy
import warnings

import pytest
import torch
import transformers

from repro.models.hf_encoder import ATTENTION_PATHS, masked_group_norm_conv
from repro.models.hf_ssl import HFSpeechSSL
from repro.models.upstream import pad_waveforms
from repro.util.device_syncs import DeviceSyncs
from tests.conftest import TINY_HF

torch.set_num_threads(2)
warnings.filterwarnings("ignore", message=".*flex_attention.*")
LENGTHS = [16000, 9000, 4321]  # a padded batch; the first is also unpadded on its own
CLASSES = {"wavlm": "WavLM", "hubert": "Hubert", "wav2vec2": "Wav2Vec2"}


def model(kind: str, stable: bool = False, seed: int = 0):
    """A tiny random model with eager attention (transformers' reference); `stable`: pre-norm layout."""
    torch.manual_seed(seed)
    cfg = getattr(transformers, f"{CLASSES[kind]}Config")(
        **TINY_HF, do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group")
    cfg._attn_implementation = "eager"
    return getattr(transformers, f"{CLASSES[kind]}Model")(cfg).eval()


def batch(lengths=LENGTHS, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    wavs, lens = pad_waveforms([torch.randn(n, generator=g) * 0.1 for n in lengths])
    return wavs.to(dtype), lens


def worst_relative(a: list, b: list) -> float:
    """Largest over layers of max |a - b| / max |b|."""
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def valid_layers(out, b: int) -> list:
    return [h[b, : int(n[b])] for h, n in zip(out.layers, out.lengths)]


@pytest.mark.parametrize("kind,stable", [("wavlm", False), ("wavlm", True), ("hubert", False), ("wav2vec2", True)])
@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_fused_attention_matches_eager(kind, stable, attention):
    """Every layer within 1e-5 of eager (float32), padded and unpadded, at several lengths."""
    m = model(kind, stable)
    eager, fused = HFSpeechSSL(m, False, "eager"), HFSpeechSSL(m, False, attention)
    wavs, lens = batch()
    padded_e, padded_f = eager(wavs, lens), fused(wavs, lens)
    worst = 0.0
    for b, n in enumerate(LENGTHS):
        worst = max(worst, worst_relative(valid_layers(padded_f, b), valid_layers(padded_e, b)))
        alone = (wavs[b : b + 1, :n], lens[b : b + 1])
        worst = max(worst, worst_relative(fused(*alone).layers, eager(*alone).layers))
    assert worst < 1e-5


@pytest.mark.parametrize("kind,stable", [("wavlm", False), ("hubert", False), ("wav2vec2", True)])
def test_forward_matches_transformers(kind, stable):
    """The project's forward (front-end, masking, layers) is transformers' forward: in float64 to 1e-12, in
    float32 within 1e-5 (the first layer's statistics are summed in another order than torch's GroupNorm
    kernel: ~3e-7 there, ~1e-6 at the layers, as large as transformers' own float32 error)."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        m = copy.deepcopy(model(kind, stable)).to(dtype)
        ours = HFSpeechSSL(m, False, "eager")
        wavs, lens = batch(dtype=dtype)
        padded = ours(wavs, lens)
        for b, n in enumerate(LENGTHS):
            with torch.no_grad():
                ref = m(wavs[b : b + 1, :n], output_hidden_states=True).hidden_states
            assert len(ref) == len(padded.layers)
            assert worst_relative(valid_layers(padded, b), [h[0] for h in ref]) < tol


def test_masked_group_norm_is_per_utterance_group_norm():
    """Each utterance of a padded batch is normalised over its own valid frames; padded frames are zero."""
    layer = model("hubert").feature_extractor.conv_layers[0]
    wavs, lens = batch()
    with torch.no_grad():
        out = masked_group_norm_conv(layer, wavs[:, None], lens)
    for b, n in enumerate(LENGTHS):
        with torch.no_grad():
            ref = layer(wavs[b : b + 1, None, :n])[0]
        t = ref.shape[-1]
        assert float((out[b, :, :t] - ref).abs().max() / ref.abs().max()) < 1e-6
        assert torch.all(out[b, :, t:] == 0)


@pytest.mark.parametrize("kind", ["wavlm", "hubert"])
@pytest.mark.parametrize("attention", ATTENTION_PATHS)
def test_no_host_sync_per_forward(kind, attention):
    up = HFSpeechSSL(model(kind), False, attention)
    wavs, lens = batch()
    with DeviceSyncs() as syncs:  # the model and the audio on the device, the lengths uploaded by the model
        syncs.mark_module(up)
        syncs.mark(wavs)
        up(wavs, lens)
    assert syncs.total == 0, dict(syncs.syncs)


def test_sync_counter_sees_implicit_and_explicit_reads():
    """The counter is not blind: transformers' own forward (boolean indexing) and a scalar read are seen."""
    m = model("hubert")
    wavs, lens = batch()
    mask = (torch.arange(wavs.shape[1])[None] < lens[:, None]).long()
    with DeviceSyncs() as syncs, torch.no_grad():
        syncs.mark_module(m)
        syncs.mark(wavs, mask, lens)
        m(wavs, attention_mask=mask)
        float(lens.sum())
    assert syncs.syncs["index_put_ (boolean mask)"] + syncs.syncs["index_put (boolean mask)"] >= 1, dict(syncs.syncs)
    assert syncs.syncs["float"] == 1


@pytest.mark.parametrize("kind", ["wavlm", "hubert"])
def test_flops_include_attention(kind):
    """Counted FLOPs equal on every path, and the attention share is the formula's 4 B H T^2 d per layer."""
    from repro.bench.extract import flops_per_audio_second

    m = model(kind)
    seconds = 2.0
    counts = {a: flops_per_audio_second(HFSpeechSSL(m, False, a), seconds) * seconds for a in ATTENTION_PATHS}
    assert counts["sdpa"] == counts["eager"] == counts["flex"]
    from torch.utils.flop_counter import FlopCounterMode

    t = int(m._get_feat_extract_output_lengths(torch.tensor(int(seconds * 16000))))
    cfg = m.config
    attention = 4 * t * t * cfg.hidden_size * cfg.num_hidden_layers  # QK^T and PV, 2 FLOPs per multiply-add
    with FlopCounterMode(display=False) as counter:
        HFSpeechSSL(m, False, "sdpa")(torch.zeros(1, int(seconds * 16000)), torch.tensor([int(seconds * 16000)]))
    by_op = counter.get_flop_counts()["Global"]
    sdpa = sum(v for op, v in by_op.items() if "attention" in str(op))
    assert sdpa == attention


def test_attention_setting_is_checked_at_profile_load(tmp_path, monkeypatch):
    from repro.config import ConfigError, load_profile
    from repro.config.schema import extraction as schema

    path = tmp_path / "p.yaml"
    path.write_text("extends: smoke\nname: p\nextraction:\n  attention: flex\n")
    assert load_profile(path).extraction.attention == "flex"
    assert schema.available_attention_paths() == ("sdpa", "flex", "eager")  # torch 2.9 has them all
    monkeypatch.setattr(schema, "available_attention_paths", lambda: ("sdpa", "eager"))
    with pytest.raises(ConfigError, match=r"p\.yaml: key 'extraction\.attention' is 'flex'.*paths here: sdpa, eager"):
        load_profile(path)


def test_attention_path_is_part_of_the_model_identity(monkeypatch):
    from repro import provenance
    from repro.config import load_profile

    profile = load_profile("smoke")
    name = profile.models.speech_ssl[0]
    before = provenance.model_identity(profile, name)
    assert before["attention_path"] == provenance.ATTENTION_PATH_VERSION
    monkeypatch.setattr(provenance, "ATTENTION_PATH_VERSION", provenance.ATTENTION_PATH_VERSION + 1)
    assert provenance.model_identity(profile, name) != before


def test_wavlm_attention_memory_at_16_seconds():
    """The attention block's peak at 16 s (12 heads, T = 799) is at least 3x lower on sdpa than on eager.
    Allocations, not timings: the same on any machine."""
    from repro.bench.attention import attention_peak_bytes

    torch.manual_seed(0)
    m = transformers.WavLMModel(transformers.WavLMConfig(num_hidden_layers=1, conv_dim=(32,) * 7)).eval()
    wav, n = torch.randn(1, 16 * 16000) * 0.1, torch.tensor([16 * 16000])
    eager, sdpa = (attention_peak_bytes(HFSpeechSSL(m, False, a), wav, n) for a in ("eager", "sdpa"))
    t_by_t = 12 * 799 * 799 * 4  # one [heads, T, T] float32 tensor
    assert eager > 4 * t_by_t and sdpa < 1.5 * t_by_t and eager / sdpa >= 3


def test_attention_bench_record(tmp_path):
    from repro.bench import run_benchmarks

    r = run_benchmarks(["attention"], tmp_path, echo=lambda _: None,
                       options={"attention": {"lengths": (2.0,), "repeats": 1, "model_config": TINY_HF}})["attention"]
    row = r["cases"]["2s"]
    assert set(row) >= {"eager", "sdpa"} and row["sdpa"]["max_relative_difference"] < 1e-5
    assert row["sdpa"]["attention_memory_reduction"] > 1 and (tmp_path / "attention.json").is_file()


def test_default_path_follows_the_models_own_choice():
    """Without a path: eager where transformers' eager was chosen for a model transformers also runs on SDPA;
    WavLM (eager only in transformers) runs this project's sdpa."""
    assert HFSpeechSSL(model("hubert"), False).attention == "eager"
    assert HFSpeechSSL(model("wavlm"), False).attention == "sdpa"
    hubert = model("hubert")
    hubert.config._attn_implementation = "sdpa"
    assert HFSpeechSSL(hubert, False).attention == "sdpa"
    with pytest.raises(Exception, match="extraction.attention is 'fused'; paths: sdpa, flex, eager"):
        HFSpeechSSL(hubert, False, "fused")
