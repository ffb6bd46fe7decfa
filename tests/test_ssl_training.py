"""The masked-prediction pre-training recipes (HuBERT, WavLM) on the tiny synthetic corpus: publishing through
`save_pretrained`/`from_pretrained`, determinism, resume, training utterances only, bad input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from repro import recipes
from repro.recipes.lifecycle import CHECKPOINT
from repro.cli import main
from repro.config import ConfigError, load_profile
from repro.data.manifest import load_task
from repro.models.registry import load_upstream
from repro.models.upstream import ModelUnavailableError
from repro.recipes.speech_ssl import train as T
from repro.recipes.speech_ssl.model import span_mask
from repro.recipes.speech_ssl.targets import FrameGrid, mfcc_features
from repro.workspace import Workspace

PROFILE = """
name: ssl
description: masked-prediction pre-training test
seed: 0
corpus: {kind: synthetic}
models: {speech_ssl: [tiny-hubert-mp], speaker_ssl: [], speaker_sup: []}
ssl_training:
  train_tasks: [PR, IC, SID]
  device: cpu
  threads: 1
  log_every: 1
  checkpoint_every: 2
  require_above_majority: false
  RECIPE:
    output_name: OUTPUT
    arch: {hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 32,
           conv_dim: [8, 8, 8, 8, 8, 8, 8], num_conv_pos_embeddings: 8, num_conv_pos_embedding_groups: 2,
           layerdrop: 0.0, hidden_dropout: 0.1}
    steps: 5
    batch_size: 4
    crop_seconds: 1.0
    min_seconds: 0.5
    clusters: CLUSTERS
    kmeans_n_init: 1
    final_dim: 8
    lr: 0.002
    warmup_fraction: 0.2
    heldout_utterances: 4
    EXTRA
