"""`repro check-model` / `repro.models.check_upstream`: the upstream contract as checks. The project's own
models keep it; plug-ins broken in one way each fail the check that names their fault, one line, exit 1."""

from __future__ import annotations

import textwrap

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_ECAPA, randomise_batchnorm

from repro.cli import main
from repro.models import check_upstream, ecapa
from repro.models.hf_ssl import load_hf_ssl
from repro.models.wespeaker_ecapa import WespeakerEcapa, WespeakerEcapaArch, wrap_wespeaker_ecapa

CHECKS = ["builds", "forward", "layers", "shapes", "lengths", "frame rates", "padding invariance", "determinism",
          "frozen weights"]

PLUGINS = '''
import torch
from repro.models.upstream import LayerInfo, Upstream, UpstreamOutput, length_mask


class Frames(Upstream):
    """Two layers at 100 frames/s: each 10 ms frame's mean and its square (padding-invariant)."""

    hop, rate = 160, 100.0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def layer_info(self):
        return [LayerInfo("mean", 1, self.rate), LayerInfo("power", 1, self.rate)]

    def frame_lengths(self, n):
        return [n // 160, n // 160]

    def frames(self, wavs):
        t = wavs.shape[1] // 160
        return wavs[:, : t * 160].reshape(len(wavs), t, 160) * self.scale

    def forward(self, wavs, n):
        x = self.frames(wavs)
        return UpstreamOutput([x.mean(-1, keepdim=True), (x ** 2).mean(-1, keepdim=True)], self.frame_lengths(n))


class Transposed(Frames):
    def forward(self, wavs, n):
        out = super().forward(wavs, n)
        return UpstreamOutput([h.transpose(1, 2) for h in out.layers], out.lengths)


class WholeBatchNorm(Frames):
    """Normalises over every frame of the padded batch: padding changes the frames."""

    def forward(self, wavs, n):
        out = super().forward(wavs, n)
        return UpstreamOutput([(h - h.mean(1, keepdim=True)) / (h.std(1, keepdim=True) + 1e-5) for h in out.layers],
                              out.lengths)


class Trains(Frames):
    """Keeps a running mean it updates in every forward, and never freezes."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running", torch.zeros(1))

    def freeze(self):
        return self

    def forward(self, wavs, n):
        self.running += wavs.mean()
        return super().forward(wavs, n)


class WrongRate(Frames):
    rate = 50.0


class Noisy(Frames):
    def forward(self, wavs, n):
        out = super().forward(wavs, n)
        return UpstreamOutput([h + 1e-3 * torch.randn_like(h) for h in out.layers], out.lengths)


class Crashes(Frames):
    def forward(self, wavs, n):
        raise RuntimeError("cuda kernel not found")


def good():
    return Frames()


def transposed():
    return Transposed()


def whole_batch_norm():
    return WholeBatchNorm()


def trains():
    return Trains()


def wrong_rate():
    return WrongRate()


def noisy():
    return Noisy()


def crashes():
    return Crashes()


def raises():
    raise OSError("weights not found at /nowhere/model.pt")
'''


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugins") / "plugins.py"
    path.write_text(textwrap.dedent(PLUGINS))
    return path


def run(model: str, tmp_path):
    res = CliRunner(env={"REPRO_WORK": str(tmp_path / "work")}).invoke(main, ["check-model", model])
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    return res.exit_code, res.output.splitlines()


def test_a_plugin_that_keeps_the_contract_passes_every_check(plugins, tmp_path):
    code, lines = run(f"{plugins}:good", tmp_path)
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines[:-1]] == [f"PASS {c}" for c in CHECKS]
    assert lines[-1] == f"{plugins}:good: all 9 checks pass"


