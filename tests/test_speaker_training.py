"""The speaker-training recipes on the tiny synthetic corpus: resume, collapse, ranks, publishing."""

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from repro.cli import main
from repro.config import load_profile
from repro.models.registry import load_upstream
from repro.recipes.speaker import data as D
from repro.recipes import TrainingFailed, TrainingInterrupted, run_dir, stamp
from repro.recipes.speaker.train import SpeakerTraining
from repro.models.upstream import ModelUnavailableError
from repro.workspace import Workspace

PROFILE = """
name: spk
description: speaker training test
seed: 0
corpus: {kind: synthetic}
runtime: {threads: 1}
speaker_training:
  train_task: ASV
  train_split: train
  eval_split: test
  device: cpu
  num_workers: 0
  log_every: 1
  checkpoint_every: 2
  eval_every_epochs: 1
  grad_accumulation: ACCUM
  require_eer_improvement: false
  augment: {synthetic: true}
  supervised:
    output_name: tiny-ecapa-sup
    epochs: 2
    batch_size: 4
    chunk_seconds: 1.0
    lr_step_size: 2
    augmentations: [noise, reverb, drop_chunk]
    arch: {channels: [16, 16, 16, 16, 48], lin_neurons: 12, attention_channels: 8, se_channels: 8, res2net_scale: 2}
  dino:
    output_name: tiny-ecapa-dino
    epochs: 2
    batch_size: 4
    global_frames: 100
    local_frames: 50
    head_out_dim: 64
    head_hidden_dim: 32
    head_bottleneck_dim: 16
    warmup_epochs: 1
    num_avg: 2
    TEMPS
    arch: {channels: 16, mfa_channels: 48, embed_dim: 12, scale: 4, se_bottleneck: 8, attention_bottleneck: 8}
"""


def make_ws(root: Path, corpus: Path, accumulation: int = 1, temps: str = "") -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    prof = root / "spk.yaml"
    prof.write_text(PROFILE.replace("ACCUM", str(accumulation)).replace("TEMPS", temps))
    ws = Workspace(load_profile(prof), root / "work", root / "results", root / "figures")
    ws.work.mkdir(parents=True, exist_ok=True)
    ws.corpus_dir.symlink_to(corpus)
    return ws


def train_speaker(ws: Workspace, recipe: str, **kwargs) -> dict | None:
    """Train (or keep) the model of a speaker recipe; `stop_after_step` emulates a crash."""
    return SpeakerTraining(ws, recipe).train(**kwargs)


def weights(ws: Workspace, recipe: str) -> dict[str, torch.Tensor]:
    name = {"supervised": "tiny-ecapa-sup", "dino": "tiny-ecapa-dino"}[recipe]
    info = json.loads((ws.models_dir / name / "model.json").read_text())
    return torch.load(ws.models_dir / name / info["weights_file"])


@pytest.mark.parametrize("recipe", ["dino", "supervised"])
def test_resumed_run_gives_the_same_model_as_an_uninterrupted_one(recipe, tiny_corpus, tmp_path, monkeypatch):
    straight = make_ws(tmp_path / "a", tiny_corpus)
    info = train_speaker(straight, recipe, progress=False)
    assert info["steps"] == 4 and info["train"] == {"task": "ASV", "split": "train", "utterances": 10, "speakers": 10}
    resumed = make_ws(tmp_path / "b", tiny_corpus)
    with pytest.raises(TrainingInterrupted):
        train_speaker(resumed, recipe, progress=False, stop_after_step=3)  # crash after step 3; checkpoint at 2
    assert not (resumed.models_dir / info["name"]).exists()
    assert torch.load(resumed.work / "speaker_training" / info["name"] / "checkpoint.pt")["step"] == 2
    info_b = train_speaker(resumed, recipe, progress=False)
    a, b = weights(straight, recipe), weights(resumed, recipe)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed model differs"
    assert info_b == info
    for f in ("train_log.jsonl", "model.json"):
        a_text = (straight.models_dir / info["name"] / f).read_text()
        assert a_text == (resumed.models_dir / info["name"] / f).read_text()
    timing = json.loads((resumed.work / "speaker_training" / info["name"] / "timing.json").read_text())
    assert timing["resumed_from"] == 2 and timing["steps_run"] == 2
    # the published model loads through the registry; its embedding is the trained network's
    up = load_upstream(info["name"], straight.models_dir)
    assert [l.dim for l in up.layer_info()][:4] == [16] * 4 and up.embedding_dim == 12
    # the same settings again: nothing is retrained (CLI), the model is reused
    monkeypatch.setenv("REPRO_WORK", str(straight.work_root))
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("REPRO_FIGURES", str(tmp_path / "figures"))
    res = CliRunner().invoke(main, ["train", "-r", recipe, "-p", str(tmp_path / "a" / "spk.yaml")])
    assert res.exit_code == 0 and "exists" in res.output and "EER" in res.output


