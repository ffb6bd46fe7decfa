"""One encoder call per padded batch of mixed lengths gives every utterance its layers and embedding alone."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_ECAPA, randomise_batchnorm
from repro.models import ecapa
from repro.models.upstream import pad_waveforms
from repro.util.device_syncs import DeviceSyncs
from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch, wrap_wespeaker_ecapa

TOL = 1e-5  # max |batched - alone| / max |alone|, per layer and for the embedding, float32
WS_TINY = WespeakerEcapaArch(channels=16, mfa_channels=48, embed_dim=12, scale=4, se_bottleneck=8,
                             attention_bottleneck=8)
MIXED = [16000, 128000, 23456, 77777, 16001, 40160, 99999, 16160]  # 1-8 s, all distinct



def _randomise_bn(model):
    return randomise_batchnorm(model, 0.2)


def _speechbrain(frontend="speechbrain"):
    torch.manual_seed(0)
    return ecapa.wrap_speechbrain_ecapa(_randomise_bn(ecapa.speechbrain_ecapa(TINY_ECAPA)), frontend)


def _wespeaker():
    torch.manual_seed(0)
    return wrap_wespeaker_ecapa(_randomise_bn(WespeakerEcapa(WS_TINY)))


UPSTREAMS = {"speechbrain": _speechbrain, "speechbrain-kaldi": lambda: _speechbrain("kaldi"),
             "wespeaker": _wespeaker}


@pytest.fixture(scope="module", params=list(UPSTREAMS))
def upstream(request):
    return UPSTREAMS[request.param]()


def _waves(lengths, seed=3):
    """Speech-like test signals: noise under a slow envelope, so frames differ in level."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        t = torch.arange(n) / 16000
        out.append(0.1 * torch.randn(n, generator=g) * (1.2 + torch.sin(2 * torch.pi * 1.3 * t)))
    return out


def _worst_relative_difference(up, wavs) -> float:
    out = up(*pad_waveforms(wavs))
    assert up.batched
    worst = 0.0
    for b, w in enumerate(wavs):
        alone = up._one_at_a_time(w[None], torch.tensor([len(w)]))
        n = alone.layers[0].shape[1]
        for got, ref, lengths in zip(out.layers, alone.layers, out.lengths):
            assert int(lengths[b]) == n
            assert (got[b, n:] == 0).all()  # padding frames are zero
            worst = max(worst, float((got[b, :n] - ref[0]).abs().max() / ref[0].abs().max()))
        ref = alone.embedding[0]
        worst = max(worst, float((out.embedding[b] - ref).abs().max() / ref.abs().max()))
    return worst


@pytest.mark.parametrize("lengths", [MIXED, [64000] * 3, [37123]], ids=["mixed-1-8s", "equal", "one"])
def test_batched_layers_and_embeddings_equal_one_at_a_time(upstream, lengths):
    assert _worst_relative_difference(upstream, _waves(lengths)) < TOL


def test_a_wrong_length_would_show(upstream):
    """The comparison can fail: the same audio declared 20 ms longer changes the utterance's layers."""
    wavs = _waves([40000, 64000])
    padded, lengths = pad_waveforms(wavs)
    honest = upstream(padded, lengths)
    wrong = upstream(padded, lengths + torch.tensor([320, 0]))
    n = int(honest.lengths[0][0])
    assert (honest.layers[4][0, :n] - wrong.layers[4][0, :n]).abs().max() > 1e3 * TOL
    assert torch.allclose(honest.layers[4][1], wrong.layers[4][1], atol=1e-5)


class _Ops(TorchDispatchMode):
    """Counts every dispatched aten op and the convolutions among them."""

    def __init__(self):
        super().__init__()
        self.ops, self.convolutions = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.convolutions += "convolution" in func.__name__
        return func(*args, **(kwargs or {}))


def _mark_on_device(syncs, up):
    """The model's parameters and buffers, and the tensors that speechbrain's feature modules (`Filterbank`)
    keep as plain attributes and move to the input's device at their first forward."""
    syncs.mark_module(up)
    for m in up.modules():
        if type(m).__module__.startswith("speechbrain.processing"):
            syncs.mark(*[v for v in vars(m).values() if isinstance(v, torch.Tensor)])


def _count(up, wavs):
    """(encoder calls, ops, host syncs) of one batched forward, the model and the audio on the device."""
    calls = []
    handle = up.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    padded, lengths = pad_waveforms(wavs)
    try:
        with DeviceSyncs() as syncs, _Ops() as ops:
            _mark_on_device(syncs, up)
            syncs.mark(padded)
            up(padded, lengths)
    finally:
        handle.remove()
    return len(calls), ops, dict(syncs.syncs)


def test_one_encoder_call_and_no_host_reads_whatever_the_lengths(upstream):
    convs = sum(isinstance(m, torch.nn.Conv1d) for m in upstream.encoder.modules())
    seen = {}
    for name, lengths in {"mixed": MIXED, "equal": [max(MIXED)] * len(MIXED), "one": [48000]}.items():
        encoder_calls, ops, host = _count(upstream, _waves(lengths))
        assert encoder_calls == 1, name
        assert ops.convolutions == convs, name  # every convolution once per batch
        assert host == {}, (name, host)
        seen[name] = ops.ops
    # the same kernels for 8 distinct lengths as for 8 equal ones (the CPU's Kaldi front-end takes more calls
    # for a batch of more samples: its count follows the batch's shape, never its lengths)
    assert seen["mixed"] == seen["equal"]