@pytest.mark.parametrize("factory, failed, reason", [
    ("transposed", ["shapes"], "layer mean is [3, 1, 130]; expected [B=3, T, D=1]"),
    ("whole_batch_norm", ["padding invariance"], "utterance alone vs padded in a batch differ by"),
    ("trains", ["frozen weights"], "1 parameter(s) require grad (scale): call self.freeze() (the registry does "
     "for a factory); 1 module(s) in training mode (Trains); the forwards changed 1 parameter(s) or buffer(s) "
     "(running)"),
    ("wrong_rate", ["frame rates"], "130 frames for 1.301 s, expected about 65.1 at the declared 50 frames/s"),
    ("noisy", ["padding invariance", "determinism"], "two forwards of the same batch differ in mean"),
    ("crashes", ["forward"], "raised RuntimeError: cuda kernel not found"),
])
def test_a_broken_plugin_fails_the_check_that_names_its_fault(plugins, tmp_path, factory, failed, reason):
    code, lines = run(f"{plugins}:{factory}", tmp_path)
    assert code == 1
    status = {line.split(":")[0].split(" ", 1)[1]: line for line in lines[:-1]}
    assert list(status) == CHECKS
    assert [c for c in CHECKS if status[c].startswith("FAIL")] == failed, lines
    assert reason in status[failed[-1]], status[failed[-1]]
    assert lines[-1] == f"{plugins}:{factory}: {len(failed)} of {len(CHECKS)} checks fail"


def test_an_upstream_is_checked_as_it_is_and_a_factorys_result_frozen(plugins):
    from repro.models.loaders import load_python

    up = load_python(f"{plugins}:good")
    up.scale.requires_grad_(True)
    report = check_upstream(up)
    assert report.results[0].line() == "PASS builds: Frames" and not report.passed
    assert [r.name for r in report.results if r.status != "PASS"] == ["frozen weights"]
    assert report.lines()[-1] == ("FAIL frozen weights: 1 parameter(s) require grad (scale): call self.freeze() "
                                  "(the registry does for a factory)")
    assert up.scale.requires_grad  # left as it was
    good = check_upstream(lambda: load_python(f"{plugins}:good").requires_grad_(True).train())
    assert good.passed, good.lines()


def test_a_factory_that_raises_is_one_fail_line(plugins, tmp_path):
    code, lines = run(f"{plugins}:raises", tmp_path)
    assert code == 1
    assert lines == ["FAIL builds: OSError: weights not found at /nowhere/model.pt",
                     f"{plugins}:raises: 1 of 1 checks fail"]
    code, lines = run(f"{plugins}:absent", tmp_path)
    assert code == 1 and lines[0] == f"FAIL builds: UnknownModelError: {plugins}: no function 'absent' " \
                                     f"(from '{plugins}:absent')"
    code, lines = run("no-such-model", tmp_path)
    assert code == 1 and lines[0].startswith("FAIL builds: UnknownModelError: unknown model 'no-such-model'")


def test_registered_models_keep_the_contract(tmp_path):
    """A random tiny WavLM of the smoke profile and a random ECAPA-TDNN of the test registry, by name."""
    for name in ("tiny-wavlm", "rand-ecapa"):
        code, lines = run(name, tmp_path)
        assert code == 0 and len(lines) == len(CHECKS) + 1, lines


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2"])
def test_transformers_models_keep_the_contract(hf_folder, model_type):
    report = check_upstream(lambda: load_hf_ssl(str(hf_folder(model_type))))
    assert report.passed, report.lines()


@pytest.mark.parametrize("frontend", ["speechbrain", "kaldi"])
def test_ecapa_models_keep_the_contract(frontend):
    torch.manual_seed(0)
    sb = ecapa.wrap_speechbrain_ecapa(randomise_batchnorm(ecapa.speechbrain_ecapa(TINY_ECAPA)), frontend)
    arch = WespeakerEcapaArch(channels=16, mfa_channels=48, embed_dim=12, scale=4, se_bottleneck=8,
                              attention_bottleneck=8)
    ws = wrap_wespeaker_ecapa(randomise_batchnorm(WespeakerEcapa(arch)))
    for up in (sb, ws):
        report = check_upstream(up)
        assert report.passed and len(report.results) == len(CHECKS), report.lines()
        assert "embedding [B, " in report.results[3].detail