def test_a_published_model_is_judged_by_its_provenance_stamp(tiny_corpus, tmp_path, capsys):
    """model.json records the model's stamp, and `is_complete` against it alone decides a reuse: a stamp
    naming other inputs, a setting the stamp covers, a damaged or an unstamped model.json (an earlier
    version's `config_hash`) train again, one line saying why; the features stage refuses a damaged or an
    unstamped one in one line."""
    import dataclasses

    from repro.features.stage import StaleInputError, check_trained_model
    from repro.provenance import is_complete, trained_model_key

    ws = make_ws(tmp_path, tiny_corpus)
    info = train_speaker(ws, "supervised", progress=False)
    path = ws.models_dir / info["name"] / "model.json"
    assert "config_hash" not in info and "settings" not in info
    assert is_complete(info["provenance"], stamp(ws, "supervised"))
    assert info["provenance"]["settings"] == trained_model_key(ws.profile, "supervised")

    def trained_again(why: str, workspace: Workspace = ws) -> None:
        capsys.readouterr()
        again = train_speaker(workspace, "supervised", progress=True)
        assert is_complete(again["provenance"], stamp(workspace, "supervised"))
        lines = [l for l in capsys.readouterr().out.splitlines() if "not complete" in l]
        assert lines == [f"{path.parent}: not complete ({why}): trained again"]

    edited = {**info, "provenance": {**info["provenance"], "inputs": {**info["provenance"]["inputs"], "trainer": 0}}}
    path.write_text(json.dumps(edited))
    trained_again("made from other inputs (trainer)")
    path.write_text(json.dumps({k: v for k, v in info.items() if k != "provenance"} | {"config_hash": "0123abcd"}))
    with pytest.raises(StaleInputError, match=r"'tiny-ecapa-sup': it has no stamp \(made by an earlier version\)"):
        check_trained_model(ws, "tiny-ecapa-sup")
    trained_again("it has no stamp (made by an earlier version)")
    path.write_text('{"format": 1, "provenance": {"sett')
    with pytest.raises(StaleInputError, match=r"model.json: model 'tiny-ecapa-sup': its stamp cannot be read \(damaged\); "
                                              r"train it again with `repro train --profile \S*spk\.yaml --recipe supervised`"):
        check_trained_model(ws, "tiny-ecapa-sup")
    trained_again("its stamp cannot be read (damaged)")
    st = ws.profile.speaker_training
    lr = dataclasses.replace(ws.profile, speaker_training=dataclasses.replace(
        st, supervised=dataclasses.replace(st.supervised, lr=st.supervised.lr * 2)))
    trained_again("made under other settings", Workspace(lr, ws.work_root, ws.results_root, ws.figures_root))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_repro_train_reads_prepared_voxceleb2_and_fetched_augmentation(tiny_corpus, tmp_path, monkeypatch):
    """The real profiles' path with their defaults: VoxCeleb2 dev as published (m4a), `repro data
    prepare-vox2`, then `repro train`, with MUSAN and the RIRs where `repro data fetch` extracts them."""
    from repro.rehearse import corpora

    data = tmp_path / "data"
    sizes = dataclasses.replace(corpora.CI, vox2_speakers=2, vox2_per_speaker=2, musan_per_category=1,
                                rirs_per_room=1)
    corpora.make_voxceleb2(data, sizes, 0)
    corpora.make_augmentation(data, sizes, 0)
    prof = tmp_path / "spk.yaml"
    prof.write_text(PROFILE.replace("ACCUM", "1").replace("TEMPS", "")
                    .replace("  train_task: ASV\n  train_split: train\n", "")
                    .replace("  augment: {synthetic: true}\n", "") + f"data: {{root: {data}}}\n")
    monkeypatch.delenv("REPRO_DATA", raising=False)
    for var, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    ws = Workspace.for_profile(load_profile(prof))
    assert ws.profile.speaker_training.train_task == "VoxCeleb2"  # the default, as in the real profiles
    ws.work.mkdir(parents=True)
    ws.corpus_dir.symlink_to(tiny_corpus)  # the ASV trials it is evaluated on
    res = CliRunner().invoke(main, ["train", "-r", "supervised", "-p", str(prof)])
    assert res.exit_code != 0 and f"repro data prepare-vox2 --profile {prof}" in res.output, res.output
    res = CliRunner().invoke(main, ["data", "prepare-vox2", "-p", str(prof), "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", "-r", "supervised", "-p", str(prof)])
    assert res.exit_code == 0, res.output
    info = json.loads((ws.models_dir / "tiny-ecapa-sup" / "model.json").read_text())
    assert info["train"] == {"task": "VoxCeleb2", "split": "train", "utterances": 4, "speakers": 2}