def test_one_at_a_time_is_what_the_counters_would_catch(upstream):
    """The counters see the old per-length loop: one encoder call and a host read per distinct length."""
    padded, lengths = pad_waveforms(_waves(MIXED[:3]))
    calls = []
    handle = upstream.encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with DeviceSyncs() as syncs:
            _mark_on_device(syncs, upstream)
            syncs.mark(padded, lengths)
            upstream._one_at_a_time(padded, lengths)
    finally:
        handle.remove()
    assert len(calls) == 3 and syncs.syncs["tolist"] >= 1


def test_model_forward_outside_a_batch_is_untouched():
    """The reflection hooks act only inside a batched call: training and direct calls see the library's code."""
    torch.manual_seed(0)
    model = _randomise_bn(ecapa.speechbrain_ecapa(TINY_ECAPA)).eval()
    feats = torch.randn(2, 150, 80)
    before = model(feats)
    ecapa.wrap_speechbrain_ecapa(model)
    assert torch.equal(model(feats), before)


@pytest.mark.parametrize("front", [ecapa.SpeechbrainFbank(80), ecapa.KaldiFbank(80)], ids=["speechbrain", "kaldi"])
def test_frontend_batch_equals_each_utterance_alone(front):
    wavs = _waves([16000, 50001, 30400, 401 + 160 * 7])
    padded, lengths = pad_waveforms(wavs)
    padded[0, 16000:] = 1.0  # what follows an utterance in the batch is not read, even if not zero
    feats, frames = front.batch(padded, lengths)
    assert torch.equal(frames, front.num_frames(lengths))
    assert feats.shape[:2] == (4, int(front.num_frames(torch.tensor(padded.shape[1]))))
    for b, w in enumerate(wavs):
        alone = front(w[None])[0]
        n = alone.shape[0]
        assert int(frames[b]) == n and (feats[b, n:] == 0).all()
        assert (feats[b, :n] - alone).abs().max() <= 1e-5 * alone.abs().max()


def test_kaldi_frontend_cut_into_calls_gives_the_same_features(monkeypatch):
    front = ecapa.KaldiFbank(80)
    padded, lengths = pad_waveforms(_waves([16000, 50001, 30400, 24000, 401]))
    whole, _ = front.batch(padded, lengths)
    monkeypatch.setattr(ecapa.KaldiFbank, "CPU_SAMPLES_PER_CALL", 2 * padded.shape[1])  # 2 rows per call
    cut, _ = front.batch(padded, lengths)
    assert (whole - cut).abs().max() <= 1e-6 * whole.abs().max()


class _MeanPooling(torch.nn.Module):
    """Another pooling: plain mean and standard deviation over time (`[B, 2C, 1]` as speechbrain's, or `[B, 2C]`)."""

    def __init__(self, keep_time_axis: bool):
        super().__init__()
        self.keep_time_axis = keep_time_axis

    def forward(self, x, lengths=None):
        stats = torch.cat([x.mean(dim=2), x.std(dim=2)], dim=1)
        return stats.unsqueeze(2) if self.keep_time_axis else stats


def test_uncovered_architectures_run_one_at_a_time_with_a_notice(capsys):
    torch.manual_seed(0)
    other_pooling = ecapa.speechbrain_ecapa(TINY_ECAPA)
    other_pooling.asp = _MeanPooling(True)
    zero_padded = ecapa.speechbrain_ecapa(TINY_ECAPA)
    zero_padded.blocks[2].res2net_block.blocks[0].conv.padding_mode = "constant"
    ws = WespeakerEcapa(WS_TINY)
    ws.pool = _MeanPooling(False)
    cases = {"sb-pool": (ecapa.wrap_speechbrain_ecapa, other_pooling, "asp (_MeanPooling)"),
             "sb-pad": (ecapa.wrap_speechbrain_ecapa, zero_padded, "'constant'"),
             "ws-pool": (wrap_wespeaker_ecapa, ws, "pool (_MeanPooling)")}
    wavs = _waves([16000, 24000])
    for name, (wrap, model, gap) in cases.items():
        up = wrap(model.eval(), name=name)
        notice = capsys.readouterr().err.strip().splitlines()
        assert len(notice) == 1 and notice[0].startswith(f"{name}: ") and gap in notice[0], notice
        assert "one at a time" in notice[0] and not up.batched
        out = up(*pad_waveforms(wavs))  # the fallback runs each length alone
        for b, w in enumerate(wavs):
            alone = up(w[None], torch.tensor([len(w)]))
            assert torch.equal(out.embedding[b], alone.embedding[0])
    _speechbrain()
    assert capsys.readouterr().err == ""  # a covered model prints nothing


def test_benchmark_records_rates_calls_and_agreement(tmp_path):
    import json

    from repro.bench import run_benchmarks

    lines = []
    run_benchmarks(["ecapa"], tmp_path, echo=lines.append,
                   options={"ecapa": {"repeats": 1, "pr_batches": 1, "pr_batch_seconds": 20.0, "mixed_items": 3,
                                      "crop_items": 2}})
    record = json.loads((tmp_path / "ecapa.json").read_text())
    assert set(record["models"]) == {"ecapa-sup-speechbrain (smoke)", "ecapa-dino-wespeaker (smoke)"}
    for model in record["models"].values():
        assert model["batched_forward"] and set(model["mixes"]) == {"pr", "mixed", "crops"}
        for mix, case in model["mixes"].items():
            calls = case["encoder_calls_per_batch"]
            assert calls["batched"] == 1 and calls["alone"] == case["utterances"] / case["batches"]
            assert case["max_relative_difference"] < TOL
            assert all(v > 0 for v in case["audio_s_per_s"].values())
        assert model["mixes"]["crops"]["padding_share"] == 0 < model["mixes"]["mixed"]["padding_share"]
    assert record["setup"]["lengths"]["crops"] == [[128000, 128000]]
    assert "vs alone" in lines[0] and lines[-1].startswith("written:")
