import textwrap

import pytest
import torch
from click.testing import CliRunner

from repro.cli import main
from repro.config import ConfigError
from repro.models.registry import UnknownModelError, load_registry, load_upstream, weights_fingerprint
from repro.models.upstream import ModelUnavailableError, Upstream


def test_unknown_model_lists_known_ones(tmp_path):
    with pytest.raises(UnknownModelError) as err:
        load_upstream("wavlm-huge", tmp_path)
    assert "wavlm-base-plus" in str(err.value) and "tiny-hubert" in str(err.value)


def test_registry_entries_are_valid_and_hub_models_are_pinned():
    reg = load_registry()
    assert {"wavlm-base-plus", "hubert-base", "ecapa-sup-speechbrain", "tiny-wavlm", "tiny-ecapa-sup"} <= set(reg)
    for name, spec in reg.items():
        if spec.loader in ("hf", "speechbrain_ecapa"):
            assert spec.revision and len(spec.revision) == 40, name
    # the random tiny speech SSL models stay beside their pre-trained twins (same classes and sizes)
    from repro.recipes import RECIPES

    for random_twin, trained in (("tiny-hubert", "tiny-hubert-mp"), ("tiny-wavlm", "tiny-wavlm-mp")):
        assert reg[random_twin].loader == "hf_random" and reg[trained].loader == "trained_hf"
        assert reg[trained].family == "speech_ssl" == reg[random_twin].family
        assert reg[trained].options["recipe"] == reg[random_twin].source
    for name, spec in reg.items():
        if spec.loader in ("trained_hf", "trained_ecapa"):
            assert RECIPES[spec.options["recipe"]].trains == ("speech SSL" if spec.loader == "trained_hf"
                                                               else "speaker"), name


def test_hub_model_without_pin_is_refused(tmp_path, monkeypatch):
    extra = tmp_path / "extra.yaml"
    extra.write_text("unpinned:\n  family: speech_ssl\n  loader: hf\n  source: someone/some-model\n  about: x\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(extra))
    with pytest.raises(ConfigError, match="pinned revision"):
        load_upstream("unpinned", tmp_path)


def test_one_registry_entry_adds_a_model(tmp_path, monkeypatch, hf_folder):
    """A researcher's model: one entry pointing at a local save_pretrained folder."""
    extra = tmp_path / "mine.yaml"
    extra.write_text(f"my-ssl:\n  family: speech_ssl\n  loader: hf\n  source: {hf_folder('wav2vec2')}\n  about: mine\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(extra))
    up = load_upstream("my-ssl", tmp_path)
    assert up.num_layers == 3
    out = CliRunner().invoke(main, ["models", "list"])
    assert out.exit_code == 0 and "my-ssl" in out.output and "tiny-wavlm" in out.output


def test_python_factory_reference(tmp_path):
    src = tmp_path / "mymodel.py"
    src.write_text(textwrap.dedent('''
        import torch
        from repro.models.upstream import LayerInfo, Upstream, UpstreamOutput

        class Mean(Upstream):
            def layer_info(self):
                return [LayerInfo("frames", 1, 100.0)]
            def frame_lengths(self, n):
                return [n // 160]
            def forward(self, wavs, n):
                t = wavs.shape[1] // 160
                x = wavs[:, : t * 160].reshape(len(wavs), t, 160).mean(-1, keepdim=True)
                return UpstreamOutput([x], self.frame_lengths(n))

        def build():
            return Mean()

        def wrong():
            return torch.nn.Linear(2, 2)
    '''))
    up = load_upstream(f"{src}:build", tmp_path)
    assert isinstance(up, Upstream) and up.layer_info()[0].name == "frames"
    with pytest.raises(ModelUnavailableError, match="must return a repro"):
        load_upstream(f"{src}:wrong", tmp_path)
    with pytest.raises(UnknownModelError, match="no function 'nope'"):
        load_upstream(f"{src}:nope", tmp_path)


def test_random_models_are_materialised_once_and_reproducibly(tmp_path, monkeypatch):
    extra = tmp_path / "random.yaml"
    extra.write_text("rand-ecapa:\n  family: speaker_sup\n  loader: ecapa_random\n  about: x\n"
                     "  options: {seed: 3, arch: {channels: [16, 16, 16, 16, 48], lin_neurons: 8, "
                     "attention_channels: 8, se_channels: 8, res2net_scale: 2}}\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(extra))
    a = load_upstream("rand-ecapa", tmp_path / "a")
    b = load_upstream("rand-ecapa", tmp_path / "b")
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert (tmp_path / "a" / "rand-ecapa" / "embedding_model.ckpt").is_file()
    c = load_upstream("tiny-hubert", tmp_path / "a")
    assert (tmp_path / "a" / "tiny-hubert" / "config.json").is_file() and c.num_layers == 13
    assert weights_fingerprint(c) != weights_fingerprint(load_upstream("tiny-wavlm", tmp_path / "a"))