"""
OUTPUT = {"hubert": "tiny-hubert-mp", "wavlm": "tiny-wavlm-mp"}


def make_ws(root: Path, corpus: Path, recipe: str = "hubert", clusters: int = 8, extra: str = "") -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    prof = root / "ssl.yaml"
    prof.write_text(PROFILE.replace("RECIPE", recipe).replace("OUTPUT", OUTPUT[recipe])
                    .replace("CLUSTERS", str(clusters)).replace("EXTRA", extra))
    ws = Workspace(load_profile(prof), root / "work", root / "results", root / "figures")
    ws.work.mkdir(parents=True, exist_ok=True)
    if not ws.corpus_dir.exists():
        ws.corpus_dir.symlink_to(corpus)
    return ws


def weights(ws: Workspace, recipe: str) -> bytes:
    info = json.loads((ws.models_dir / OUTPUT[recipe] / "model.json").read_text())
    return (ws.models_dir / OUTPUT[recipe] / info["weights_file"]).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["hubert", "wavlm"])
def test_same_seed_same_weights_and_a_resumed_run_equals_an_uninterrupted_one(recipe, tiny_corpus, tmp_path):
    extra = "mix_prob: 0.5" if recipe == "wavlm" else ""
    straight = make_ws(tmp_path / "a", tiny_corpus, recipe, extra=extra)
    info = recipes.train(straight, recipe, progress=False)
    assert info["steps"] == 5 and info["kind"] == "hf_pretrained" and info["recipe"] == recipe
    again = make_ws(tmp_path / "b", tiny_corpus, recipe, extra=extra)
    assert recipes.train(again, recipe, progress=False) == info
    assert weights(again, recipe) == weights(straight, recipe), "same seed, different weights"
    resumed = make_ws(tmp_path / "c", tiny_corpus, recipe, extra=extra)
    with pytest.raises(recipes.TrainingInterrupted):
        T.SslPretraining(resumed, recipe).train(progress=False, stop_after_step=3)  # crash after step 3; checkpoint at 2
    assert not (resumed.models_dir / OUTPUT[recipe]).exists()
    assert torch.load(recipes.run_dir(resumed, recipe) / CHECKPOINT)["step"] == 2
    assert T.SslPretraining(resumed, recipe).train(progress=False) == info
    assert weights(resumed, recipe) == weights(straight, recipe), "resumed model differs"
    for f in ("train_log.jsonl", "model.json"):
        assert (resumed.models_dir / OUTPUT[recipe] / f).read_text() == (straight.models_dir / OUTPUT[recipe] / f).read_text()
    timing = json.loads((recipes.run_dir(resumed, recipe) / "timing.json").read_text())
    assert timing["resumed_from"] == 2 and timing["steps_run"] == 3
    # the published folder is a transformers checkpoint: the registry loads it with from_pretrained
    up = load_upstream(OUTPUT[recipe], straight.models_dir)
    assert type(up.model).__name__ == {"hubert": "HubertModel", "wavlm": "WavLMModel"}[recipe]
    assert [l.dim for l in up.layer_info()] == [16] * 3
    out = up(torch.randn(1, 16000), torch.tensor([16000]))
    assert out.layers[0].shape == (1, 49, 16)
    # trained: the weights moved away from the initialisation of the same seed
    cfg = getattr(straight.profile.ssl_training, recipe)
    init = T.build_backbone(recipe, dict(cfg.arch), cfg.seed)
    trained = up.model.state_dict()
    moved = [k for k, v in init.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert len(moved) > 10
    # the same settings again: nothing is retrained, the model is reused (CLI)
    res = CliRunner(env={"REPRO_WORK": str(straight.work_root), "REPRO_RESULTS": str(tmp_path / "results"),
                         "REPRO_FIGURES": str(tmp_path / "figures")}).invoke(
        main, ["train", "-r", recipe, "-p", str(tmp_path / "a" / "ssl.yaml")])
    assert res.exit_code == 0 and "exists" in res.output and "masked-prediction accuracy" in res.output, res.output


def test_only_training_utterances_are_heard(tiny_corpus, tmp_path):
    ws = make_ws(tmp_path, tiny_corpus)
    data = T.corpus(ws, "hubert")
    heard = {u.sha256 for u in data.train + data.heldout}
    assert len(data.heldout) == 4 and not {u.id for u in data.train} & {u.id for u in data.heldout}
    held_out_of_training = {u.sha256 for t in ("PR", "KS", "IC", "SID", "ASV", "ER") for u in load_task(tiny_corpus, t)
                            if u.split != "train"}
    assert held_out_of_training and not heard & held_out_of_training
    train = {u.sha256 for t in ("PR", "IC", "SID") for u in load_task(tiny_corpus, t, "train")
             if u.num_samples >= 8000}
    assert heard == train  # every long-enough training utterance of the listed tasks, each audio once
    # the batches read only those utterances: every crop is a piece of a training utterance's audio
    audio = T.P.AudioBank(data.train)
    targets = T.make_targets(audio, T.P.AudioBank(data.heldout), data.grid, data.kmeans, tmp_path / "t",
                             data.targets_key, "ssl_training.hubert")[0]
    wavs, labels, mask = T.Batches(ws.profile.ssl_training.hubert, audio, targets, data.grid)(0)
    assert wavs.shape[0] == 4 and labels.shape == mask.shape == (4, data.grid.frames(wavs.shape[1]))
    assert mask.any() and not mask.all()


def test_targets_sit_on_the_model_frames_and_masks_are_seeded():
    grid = FrameGrid.of_cnn([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    assert (grid.hop, grid.window) == (320, 400)
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert mfcc_features(wav, grid).shape == (49, 39)
    a, b = span_mask((2, 100), 0.8, 10, 2, seed=5), span_mask((2, 100), 0.8, 10, 2, seed=5)
    assert np.array_equal(a, b) and not np.array_equal(a, span_mask((2, 100), 0.8, 10, 2, seed=6))
    state = np.random.get_state()[1].copy()
    span_mask((2, 100), 0.8, 10, 2, seed=7)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global generator is left as it was


def test_fewer_frames_than_clusters_is_one_line_naming_the_setting(tiny_corpus, tmp_path):
    ws = make_ws(tmp_path, tiny_corpus, clusters=10**6)
    with pytest.raises(ConfigError, match=r"ssl_training\.hubert\.clusters is 1000000 but .* frames") as err:
        recipes.train(ws, "hubert", progress=False)
    assert "\n" not in str(err.value)


def test_unknown_recipe_is_one_line_listing_the_recipes(tiny_corpus, tmp_path):
    ws = make_ws(tmp_path, tiny_corpus)
    with pytest.raises(ConfigError, match=r"unknown recipe 'bert'; recipes: supervised, dino, hubert, wavlm"):
        recipes.train(ws, "bert", progress=False)
    res = CliRunner().invoke(main, ["train", "-r", "bert", "-p", str(tmp_path / "ssl.yaml")])
    assert res.exit_code == 2 and "'bert' is not one of" in res.output


def test_checkpoint_of_another_configuration_is_refused_until_forced(tiny_corpus, tmp_path):
    ws = make_ws(tmp_path, tiny_corpus)
    with pytest.raises(recipes.TrainingInterrupted):
        T.SslPretraining(ws, "hubert").train(progress=False, stop_after_step=2)
    changed = make_ws(tmp_path, tiny_corpus, extra="mask_length: 5")
    res = CliRunner(env={"REPRO_WORK": str(ws.work_root), "REPRO_RESULTS": str(tmp_path / "results"),
                         "REPRO_FIGURES": str(tmp_path / "figures")}).invoke(
        main, ["train", "-r", "hubert", "-p", str(tmp_path / "ssl.yaml")])
    ckpt = recipes.run_dir(changed, "hubert") / CHECKPOINT
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{ckpt}: checkpoint of another configuration" in res.output and "--force" in res.output
    info = T.SslPretraining(changed, "hubert").train(progress=False, force=True)
    assert info["steps"] == 5 and torch.load(ckpt)["step"] == 5


def test_a_published_model_is_judged_by_its_provenance_stamp(tiny_corpus, tmp_path, capsys):
    """model.json records the model's stamp, and `is_complete` against it alone decides a reuse: a stamp
    naming other targets or an unstamped model.json (an earlier version's `config_hash`) is published again
    from its finished checkpoint, one line saying why; a setting the stamp covers refuses that checkpoint."""
    from repro.provenance import is_complete, trained_model_key

    ws = make_ws(tmp_path, tiny_corpus)
    info = recipes.train(ws, "hubert", progress=False)
    path = ws.models_dir / "tiny-hubert-mp" / "model.json"
    assert not {"config_hash", "settings", "targets"} & set(info)
    assert is_complete(info["provenance"], recipes.stamp(ws, "hubert"))
    assert info["provenance"]["settings"] == trained_model_key(ws.profile, "hubert")
    assert info["provenance"]["inputs"]["targets"] == T.corpus(ws, "hubert").targets_key

    def trained_again(why: str) -> None:
        capsys.readouterr()
        assert recipes.train(ws, "hubert", progress=True) == info
        lines = [l for l in capsys.readouterr().out.splitlines() if "not complete" in l]
        assert lines == [f"{path.parent}: not complete ({why}): trained again"]

    path.write_text(json.dumps({**info, "provenance": {**info["provenance"], "inputs": {"trainer": 1, "targets": "x"}}}))
    trained_again("made from other inputs (targets)")
    path.write_text(json.dumps({k: v for k, v in info.items() if k != "provenance"} | {"config_hash": "0123abcd"}))
    trained_again("it has no stamp (made by an earlier version)")
    changed = make_ws(tmp_path, tiny_corpus, extra="mask_length: 5")
    with pytest.raises(recipes.CheckpointMismatchError, match="checkpoint of another configuration"):
        recipes.train(changed, "hubert", progress=True)
    assert f"{path.parent}: not complete (made under other settings): trained again" in capsys.readouterr().out


def test_a_run_no_better_than_the_majority_cluster_is_not_published(tiny_corpus, tmp_path):
    ws = make_ws(tmp_path, tiny_corpus, extra="lr: 1.0e-12")
    prof = tmp_path / "ssl.yaml"
    prof.write_text(prof.read_text().replace("require_above_majority: false", "require_above_majority: true"))
    ws = Workspace(load_profile(prof), ws.work_root, ws.results_root, ws.figures_root)
    with pytest.raises(recipes.TrainingFailed, match="not above the majority-cluster rate"):
        recipes.train(ws, "hubert", progress=False)
    assert (recipes.run_dir(ws, "hubert") / "failure.json").is_file() and not (ws.models_dir / "tiny-hubert-mp").exists()


def test_untrained_model_names_the_command_that_trains_it(tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"repro train --profile smoke --recipe wavlm"):
        load_upstream("tiny-wavlm-mp", tmp_path / "work" / "smoke" / "models")


def test_cost_estimate_counts_flops_per_step(tiny_corpus, tmp_path):
    ws = make_ws(tmp_path, tiny_corpus)
    e = recipes.estimate(ws, "hubert", 100.0)
    assert e["steps"] == 5 and e["utterances"] == len(T.corpus(ws, "hubert").train)
    assert e["flops_per_step"] > 1e6 and e["total_flops"] == pytest.approx(5 * e["flops_per_step"])


def test_the_smoke_profile_pretrains_the_twins_of_the_random_tiny_models():
    from repro.models.registry import load_registry

    p, reg = load_profile("smoke"), load_registry()
    assert p.ssl_training.pipeline_recipes == ["hubert", "wavlm"]
    for recipe, twin in (("hubert", "tiny-hubert"), ("wavlm", "tiny-wavlm")):
        cfg = getattr(p.ssl_training, recipe)
        assert cfg.output_name == f"{twin}-mp" and cfg.output_name in p.models.speech_ssl
        assert twin not in p.models.speech_ssl  # the random twins stay in the registry, for fast tests
        config = reg[twin].options["config"]
        assert {k: cfg.arch[k] for k in config} == config  # same class and sizes as the random twin
    assert p.ssl_training.hubert.mix_prob == 0.0 and p.ssl_training.wavlm.mix_prob == 0.2


def test_the_train_stage_runs_the_profiles_ssl_recipes(tiny_corpus, tmp_path):
    from repro.pipeline import stage_train

    ws = make_ws(tmp_path, tiny_corpus)
    prof = tmp_path / "ssl.yaml"
    prof.write_text(prof.read_text().replace("  device: cpu\n", "  device: cpu\n  pipeline_recipes: [hubert]\n", 1))
    ws = Workspace(load_profile(prof), ws.work_root, ws.results_root, ws.figures_root)
    assert ws.profile.ssl_training.pipeline_recipes == ["hubert"]
    [info] = stage_train(ws, progress=False)
    assert info.name == "tiny-hubert-mp" and info.metric == "accuracy" and (ws.models_dir / "tiny-hubert-mp" / "config.json").is_file()
    assert stage_train(ws, progress=False) == [info]  # kept: the same settings and data


@pytest.mark.slow
def test_single_threaded_recipes_train_side_by_side_to_the_bytes_they_train_alone(tiny_corpus, tmp_path, monkeypatch,
                                                                                    capsys):
    from repro.pipeline import stage_train
    from repro.recipes import side_by_side
    from repro.runtime import DistEnv

    block = PROFILE[PROFILE.index("  RECIPE:"):]
    text = (PROFILE + block.replace("RECIPE", "wavlm").replace("OUTPUT", OUTPUT["wavlm"]))
    text = (text.replace("RECIPE", "hubert").replace("OUTPUT", OUTPUT["hubert"]).replace("CLUSTERS", "8")
            .replace("EXTRA", "").replace("  device: cpu\n", "  device: cpu\n  pipeline_recipes: [hubert, wavlm]\n", 1))
    spaces = []
    for side in ("alone", "beside"):
        ws = make_ws(tmp_path / side, tiny_corpus)
        (tmp_path / side / "ssl.yaml").write_text(text)
        spaces.append(Workspace(load_profile(tmp_path / side / "ssl.yaml"), ws.work_root, ws.results_root,
                                ws.figures_root))
    alone, beside = spaces
    monkeypatch.setattr(side_by_side, "available_cores", lambda: 1)
    assert side_by_side.plan(beside, ["hubert", "wavlm"]) == ([], 0)  # one core: one after the other
    monkeypatch.setattr(side_by_side, "available_cores", lambda: 2)
    assert side_by_side.plan(beside, ["hubert", "wavlm"]) == (["hubert", "wavlm"], 2)
    assert side_by_side.plan(beside, ["hubert", "wavlm"], DistEnv(1, 2, 1, torch.device("cpu"))) == ([], 0)
    infos = [recipes.train(alone, r, progress=False) for r in ("hubert", "wavlm")]
    capsys.readouterr()
    outcomes = stage_train(beside, progress=True)
    assert "train: hubert, wavlm side by side, 2 processes at once" in capsys.readouterr().out
    assert [o.info for o in outcomes] == infos
    for r in ("hubert", "wavlm"):
        assert weights(beside, r) == weights(alone, r), f"{r} trained beside another differs from {r} alone"
    # published now: nothing left to train side by side; each process of a run reports its own id
    assert side_by_side.plan(beside, ["hubert", "wavlm"]) == ([], 0)
    ran = side_by_side.train(beside, ["hubert", "wavlm"], 2)
    assert [info for info, _ in ran.values()] == infos
    assert len({pid for _, pid in ran.values()} | {os.getpid()}) == 3
