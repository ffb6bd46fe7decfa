"""Pinned CPU numerics (`repro.cpu_numerics`, `runtime.pinned_cpu_numerics`): the switches change the bytes
of the numeric core on a CPU that offers more than AVX2, and pinned, the bytes hold on an emulated
AVX2-only Intel CPU (qemu-x86_64 -cpu Haswell: Intel's vendor string, so MKL's Intel code paths on an AMD
host). The core (tests/numeric_core.py) runs a few steps of each stage in subprocesses."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repro import cpu_numerics
from repro.cpu_numerics import PINNED_ENV

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "tests" / "numeric_core.py"


@functools.lru_cache(maxsize=None)
def core(unset: tuple[str, ...] = (), pinned: bool = True, emulate: str | None = None) -> str:
    """The numeric core's output line in a fresh process: pinned (PINNED_ENV and the replaced kernels) but
    for the variables in `unset`, or unpinned; natively or under `qemu-x86_64 -cpu <emulate>`."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k != cpu_numerics.SWITCH}
    if pinned:
        env.update({k: v for k, v in PINNED_ENV.items() if k not in unset})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(CORE)] + (["--pin-kernels"] if pinned else [])
    if emulate:
        cmd = ["qemu-x86_64", "-cpu", emulate, *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def native_level() -> str:
    return core(pinned=False).split()[0]


def needs_more_than_avx2() -> None:
    if native_level() != "AVX512":
        pytest.skip(f"this CPU offers ATen level {native_level()} only: pinning to AVX2 changes nothing to compare")


@pytest.mark.slow
def test_pinned_core_runs_at_avx2_and_is_repeatable():
    line = core()
    assert line.split()[0] == "AVX2"
    assert core.__wrapped__() == line  # a second process, not the cached line


def test_unpinned_core_differs_from_pinned_on_an_avx512_cpu():
    needs_more_than_avx2()
    assert core(pinned=False).split()[1:] != core().split()[1:]


@pytest.mark.slow
@pytest.mark.parametrize("switch", sorted(PINNED_ENV))
def test_each_switch_changes_the_bytes_on_an_avx512_cpu(switch):
    """Each variable pins a library that would otherwise choose another code path on this CPU: left out,
    some part of the core computes other bits."""
    needs_more_than_avx2()
    assert core(unset=(switch,)) != core()


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 is missing (Debian: apt-get install qemu-user): no emulated AVX2-only CPU")
@pytest.mark.slow
def test_pinned_bytes_hold_on_an_emulated_avx2_only_intel_cpu():
    """The same bytes, part by part, on this CPU and on an emulated Haswell (AVX2, FMA, no AVX-512,
    GenuineIntel)."""
    emulated = core(emulate="Haswell")
    assert emulated.split()[0] == "AVX2"
    assert emulated == core()


def _reexecs(tmp_path, argv: list[str], **env_over) -> list[str]:
    """The (ATEN_CPU_CAPABILITY, REPRO_PINNED_CPU_NUMERICS) of every Python process `python -m repro ARGV`
    starts, in order (a sitecustomize on PYTHONPATH prints them at each start)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nprint('START', os.environ.get('ATEN_CPU_CAPABILITY'), os.environ.get('REPRO_PINNED_CPU_NUMERICS'))\n")
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k != cpu_numerics.SWITCH}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), **env_over)
    out = subprocess.run([sys.executable, "-m", "repro", *argv], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if line.startswith("START")]


def test_python_m_repro_reexecutes_itself_once_with_the_pinned_variables(tmp_path):
    assert _reexecs(tmp_path, ["config", "show", "--profile", "smoke"]) == ["START None None", "START avx2 1"]


def test_no_reexecution_for_a_profile_without_pinned_numerics_or_when_turned_off(tmp_path):
    assert _reexecs(tmp_path, ["config", "show", "--profile", "fast"]) == ["START None None"]
    assert _reexecs(tmp_path, ["config", "show"], REPRO_PINNED_CPU_NUMERICS="0") == ["START None 0"]


def test_a_pinned_profile_in_a_process_started_without_the_variables_says_so_once(monkeypatch, capsys):
    from repro.config import load_profile
    from repro.runtime import apply_cpu_numerics
    import repro.runtime as runtime

    monkeypatch.setattr(runtime.numerics, "_WARNED", False)
    monkeypatch.delenv("MKL_CBWR", raising=False)
    state = apply_cpu_numerics(load_profile("smoke"))
    apply_cpu_numerics(load_profile("smoke"))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "MKL_CBWR=COMPATIBLE" in err[0] and "follow this CPU" in err[0]
    assert state["pinned"] is False and state["cpu"] == cpu_numerics.cpu_model()


def test_the_pinned_square_root_is_the_correctly_rounded_one_with_its_edge_cases():
    import numpy as np
    import torch

    from repro.runtime import pin_cpu_kernels

    pin_cpu_kernels()
    x = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 100
    assert np.array_equal(torch.sqrt(x).numpy(), np.sqrt(x.numpy()))  # float32: x * rsqrt(x) in float64, rounded once
    special = torch.tensor([0.0, -0.0, float("inf"), -1.0, float("nan"), -float("inf")])
    got = torch.sqrt(special)
    assert got[:3].tolist() == [0.0, 0.0, float("inf")] and torch.signbit(got[1])
    assert torch.isnan(got[3:]).all()
    assert torch.sqrt(torch.tensor([4, 9])).tolist() == [2.0, 3.0]
    y = x[:5].clone().requires_grad_()
    y.sqrt().sum().backward()
    assert torch.allclose(y.grad, 0.5 / x[:5].sqrt())
    out = torch.empty(5)
    torch.sqrt(x[:5], out=out)
    z = x[:5].clone()
    z.sqrt_()
    assert torch.equal(out, z) and torch.equal(out, x[:5].sqrt())


def test_a_run_notes_the_gpu_a_stage_computes_on(monkeypatch):
    """`session` adds `gpu` to the noted numerics when some stage's device is cuda (or auto with a GPU
    visible): `repro paper verify` then knows the bytes cannot be the CPU's."""
    import dataclasses

    import torch

    from repro.config import load_profile
    from repro.runtime import gpu_of

    smoke = load_profile("smoke")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert gpu_of(smoke) == ""  # every stage of the smoke profile computes on the CPU
    auto = dataclasses.replace(smoke, probing=dataclasses.replace(smoke.probing, device="auto"))
    assert gpu_of(auto) == "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_of(auto) == ""
    noted = {"cpu": "AMD EPYC", "pinned": False, "aten_capability": "AVX512", "gpu": "NVIDIA H100 80GB HBM3"}
    assert cpu_numerics.describe(noted) == "AMD EPYC, unpinned numerics (ATen AVX512) + GPU NVIDIA H100 80GB HBM3"
