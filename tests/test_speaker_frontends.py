"""Front-ends equal the libraries' own feature extraction, and a wrong input scale is caught."""

import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from conftest import TINY_ECAPA
from repro.audio import read_audio
from repro.data.manifest import load_task
from repro.models import ecapa
from repro.models.registry import load_upstream
from repro.recipes.speaker.fbank import BatchedKaldiFbank

TOL = 1e-4


@pytest.fixture(scope="module")
def utterances(tiny_corpus):
    """Two corpus utterances (float in [-1, 1]) and their files."""
    utts = load_task(tiny_corpus, "ASV", "test")[:2]
    paths = [tiny_corpus / u.path for u in utts]
    return paths, [torch.from_numpy(read_audio(p))[None] for p in paths]


HYPERPARAMS = """\
    # speechbrain's format, as in speechbrain/spkrec-ecapa-voxceleb (tiny sizes)
    n_mels: 80
    pretrained_path: {folder}
    out_n_neurons: 5

    compute_features: !new:speechbrain.lobes.features.Fbank
        n_mels: !ref <n_mels>

    mean_var_norm: !new:speechbrain.processing.features.InputNormalization
        norm_type: sentence
        std_norm: False

    embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
        input_size: !ref <n_mels>
        channels: [16, 16, 16, 16, 48]
        kernel_sizes: [5, 3, 3, 3, 1]
        dilations: [1, 2, 3, 4, 1]
        attention_channels: 8
        se_channels: 8
        res2net_scale: 2
        lin_neurons: 8

    classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
        input_size: 8
        out_neurons: !ref <out_n_neurons>

    mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
        norm_type: global
        std_norm: False

    modules:
        compute_features: !ref <compute_features>
        mean_var_norm: !ref <mean_var_norm>
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>

    pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
        loadables:
            embedding_model: !ref <embedding_model>
            mean_var_norm_emb: !ref <mean_var_norm_emb>
            classifier: !ref <classifier>
        paths:
            embedding_model: !ref <pretrained_path>/embedding_model.ckpt
            mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
            classifier: !ref <pretrained_path>/classifier.ckpt
"""


@pytest.fixture(scope="module")
def speechbrain_folder(tmp_path_factory):
    """A speechbrain model folder (hyperparams.yaml + checkpoints) made with the library's own classes."""
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier
    from speechbrain.processing.features import InputNormalization

    folder = tmp_path_factory.mktemp("sb-model")
    torch.manual_seed(5)
    model = ecapa.speechbrain_ecapa(TINY_ECAPA)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():  # non-trivial BN statistics: a wrong normalisation would show
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    ecapa.save_ecapa_checkpoint(folder, model)
    torch.save(Classifier(input_size=8, out_neurons=5).state_dict(), folder / "classifier.ckpt")
    InputNormalization(norm_type="global", std_norm=False)._save(folder / "mean_var_norm_emb.ckpt")
    (folder / "hyperparams.yaml").write_text(textwrap.dedent(HYPERPARAMS).format(folder=folder))
    return folder


def test_speechbrain_frontend_and_embedding_equal_encoder_classifier(speechbrain_folder, utterances, tmp_path,
                                                                     monkeypatch):
    from speechbrain.inference.speaker import EncoderClassifier

    clf = EncoderClassifier.from_hparams(source=str(speechbrain_folder), savedir=str(tmp_path / "save"),
                                         run_opts={"device": "cpu"})
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"sb-tiny:\n  family: speaker_sup\n  loader: speechbrain_ecapa\n  source: {speechbrain_folder}\n"
                   "  about: t\n  options:\n    frontend: speechbrain\n    arch: {channels: [16, 16, 16, 16, 48], "
                   "lin_neurons: 8, attention_channels: 8, se_channels: 8, res2net_scale: 2}\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(reg))
    up = load_upstream("sb-tiny", tmp_path / "models")
    _, wavs = utterances
    for wav in wavs:
        with torch.no_grad():
            lib_feats = clf.mods.mean_var_norm(clf.mods.compute_features(wav), torch.ones(1))
            lib_emb = clf.encode_batch(wav)[0, 0]
        ours = up.frontend(wav)
        assert ours.shape == lib_feats.shape and (ours - lib_feats).abs().max() < TOL
        emb = up(wav, torch.tensor([wav.shape[1]])).embedding[0]
        assert (emb - lib_emb).abs().max() < TOL
        # a wrong input scale is visible: audio not in [-1, 1] floats changes the library's features
        wrong = clf.mods.mean_var_norm(clf.mods.compute_features(wav / 32768), torch.ones(1))
        assert (up.frontend(wav) - wrong).abs().max() > 100 * TOL


