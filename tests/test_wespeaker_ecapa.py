"""Our implementation of wespeaker's ECAPA_TDNN_GLOB_c512 and the checkpoint importer."""

import hashlib
import http.server
import json
import threading
import zipfile
from functools import partial

import pytest
import torch
from conftest import randomise_batchnorm

from repro.models.registry import load_upstream
from repro.models.upstream import pad_waveforms
from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch, wrap_wespeaker_ecapa
from repro.models.wespeaker_import import CheckpointError, read_state_dict
from repro.models.dino_head import DinoHead

TINY = WespeakerEcapaArch(channels=16, mfa_channels=48, embed_dim=12, scale=4, se_bottleneck=8,
                          attention_bottleneck=8)
TINY_ARGS = "{channels: 16, mfa_channels: 48, embed_dim: 12, scale: 4, se_bottleneck: 8, attention_bottleneck: 8}"



def _randomise_bn(model):
    return randomise_batchnorm(model, 0.1)


def test_published_architecture_has_wespeaker_names_shapes_and_size():
    """ECAPA_TDNN_GLOB_c512 (feat 80, emb 192, ASTP, emb_bn): 6.19M parameters as wespeaker reports."""
    sd = WespeakerEcapa().state_dict()
    assert sum(p.numel() for p in WespeakerEcapa().parameters()) == 6_191_104
    expect = {
        "layer1.conv.weight": (512, 80, 5), "layer1.bn.running_var": (512,),
        "layer2.se_res2block.0.conv.weight": (512, 512, 1),
        "layer2.se_res2block.1.convs.6.weight": (64, 64, 3), "layer3.se_res2block.1.bns.6.weight": (64,),
        "layer4.se_res2block.2.bn.bias": (512,), "layer4.se_res2block.3.linear1.weight": (128, 512),
        "layer4.se_res2block.3.linear2.weight": (512, 128),
        "conv.weight": (1536, 1536, 1), "pool.linear1.weight": (128, 4608, 1), "pool.linear2.weight": (1536, 128, 1),
        "bn.weight": (3072,), "linear.weight": (192, 3072), "bn2.running_mean": (192,),
    }
    for key, shape in expect.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer2.se_res2block.1.convs.7.weight" not in sd  # scale 8: 7 branches
    assert len(sd) == 226


