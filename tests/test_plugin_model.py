"""A model given as `path/to/file.py:factory` behaves like a registered one: its outputs land in the
profile's folders under one safe name, the paper stage reads them, and its family is the profile's."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from click.testing import CliRunner

from repro.cli import main
from repro.config import ConfigError, load_profile
from repro.models.registry import family_of
from repro.paper.results import ResultReader, models_by_family
from repro.workspace import Workspace, model_folder

PROFILE = """
name: plugin
description: a user's model given as a file
seed: 0
corpus: {{kind: synthetic}}
models: {{speech_ssl: [], speaker_ssl: ["{ref}"], speaker_sup: []}}
tasks: [KS]
extraction: {{device: cpu, max_batch_seconds: 16}}
probing:
  device: cpu
  head_dim: 16
  tasks:
    KS: {{steps: 4, batch_size: 4, lr_grid: [0.01], eval_every: 2}}
cka: {{task: KS, device: cpu}}
"""


def test_model_folder_names_are_safe_and_distinct():
    assert model_folder("tiny-wavlm") == "tiny-wavlm"
    a, b = model_folder("/home/me/models/m.py:build"), model_folder("/home/you/models/m.py:build")
    assert a.startswith("m.py_build-") and b.startswith("m.py_build-") and a != b
    assert "/" not in a and ":" not in a and model_folder("../x.py:f") != ".."


def test_a_plugin_model_is_extracted_probed_and_read_in_the_profile_folders(tmp_path, workspace_env, hf_folder,
                                                                           tiny_corpus):
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_model.py").write_text(
        "from repro.models.hf_ssl import load_hf_ssl\n\n\n"
        f"def build():\n    return load_hf_ssl({str(hf_folder('hubert'))!r})\n")
    ref = f"{user / 'my_model.py'}:build"
    prof = tmp_path / "plugin.yaml"
    prof.write_text(PROFILE.format(ref=ref))
    ws = Workspace.for_profile(str(prof))
    shutil.copytree(tiny_corpus, ws.corpus_dir)
    res = CliRunner().invoke(main, ["run", "--profile", str(prof), "--quiet", "--stage", "features",
                                    "--stage", "probe", "--stage", "cka"])
    assert res.exit_code == 0, res.output
    written = [p for p in user.rglob("*") if p.suffix != ".pyc" and p.name not in ("my_model.py", "__pycache__")]
    assert not written and not list(tmp_path.glob("*:build*"))  # nothing lands beside the user's file
    folder = model_folder(ref)
    assert (ws.results / "probing" / folder / "KS" / "best.json").is_file()
    assert (ws.features_dir / folder / "KS" / "train" / "meta.json").is_file()
    assert (ws.results / "cka" / f"{folder}__{folder}.npz").is_file()
    assert ResultReader(ws).probe(ref, "KS")["model"] == ref
    assert models_by_family(ws)["speaker_ssl"] == [ref] and family_of(ws.profile, ref) == "speaker_ssl"


def test_a_registered_model_in_another_family_list_is_refused():
    smoke = load_profile("smoke")
    wrong = dataclasses.replace(smoke, models=dataclasses.replace(smoke.models, speech_ssl=["tiny-wavlm", "tiny-ecapa-sup"],
                                                                  speaker_sup=[]))
    with pytest.raises(ConfigError, match="listed under models.speech_ssl, but its registry entry says family "
                                          "'speaker_sup'"):
        family_of(wrong, "tiny-ecapa-sup")
    speech = smoke.models.speech_ssl[0]
    twice = dataclasses.replace(smoke, models=dataclasses.replace(smoke.models, speaker_ssl=[speech]))
    with pytest.raises(ConfigError, match="exactly one of"):
        family_of(twice, speech)