def _wespeaker_features(path) -> torch.Tensor:
    """wespeaker's inference front-end (cli/speaker.py): int16 samples as floats, Kaldi fbank, CMN."""
    pcm, sr = sf.read(str(path), dtype="int16")  # = torchaudio.load(path, normalize=False)
    feat = kaldi.fbank(torch.from_numpy(pcm.astype(np.float32))[None], num_mel_bins=80, frame_length=25,
                       frame_shift=10, sample_frequency=sr, window_type="hamming")
    return feat - feat.mean(dim=0)


def test_kaldi_frontend_equals_wespeaker_processing_and_catches_a_wrong_scale(utterances):
    paths, wavs = utterances
    front = ecapa.KaldiFbank(80)
    for path, wav in zip(paths, wavs):
        ref = _wespeaker_features(path)
        ours = front(wav)[0]
        assert ours.shape == ref.shape and (ours - ref).abs().max() < TOL
        # the same call without the int16 scaling (float audio in [-1, 1]) does not give wespeaker's features
        unscaled = kaldi.fbank(wav, num_mel_bins=80, frame_length=25, frame_shift=10, window_type="hamming")
        assert ((unscaled - unscaled.mean(0)) - ref).abs().max() > 100 * TOL
        # the batched training front-end computes the same features
        batched = BatchedKaldiFbank(80)(wav)[0]
        assert (batched - ref).abs().max() < TOL


def test_batched_fbank_dither_is_seeded_and_in_int16_units(utterances):
    _, wavs = utterances
    wav = wavs[0][:, :16000]
    fb = BatchedKaldiFbank(80, dither=1.0)
    a = fb(wav, [torch.Generator().manual_seed(7)])
    b = fb(wav, [torch.Generator().manual_seed(7)])
    c = fb(wav, [torch.Generator().manual_seed(8)])
    clean = BatchedKaldiFbank(80)(wav)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # dither is in int16 units: one step barely moves speech features, noise of std 1 on [-1, 1] audio dominates
    assert (a - clean).abs().mean() < 0.05
    assert (BatchedKaldiFbank(80, dither=32768.0)(wav, [torch.Generator().manual_seed(7)]) - clean).abs().mean() > 1
    with pytest.raises(ValueError, match="one torch.Generator per waveform"):
        fb(wav)


def test_public_supervised_entry_is_the_hub_model_with_its_recipe_architecture():
    """speechbrain's verification_ecapa.yaml (which loads spkrec-ecapa-voxceleb) sets these arguments."""
    from repro.models.registry import load_registry

    spec = load_registry()["ecapa-sup-speechbrain"]
    assert spec.source == "speechbrain/spkrec-ecapa-voxceleb"
    assert spec.revision == "0f99f2d0ebe89ac095bcc5903c4dd8f72b367286"
    assert spec.options["frontend"] == "speechbrain" and spec.stand_in_for
    arch = spec.options["arch"]
    assert arch["channels"] == [1024, 1024, 1024, 1024, 3072] and arch["kernel_sizes"] == [5, 3, 3, 3, 1]
    assert arch["dilations"] == [1, 2, 3, 4, 1] and arch["attention_channels"] == 128 and arch["lin_neurons"] == 192
    # the pinned embedding_model.ckpt is 83,316,686 bytes: our state dict's tensors fill all of it but the
    # pickle/zip bookkeeping (a few hundred bytes per tensor); another width or scale would not fit
    state = ecapa.speechbrain_ecapa(arch).state_dict()
    tensor_bytes = sum(v.numel() * v.element_size() for v in state.values())
    assert 83_316_686 - 600 * len(state) < tensor_bytes < 83_316_686
