"""`repro bench numerics-cost` (repro/bench/numerics_cost.py): runs alternate pinned / unpinned, the ratio is
the median of the per-round ratios, each arm's child computes with the numerics it is meant to (the
unpinned one on the machine's native code paths, whatever the parent's environment). No timing is asserted."""

from __future__ import annotations

import json
import sys

import pytest

from repro import cpu_numerics
from repro.bench import numerics_cost as nc

# Prints ATen's level as the child's environment asks for it (no torch: a few milliseconds).
TRIVIAL = nc.Workload("trivial", "a Python that prints its ATEN_CPU_CAPABILITY",
                      lambda pinned, folder: [sys.executable, "-c",
                                              "import os; print(os.environ.get('ATEN_CPU_CAPABILITY') or 'NATIVE')"],
                      nc._first_word)


def _run(arm: str, cpu: float, wall: float) -> dict:
    return {"arm": arm, "cpu_seconds": cpu, "wall_seconds": wall}


def test_runs_alternate_and_each_child_gets_its_arms_environment(monkeypatch):
    for k, v in cpu_numerics.PINNED_ENV.items():  # a parent that runs pinned, as `repro bench` does
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(cpu_numerics.SWITCH, "1")
    r = nc.run_workload(TRIVIAL, rounds=2)
    assert [(x["round"], x["arm"]) for x in r["runs"]] == [(1, "pinned"), (1, "unpinned"), (2, "pinned"), (2, "unpinned")]
    for x in r["runs"]:
        assert {"cpu_seconds", "user_seconds", "sys_seconds", "wall_seconds", "load_before", "load_after", "env",
                "seen"} <= set(x)
        assert x["cpu_seconds"] == pytest.approx(x["user_seconds"] + x["sys_seconds"]) and x["cpu_seconds"] >= 0
        pinned = x["arm"] == "pinned"
        assert x["seen"]["aten_capability"] == ("avx2" if pinned else "NATIVE")
        assert cpu_numerics.is_pinned(x["env"]) is pinned
        assert x["env"][cpu_numerics.SWITCH] == ("1" if pinned else "0")
    assert {"cpu", "flags_level", "load_average_start", "load_average_end", "cpu_ratio", "wall_ratio", "target",
            "within_target", "ratio_definition"} <= set(r)
    assert r["cpu_ratio"] == r["summary"]["cpu"]["ratio"]
    assert r["within_target"] is (r["cpu_ratio"] <= nc.TARGET)


def test_the_ratio_is_the_median_of_per_round_ratios():
    runs = [_run("pinned", 2, 1), _run("unpinned", 1, 1), _run("pinned", 3, 1), _run("unpinned", 3, 2),
            _run("pinned", 10, 4), _run("unpinned", 2, 1)]
    s = nc.summarise(runs)
    assert s["cpu"]["per_round_ratio"] == [2.0, 1.0, 5.0]
    assert s["cpu"]["ratio"] == 2.0                      # median of 2, 1, 5
    assert s["cpu"]["ratio_of_medians"] == 1.5           # median(2, 3, 10) / median(1, 3, 2)
    assert s["wall"]["ratio"] == 1.0                     # median of 1, 0.5, 4
    with pytest.raises(ValueError, match="alternate"):
        nc.summarise([runs[1], runs[0]])


def test_a_failing_child_is_reported_with_its_error():
    failing = nc.Workload("failing", "exits 3", lambda pinned, folder: [
        sys.executable, "-c", "import sys; sys.exit('no corpus here')"], nc._first_word)
    with pytest.raises(RuntimeError, match="pinned failing run failed.*no corpus here"):
        nc.run_workload(failing, rounds=1)


def test_the_demo_arms_differ_only_in_pinned_numerics(tmp_path):
    """The unpinned demo reads a profile with the setting off and does not re-execute itself pinned; the pinned
    demo is the smoke profile as `make demo` runs it."""
    from repro.config import load_profile, to_dict

    for pinned in (True, False):
        folder = tmp_path / str(pinned)
        folder.mkdir()
        argv = nc._demo_argv(pinned, folder)
        assert argv[1:5] == ["-m", "repro", "run", "--profile"]
        profile = load_profile(argv[5])
        assert profile.runtime.pinned_cpu_numerics is pinned
        assert cpu_numerics.wants_pinned(argv[3:]) is pinned
        env = nc.child_environ(pinned, folder, base={**cpu_numerics.PINNED_ENV, "PATH": "/bin"})
        assert cpu_numerics.is_pinned(env) is pinned
        assert env["REPRO_WORK"] == str(folder / "work") and env["PATH"] == "/bin"
    for pinned in (True, False):  # the train slice: the same profile but for the setting, both arms from files
        argv = nc.make_workload("train").argv(pinned, tmp_path)
        assert argv[argv.index("--profile") + 1].endswith(".yaml") and "--stage" in argv
        assert load_profile(argv[5]).runtime.pinned_cpu_numerics is pinned
        assert cpu_numerics.wants_pinned(argv[3:]) is pinned
    sliced = [to_dict(load_profile(tmp_path / f"smoke-train-slice{s}.yaml")) for s in ("", "-unpinned")]
    for d in sliced:
        d.pop("name"), d["runtime"].pop("pinned_cpu_numerics")
    assert sliced[0] == sliced[1]
    smoke, unpinned = to_dict(load_profile("smoke")), to_dict(load_profile(tmp_path / "False" / "smoke-unpinned.yaml"))
    assert (smoke.pop("name"), unpinned.pop("name")) == ("smoke", "smoke-unpinned")
    unpinned["runtime"]["pinned_cpu_numerics"] = True
    assert unpinned == smoke


@pytest.mark.slow
def test_the_core_workload_runs_unpinned_on_the_native_level(tmp_path):
    """Both arms of the real core workload (one step per recipe): pinned ATen AVX2, unpinned the level the CPU's
    flags allow (AVX-512 here); the record keeps another workload's result."""
    record = tmp_path / "numerics_cost.json"
    record.write_text(json.dumps({"workloads": {"demo": {"kept": True}}}))
    r = nc.run(workload="core", rounds=1, steps=1, record_path=record, echo=None)
    assert r["workloads"]["demo"] == {"kept": True}
    core = r["workloads"]["core"]
    assert core["aten_pinned"] == ["AVX2"] and core["pinned_is_avx2"]
    assert core["aten_unpinned"] == [nc.flags_level()] and core["unpinned_is_native"]
    if nc.flags_level() == "AVX2":
        pytest.skip("this CPU offers ATen no level above AVX2: pinned and unpinned run the same kernels")
    assert core["aten_unpinned"] != core["aten_pinned"]
    assert "pinned / unpinned CPU seconds" in nc.table({"workloads": {"core": core}})
