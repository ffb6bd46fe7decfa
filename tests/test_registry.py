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


SSL_PROFILE = """
name: mp
description: one masked-prediction model registered without its recipe
seed: 0
corpus: {kind: synthetic}
models: {speech_ssl: [my-mp], speaker_ssl: [], speaker_sup: []}
ssl_training:
  train_tasks: [PR]
  device: cpu
  threads: 1
  require_above_majority: false
  hubert:
    output_name: my-mp
    arch: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32,
           conv_dim: [8, 8, 8, 8, 8, 8, 8], num_conv_pos_embeddings: 8, num_conv_pos_embedding_groups: 2}
    steps: 1
    batch_size: 2
    crop_seconds: 0.5
    min_seconds: 0.5
    clusters: 4
    kmeans_n_init: 1
    final_dim: 8
    heldout_utterances: 2
"""


def test_a_trained_hf_entry_without_recipe_is_the_hubert_recipes_everywhere(tmp_path, monkeypatch, tiny_corpus):
    """`loader: trained_hf` without `options.recipe` means the model the hubert recipe trains: the registry
    loads it, the settings key names that recipe's settings, and the features stage accepts what it made."""
    from repro import provenance, recipes
    from repro.config import load_profile
    from repro.features.stage import load_profile_upstream
    from repro.workspace import Workspace

    extra = tmp_path / "mine.yaml"
    extra.write_text("my-mp:\n  family: speech_ssl\n  loader: trained_hf\n  about: a model our hubert recipe trains\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(extra))
    (tmp_path / "mp.yaml").write_text(SSL_PROFILE)
    ws = Workspace(load_profile(tmp_path / "mp.yaml"), tmp_path / "work", tmp_path / "results", tmp_path / "figures")
    ws.work.mkdir(parents=True)
    ws.corpus_dir.symlink_to(tiny_corpus)
    with pytest.raises(ModelUnavailableError, match="--recipe hubert"):  # not trained yet: the command that trains it
        load_profile_upstream(ws, "my-mp")
    info = recipes.train(ws, "hubert", progress=False)
    assert info["provenance"]["settings"] == provenance.model_identity(ws.profile, "my-mp")["trained"]
    up = load_profile_upstream(ws, "my-mp")  # not refused as stale
    assert type(up.model).__name__ == "HubertModel"


@pytest.mark.parametrize("entry, names", [
    ("loader: hf_randm\n  source: wavlm",
     ["loader 'hf_randm'; loaders: hf, hf_random, speechbrain_ecapa", "trained_hf, python"]),
    ("loader: trained_hf\n  options: {recipe: dino}", ["recipe 'dino'", "takes recipes hubert, wavlm"]),
    ("loader: hf_random\n  source: wavlm\n  options: {recipe: hubert}", ["recipe 'hubert'", "takes no recipe"]),
    ("loader: trained_ecapa\n  options: {recipe: dino}", ["family 'speech_ssl'", "trained_ecapa with recipe dino",
                                                          "makes speaker_ssl models"]),
    ("loader: ecapa_random", ["family 'speech_ssl'", "makes speaker_ssl or speaker_sup models"]),
    ("loader: hf", ["needs a 'source'", "loader hf"]),
])
def test_an_entry_that_disagrees_with_its_loader_is_refused_when_the_registry_is_read(tmp_path, monkeypatch, entry,
                                                                                    names):
    extra = tmp_path / "mine.yaml"
    extra.write_text(f"ok:\n  family: speech_ssl\n  loader: hf_random\n  source: wavlm\n  about: x\n"
                     f"bad:\n  family: speech_ssl\n  {entry}\n  about: x\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(extra))
    with pytest.raises(ConfigError) as err:
        load_registry()
    message = str(err.value)
    assert message.startswith(f"{extra}: model 'bad' ") and "\n" not in message
    for name in names:
        assert name in message, message
    res = CliRunner().invoke(main, ["models", "list"])  # the command line: one line, no traceback
    assert res.exit_code == 2 and res.output.strip() == f"error: {message}", res.output


def test_the_loader_table_agrees_with_the_recipes():
    from repro.models.loaders import FAMILIES, LOADERS
    from repro.recipes import RECIPES, section

    assert {l.trained_by for l in LOADERS.values()} == {None, "speaker_training", "ssl_training"}
    for loader in LOADERS.values():
        assert set(loader.families) <= set(FAMILIES) and loader.network in (None, "ecapa", "transformers")
        assert (loader.default_recipe in loader.recipes) if loader.trained else loader.default_recipe is None
        for recipe, family in loader.recipes.items():
            assert section(recipe) == loader.trained_by and family in loader.families, (loader.name, recipe)
            assert RECIPES[recipe].trains == ("speech SSL" if family == "speech_ssl" else "speaker")
