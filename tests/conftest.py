"""Shared fixtures: synthetic corpora and tiny models, made once per test session.

A test that changes a corpus works on its own copy (`copy_corpus`), never on the session's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Models only the tests use: a random-weight tiny ECAPA-TDNN (the smoke profile's are trained).
TEST_REGISTRY = os.path.join(os.path.dirname(__file__), "test_models.yaml")
os.environ["REPRO_MODEL_REGISTRY"] = TEST_REGISTRY

# Tests compute as `python -m repro` does for the smoke profile: with pinned CPU numerics, whose variables
# act only when set before torch initialises (repro/cpu_numerics.py). A machine's own settings are kept.
from repro.cpu_numerics import PINNED_ENV  # noqa: E402

for _name, _value in PINNED_ENV.items():
    os.environ.setdefault(_name, _value)

from repro.config.schema import SynthConfig  # noqa: E402

TINY_SYNTH = SynthConfig(
    speakers=14, asv_speakers=4, asv_dev_speakers=2, dev_speakers=2, test_speakers=2,
    pr_per_speaker=2, ks_repeats=1, ks_unknown_per_speaker=1, ks_silence_per_speaker=1,
    ic_per_speaker=2, sid_per_speaker=3, er_per_style=1, er_folds=5, asv_per_speaker=3,
)

# A small HF speech SSL configuration: same CNN strides (50 frames/s), 2 Transformer layers.
TINY_HF = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
TINY_ECAPA = dict(channels=[16, 16, 16, 16, 48], lin_neurons=8, attention_channels=8, se_channels=8,
                  res2net_scale=2)


def randomise_batchnorm(model, mean_scale: float = 0.1):
    """Non-trivial BatchNorm running statistics (seeded): a wrong BatchNorm order or key, or padding leaking
    into a valid frame, changes the outputs."""
    import torch

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * mean_scale)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A synthetic corpus with 14 speakers and every task (about 250 clips)."""
    from repro.data.synth import make_corpus

    return make_corpus(tmp_path_factory.mktemp("tiny") / "corpus", TINY_SYNTH, seed=0, progress=False)


def copy_corpus(corpus: Path, dest: Path) -> Path:
    """A copy of a session's corpus at `dest` (its parents made), for a test that changes or moves it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(corpus, dest, symlinks=True))


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory):
    """The smoke profile's synthetic corpus (36 speakers, every task), made once per session."""
    from repro.config import load_profile
    from repro.data.synth import make_corpus

    smoke = load_profile("smoke")
    return make_corpus(tmp_path_factory.mktemp("smoke") / "corpus", smoke.corpus.synthetic, smoke.seed,
                       progress=False)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """Factory: folder of a randomly initialised tiny transformers model of a given type."""
    from repro.models.hf_ssl import save_random_hf_ssl

    made = {}

    def make(model_type: str = "wavlm", **overrides):
        key = (model_type, tuple(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp(f"hf-{model_type}")
            save_random_hf_ssl(folder, model_type, seed=0, **{**TINY_HF, **overrides})
            made[key] = folder
        return made[key]

    return make


@pytest.fixture
def workspace_env(tmp_path, monkeypatch):
    """Point the work/results/figures roots at a temporary folder."""
    for var, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


@pytest.fixture(autouse=True)
def _outputs_outside_the_clone(tmp_path, monkeypatch):
    """Results and figures of a test go to its temporary folder unless it names its own (`workspace_env`
    and the tests that set the variables override this), so no test writes results/ or paper_figures/
    into the clone and no two tests meet in one profile's folders."""
    for var, sub in (("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        if var not in os.environ:
            monkeypatch.setenv(var, str(tmp_path / sub))