def test_untrained_model_names_the_command_that_trains_it(tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"repro train --profile smoke --recipe dino"):
        load_upstream("tiny-ecapa-dino", tmp_path / "work" / "smoke" / "models")


def test_a_collapsing_dino_run_is_reported_and_not_published(tiny_corpus, tmp_path):
    # without sharpening (teacher temperature 10) DINO's teacher output is uniform for every input
    ws = make_ws(tmp_path, tiny_corpus, temps="warmup_teacher_temp: 10.0\n    teacher_temp: 10.0")
    with pytest.raises(TrainingFailed, match="uniform collapse"):
        train_speaker(ws, "dino", progress=False)
    failure = json.loads((ws.work / "speaker_training" / "tiny-ecapa-dino" / "failure.json").read_text())
    assert failure["collapse"]["collapsed"] and failure["collapse"]["teacher_entropy"] > 0.99
    assert not (ws.models_dir / "tiny-ecapa-dino").exists()


def test_collapse_detector_fires_on_collapsed_outputs_only(tiny_corpus):
    from repro.data.manifest import load_task
    from repro.models.ecapa import KaldiFbank
    from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch
    from repro.models.dino_head import DinoHead
    from repro.recipes.speaker.evaluate import collapse_report, embed
    from repro.audio import read_audio

    audio = [read_audio(tiny_corpus / u.path) for u in load_task(tiny_corpus, "ASV", "test")]
    torch.manual_seed(0)
    model = WespeakerEcapa(WespeakerEcapaArch(channels=16, mfa_channels=48, embed_dim=12, scale=4,
                                              se_bottleneck=8, attention_bottleneck=8))
    head = DinoHead(12, 64, 32, 16)
    raw = torch.from_numpy(embed(KaldiFbank(80), model, audio, torch.device("cpu"))).float()
    with torch.no_grad():  # healthy: embeddings standardised, as a trained emb_bn layer makes them
        model.bn2.running_mean.copy_(raw.mean(0))
        model.bn2.running_var.copy_(raw.var(0))
    emb = embed(KaldiFbank(80), model, audio, torch.device("cpu"))
    check = dict(center=None, temperature=0.07, min_embedding_std=0.01, min_teacher_kl=1e-3)
    healthy = collapse_report(emb, head, **check)
    assert not healthy.collapsed and healthy.teacher_kl > 0.1 and healthy.embedding_std > 0.5
    # constant embedding (the network ignores its input)
    with torch.no_grad():
        model.linear.weight.zero_()
    flat = collapse_report(embed(KaldiFbank(80), model, audio, torch.device("cpu")), None, **check)
    assert flat.collapsed and "same embedding" in flat.reasons[0] and flat.embedding_std < 1e-6
    # uniform teacher: every output unit has the same weights
    with torch.no_grad():
        head.last_layer.weight_v.copy_(head.last_layer.weight_v[:1].expand_as(head.last_layer.weight_v))
    uniform = collapse_report(emb, head, **check)
    assert uniform.collapsed and "uniform collapse" in uniform.reasons[0] and uniform.teacher_entropy > 0.99

    class OneHot(torch.nn.Module):  # one unit dominates whatever the input
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(12, 64))

        def forward(self, x):
            return x @ self.w * 0 + torch.eye(64)[3] * 5

    onehot = collapse_report(emb, OneHot(), **check)
    assert onehot.collapsed and "one-hot collapse" in onehot.reasons[0] and onehot.teacher_entropy < 0.01