def test_layers_shapes_frame_rates_and_embedding():
    torch.manual_seed(0)
    model = _randomise_bn(WespeakerEcapa(TINY)).eval()
    up = wrap_wespeaker_ecapa(model)
    info = up.layer_info()
    assert [l.name for l in info] == ["tdnn", "res2net1", "res2net2", "res2net3", "mfa"]
    assert [l.dim for l in info] == [16, 16, 16, 16, 48] and all(l.frame_rate == 100.0 for l in info)
    assert up.embedding_dim == 12
    wavs = [torch.randn(16000) * 0.1, torch.randn(7777) * 0.1]
    out = up(*pad_waveforms(wavs))
    expect = [1 + (16000 - 400) // 160, 1 + (7777 - 400) // 160]
    for h, n in zip(out.layers, out.lengths):
        assert n.tolist() == expect and h.shape[1] == max(expect)
    for b, w in enumerate(wavs):
        feats = up.frontend(w[None])
        assert torch.allclose(out.embedding[b], model(feats)[0], atol=1e-5)
        assert torch.allclose(out.layers[4][b, : expect[b]], model.frame_level(feats)[0].T, atol=1e-5)
        x1 = model.layer1(feats.transpose(1, 2))
        assert torch.allclose(out.layers[0][b, : expect[b]], x1[0].T, atol=1e-5)
        assert torch.allclose(out.layers[1][b, : expect[b]], model.layer2(x1)[0].T, atol=1e-5)


def _checkpoint_state(model: WespeakerEcapa, head: DinoHead) -> dict:
    """What wespeaker's average_dino_model.py writes: teacher keys, averaged (float counters)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({f"projection_head.{k}": v.clone() for k, v in head.state_dict().items()})
    return {k: (v.float() if k.endswith("num_batches_tracked") else v) for k, v in state.items()}


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(3)
    model = _randomise_bn(WespeakerEcapa(TINY)).eval()
    head = DinoHead(12, 32, hidden_dim=24, bottleneck_dim=6)
    path = tmp_path / "avg_model.pt"
    torch.save(_checkpoint_state(model, head), path)
    return model, head, path


def _register(tmp_path, monkeypatch, source, extra=""):
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"ws-tiny:\n  family: speaker_ssl\n  loader: wespeaker_ecapa\n  source: '{source}'\n  about: t\n"
                   f"  options:\n    arch: {TINY_ARGS}\n{extra}")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(reg))


def test_strict_load_of_avg_model_and_training_checkpoint_layouts(tmp_path, monkeypatch, tiny_checkpoint):
    model, head, path = tiny_checkpoint
    _register(tmp_path, monkeypatch, path)
    up = load_upstream("ws-tiny", tmp_path / "models")
    wav = torch.randn(1, 12000) * 0.1
    assert torch.allclose(up(wav, torch.tensor([12000])).embedding, model(up.frontend(wav)), atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(up.encoder.state_dict()[k], v), k
    # a training checkpoint: {"model": {t_model.*, s_model.*}} saved from a DDP-wrapped module
    state = _checkpoint_state(model, head)
    noise = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    full = {"model": {**{f"module.t_model.{k}": v for k, v in state.items()},
                      **{f"module.s_model.{k}": v for k, v in noise.items()},
                      "module.dino_loss_calculator.center": torch.zeros(1, 32)},
            "optimizer": {"state": {}, "param_groups": []}}
    torch.save(full, tmp_path / "model_150.pt")
    teacher = read_state_dict(tmp_path / "model_150.pt")
    assert set(teacher) == set(state) and all(torch.equal(teacher[k], state[k]) for k in state)


def test_mismatched_checkpoints_are_refused_with_the_differences(tmp_path, monkeypatch, tiny_checkpoint):
    model, head, path = tiny_checkpoint
    state = torch.load(path)
    _register(tmp_path, monkeypatch, tmp_path / "bad.pt")
    cases = {
        "missing: bn2.bias": {k: v for k, v in state.items() if not k.startswith("bn2.")},
        "unexpected: extra.weight": {**state, "extra.weight": torch.zeros(2)},
        "wrong shape: linear.weight (12, 64) (expected (12, 96))": {**state, "linear.weight": torch.zeros(12, 64)},
    }
    for i, (message, bad) in enumerate(cases.items()):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError) as err:  # each its own import (a changed file is refused, below)
            load_upstream("ws-tiny", tmp_path / f"models{i}")
        assert message in str(err.value) and "bad.pt" in str(err.value)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_of_a_published_zip_records_and_enforces_its_digest(tmp_path, monkeypatch, tiny_checkpoint):
    model, _, path = tiny_checkpoint
    served = tmp_path / "www"
    served.mkdir()
    archive = served / "voxceleb_ecapa512_dino.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "voxceleb_ecapa512_dino/avg_model.pt")
        zf.writestr("voxceleb_ecapa512_dino/config.yaml",
                    "model: ECAPA_TDNN_GLOB_c16\nmodel_args: {feat_dim: 80, embed_dim: 12, pooling_func: ASTP, "
                    "emb_bn: true}\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/voxceleb_ecapa512_dino.zip"
    try:
        _register(tmp_path, monkeypatch, url)
        models = tmp_path / "models"
        up = load_upstream("ws-tiny", models)
        wav = torch.randn(1, 9000) * 0.1
        assert torch.allclose(up(wav, torch.tensor([9000])).embedding, model(up.frontend(wav)), atol=1e-6)
        record = json.loads((models / "ws-tiny" / "source.json").read_text())
        assert record["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        # the server now gives other bytes: the recorded digest refuses them
        (models / "ws-tiny" / "download").unlink()
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr("other.txt", "changed")
        with pytest.raises(CheckpointError, match="does not match the expected"):
            load_upstream("ws-tiny", models)
        # a pinned digest in the registry is enforced too, and a config for another model is refused
        _register(tmp_path, monkeypatch, url, f"    sha256: '{'0' * 64}'\n")
        with pytest.raises(CheckpointError, match="does not match"):
            load_upstream("ws-tiny", tmp_path / "models2")
    finally:
        server.shutdown()


def test_config_of_another_architecture_is_refused(tmp_path, monkeypatch, tiny_checkpoint):
    _, _, path = tiny_checkpoint
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "x/avg_model.pt")
        zf.writestr("x/config.yaml", "model: ResNet34\nmodel_args: {feat_dim: 80, embed_dim: 256}\n")
    _register(tmp_path, monkeypatch, archive)
    with pytest.raises(CheckpointError, match="model ResNet34 .expected ECAPA_TDNN_GLOB_c16.*embed_dim 256"):
        load_upstream("ws-tiny", tmp_path / "models")


def test_registry_entry_of_the_public_dino_stand_in():
    from repro.models.registry import load_registry

    spec = load_registry()["ecapa-dino-wespeaker"]
    assert spec.family == "speaker_ssl" and spec.loader == "wespeaker_ecapa" and spec.stand_in_for
    assert spec.source.startswith("https://") and "voxceleb_ecapa512_dino" in spec.source
    assert WespeakerEcapaArch.from_dict(spec.options["arch"]) == WespeakerEcapaArch()