def test_micro_batches_partition_the_step_and_every_rank_count_shares_them():
    from repro.micro_batches import rank_micro_batches

    for accum in (1, 2, 4):
        parts = [list(D.micro_batch_positions(16, accum, m)) for m in range(accum)]
        assert sum(parts, []) == list(range(16)) and len({len(p) for p in parts}) == 1
        for world in (1, 2, 3, 8):  # the ranks share the micro-batches; they never cut them further
            shares = [a for r in range(world) for a in rank_micro_batches(accum, world, r) if a >= 0]
            assert sorted(shares) == list(range(accum))
    with pytest.raises(ValueError, match="not divisible by speaker_training.grad_accumulation"):
        D.micro_batch_positions(10, 4, 0)
    # each epoch visits every utterance once (remainder dropped); epochs differ in order
    e0 = np.concatenate([D.step_utterances(3, s, 10, 3) for s in range(3)])
    e1 = np.concatenate([D.step_utterances(3, s, 10, 3) for s in range(3, 6)])
    assert len(set(e0)) == 9 and not np.array_equal(e0, e1)


def _rank_main(rank: int, root: str, recipe: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    ws_root = Path(root)
    prof = load_profile(ws_root / "spk.yaml")
    train_speaker(Workspace(prof, ws_root / "work", ws_root / "results", ws_root / "figures"), recipe, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("recipe,accumulation", [("dino", 2), ("supervised", 2), ("dino", 1)])
def test_two_gloo_ranks_train_the_single_process_model_to_the_byte(recipe, accumulation, tiny_corpus, tmp_path):
    """The same profile (grad_accumulation A) trained by one process and by two gloo ranks: A = 2
    (one micro-batch per rank and step) and A = 1 (rank 1 computes nothing) publish the same
    weights, BatchNorm running statistics included, the same log and the same EERs."""
    single = make_ws(tmp_path / "one", tiny_corpus, accumulation=accumulation)
    train_speaker(single, recipe, progress=False)
    multi = make_ws(tmp_path / "two", tiny_corpus, accumulation=accumulation)
    torch.multiprocessing.spawn(_rank_main, args=(str(tmp_path / "two"), recipe, _free_port()), nprocs=2)
    a, b = weights(single, recipe), weights(multi, recipe)
    assert sorted(a) == sorted(b) and any(k.endswith("running_var") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    name = {"supervised": "tiny-ecapa-sup", "dino": "tiny-ecapa-dino"}[recipe]
    info_a, info_b = (json.loads((ws.models_dir / name / "model.json").read_text()) for ws in (single, multi))
    assert info_a["eer"] == info_b["eer"] and info_a["provenance"] == info_b["provenance"]
    log_a, log_b = ((ws.models_dir / name / "train_log.jsonl").read_bytes() for ws in (single, multi))
    assert log_a == log_b and b'"loss"' in log_a
    timing = json.loads((run_dir(multi, recipe) / "timing.json").read_text())
    assert timing["world_size"] == 2


def test_cost_estimate_counts_flops_per_step_and_scales_with_batch_and_epochs(tiny_corpus, tmp_path):
    import dataclasses

    from repro.recipes.speaker.cost import estimate

    cfg = make_ws(tmp_path, tiny_corpus).profile.speaker_training.dino
    one = estimate("dino", cfg, 100, 10, tflops=1.0)
    two = estimate("dino", dataclasses.replace(cfg, batch_size=8, epochs=4), 100, 10, tflops=1.0)
    assert one["steps"] == 2 * (100 // 4) and two["steps"] == 4 * (100 // 8)
    assert one["flops_per_step"] > 0 and np.isclose(two["flops_per_step"], 2 * one["flops_per_step"], rtol=1e-6)
    assert np.isclose(one["gpu_hours"], one["steps"] * one["flops_per_step"] / 1e12 / 3600)
    # longer crops cost proportionally more (convolutions dominate)
    longer = estimate("dino", dataclasses.replace(cfg, global_frames=200, local_frames=100), 100, 10, tflops=1.0)
    assert 1.6 < longer["flops_per_step"] / one["flops_per_step"] < 2.1
