"""`repro paper verify`: exact sha256 for every output, numeric results also by value within a stated tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from repro.cli import main
from repro.config import load_profile
from repro.paper import checksums
from repro.util.atomic import atomic_write_json, atomic_write_text
from repro.util.npz import atomic_write_npz, read_npz
from repro.workspace import Workspace

CKA = "results/cka/tiny-hubert__tiny-ecapa-sup"
TOL = checksums.value_rule(f"{CKA}.npz").tolerance  # SUM_ORDER_MARGIN x the measured spread


def _cka_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays shaped like a CKA result: float64 matrices in [0, 1] and the layer names."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.05, 0.95, size=(4, 3))
    return {"cka": m, "cka_biased": m, "cka_debiased": m - 0.01, "ci_low": m - 0.02, "ci_high": m + 0.02,
            "layers_a": np.array([f"L{i}" for i in range(4)]), "layers_b": np.array(["tdnn", "res2net1", "mfa"])}


def _cka_json(arrays) -> dict:
    return {"models": ["tiny-hubert", "tiny-ecapa-sup"], "items": 120, "level": "frame",
            "store_keys": {"a": "k1", "b": "k2"}, "config": {"bootstrap": {"confidence": 0.95}},
            "cka": [[round(float(v), 6) for v in row] for row in arrays["cka"]]}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A smoke workspace with a corpus file, a CKA result, a probe result and a table; records in tmp."""
    for var, sub in (("REPRO_WORK", "work"), ("REPRO_RESULTS", "results"), ("REPRO_FIGURES", "figures")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(checksums, "RECORD_DIR", tmp_path / "records")
    ws = Workspace.for_profile("smoke")
    atomic_write_text(ws.corpus_dir / "corpus.json", '{"utterances": 3}\n')
    arrays = _cka_arrays()
    atomic_write_npz(ws.results / "cka" / "tiny-hubert__tiny-ecapa-sup.npz", arrays)
    atomic_write_json(ws.results / "cka" / "tiny-hubert__tiny-ecapa-sup.json", _cka_json(arrays))
    atomic_write_json(ws.results / "probing" / "tiny-hubert" / "PR" / "best.json", {"test": 0.123456789, "lr": 0.01})
    atomic_write_text(ws.figures / "table-1.csv", "model,PR\ntiny-hubert,0.12\n")
    checksums.record(ws)
    return ws


def _rewrite_npz(ws, change) -> None:
    path = ws.results / "cka" / "tiny-hubert__tiny-ecapa-sup.npz"
    arrays = read_npz(path)
    change(arrays)
    atomic_write_npz(path, arrays)


def _verify_cli(*extra):
    return CliRunner().invoke(main, ["paper", "verify", "--profile", "smoke", *extra])


def _by_name(ws) -> dict[str, checksums.Outcome]:
    return {o.name: o for o in checksums.check(ws)}


def test_record_keeps_every_sha256_and_the_exact_values_of_numeric_outputs(env):
    ws = env
    sums = checksums.parse_record(checksums.record_path(ws).read_text())
    assert set(sums) == {"corpus/corpus.json", f"{CKA}.npz", f"{CKA}.json", "results/probing/tiny-hubert/PR/best.json",
                         "figures/table-1.csv"}
    values = checksums.parse_values(checksums.values_path(ws).read_text())
    assert set(values) == {f"{CKA}.npz", f"{CKA}.json"}  # the numeric outputs with a value rule
    stored = values[f"{CKA}.npz"]
    arrays = _cka_arrays()
    for key, arr in arrays.items():
        assert stored[key]["shape"] == list(arr.shape)
        back = np.array(stored[key]["values"], dtype=arr.dtype).reshape(arr.shape)
        assert np.array_equal(back, arr)  # floats stored exactly (shortest round-trip form), not rounded
    assert values[f"{CKA}.json"]["cka"] == _cka_json(arrays)["cka"]


def test_an_unchanged_run_verifies_exactly(env):
    assert {o.status for o in checksums.check(env)} == {"exact"}
    assert checksums.verify(env) == {"changed": [], "missing": [], "extra": []}
    res = _verify_cli()
    assert res.exit_code == 0, res.output
    assert res.output == f"all 5 outputs match {checksums.record_path(env)}: 5 exactly\n"


def test_cka_perturbed_in_the_last_bits_verifies_within_tolerance(env):
    recorded = float(_cka_arrays()["cka_biased"][1, 2])

    def nudge(a):
        a["cka_biased"][1, 2] += TOL / 4
    _rewrite_npz(env, nudge)
    assert checksums.sha256_file(env.results / "cka" / "tiny-hubert__tiny-ecapa-sup.npz") != \
        checksums.parse_record(checksums.record_path(env).read_text())[f"{CKA}.npz"]
    out = _by_name(env)[f"{CKA}.npz"]
    assert out.status == "within"
    detail = f"max |difference| {abs(recorded + TOL / 4 - recorded):.1e} <= tolerance {TOL:g} (cka_biased[1, 2])"
    assert out.detail == detail
    assert checksums.verify(env) == {"changed": [], "missing": [], "extra": []}
    res = _verify_cli()
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [
        f"within   {CKA}.npz: {detail}",
        f"all 5 outputs match {checksums.record_path(env)}: 4 exactly, 1 within tolerance"]


def test_cka_changed_by_1e_4_is_reported_with_the_size_of_the_difference(env):
    recorded = float(_cka_arrays()["cka"][2, 0])

    def change(a):
        a["cka"][2, 0] += 1e-4
    _rewrite_npz(env, change)
    out = _by_name(env)[f"{CKA}.npz"]
    assert out.status == "changed"
    assert out.detail == (f"cka[2, 0] differs by 1.0e-04 > tolerance {TOL:g} ({recorded + 1e-4!r} now, "
                          f"{recorded!r} recorded)")
    assert checksums.verify(env)["changed"] == [f"{CKA}.npz"]
    res = _verify_cli()
    assert res.exit_code == 1
    assert res.output.splitlines() == [f"changed  {CKA}.npz: {out.detail}",
                                       f"1 difference(s) from {checksums.record_path(env)}"]


@pytest.mark.parametrize("change,status,detail", [
    # a NaN where a number was recorded is a change of unbounded size
    (lambda a: a["ci_low"].__setitem__((0, 1), np.nan), "changed", f"ci_low[0, 1] differs by inf > tolerance {TOL:g}"),
    (lambda a: a.__setitem__("layers_b", np.array(["tdnn", "res2net1", "res2net2"])), "changed",
     "layers_b: values differ from the record (compared exactly)"),
    (lambda a: a.__setitem__("cka", a["cka"][:3]), "changed", "cka: shape (3, 3) now, (4, 3) recorded"),
    (lambda a: a.pop("ci_high"), "changed", "arrays differ: "),
])
def test_other_changes_of_a_cka_result_name_the_failed_comparison(env, change, status, detail):
    _rewrite_npz(env, change)
    out = _by_name(env)[f"{CKA}.npz"]
    assert out.status == status and out.detail.startswith(detail)


def test_nan_recorded_and_produced_again_is_no_difference(env, tmp_path):
    def with_nan(a):
        a["cka_debiased"][3, 2] = np.nan  # a degenerate layer: NaN in the record too
    _rewrite_npz(env, with_nan)
    checksums.record(env)
    assert '"nan"' in checksums.values_path(env).read_text()

    def nudge(a):
        a["cka_debiased"][0, 0] += TOL / 4
    _rewrite_npz(env, nudge)
    out = _by_name(env)[f"{CKA}.npz"]
    assert out.status == "within" and out.detail.endswith("(cka_debiased[0, 0])")


def test_cka_json_accepts_one_unit_of_its_last_decimal_and_nothing_more(env):
    path = env.results / "cka" / "tiny-hubert__tiny-ecapa-sup.json"
    doc = json.loads(path.read_text())
    flipped = round(doc["cka"][1][1] + 1e-6, 6)  # a value at a rounding edge fell the other way
    atomic_write_json(path, {**doc, "cka": [row[:] for row in doc["cka"][:1]] + [
        [doc["cka"][1][0], flipped, doc["cka"][1][2]]] + doc["cka"][2:]})
    out = _by_name(env)[f"{CKA}.json"]
    assert out.status == "within" and out.detail.endswith("<= tolerance 1.5e-06 (cka[1][1])")
    doc["cka"][1][1] = round(doc["cka"][1][1] + 1e-5, 6)
    atomic_write_json(path, doc)
    out = _by_name(env)[f"{CKA}.json"]
    assert out.status == "changed" and out.detail.startswith("cka[1][1] differs by 1.0e-05 > tolerance 1.5e-06")
    atomic_write_json(path, {**json.loads(path.read_text()), "store_keys": {"a": "k1", "b": "other"}})
    out = _by_name(env)[f"{CKA}.json"]
    assert out.status == "changed" and out.detail == "store_keys.b: 'other' now, 'k2' recorded (compared exactly)"


def test_probe_results_and_tables_are_compared_exactly(env):
    atomic_write_json(env.results / "probing" / "tiny-hubert" / "PR" / "best.json", {"test": 0.123456789 + 1e-15,
                                                                                   "lr": 0.01})
    atomic_write_text(env.figures / "table-1.csv", "model,PR\ntiny-hubert,0.13\n")
    outcomes = _by_name(env)
    for name in ("results/probing/tiny-hubert/PR/best.json", "figures/table-1.csv"):
        assert outcomes[name].status == "changed" and outcomes[name].detail == "sha256 differs (compared exactly)"


def test_a_record_without_values_reports_what_is_missing(env):
    checksums.values_path(env).unlink()  # a record made before values were kept
    _rewrite_npz(env, lambda a: a["cka"].__setitem__((0, 0), a["cka"][0, 0] + TOL / 4))
    out = _by_name(env)[f"{CKA}.npz"]
    assert out.status == "changed"
    assert out.detail == f"sha256 differs and the record holds no values to compare it within {TOL:g}"


def test_missing_extra_and_portable(env):
    (env.figures / "table-1.csv").unlink()
    atomic_write_text(env.figures / "new.txt", "x")
    assert checksums.verify(env) == {"changed": [], "missing": ["figures/table-1.csv"], "extra": ["figures/new.txt"]}
    res = _verify_cli()
    assert res.exit_code == 1
    assert "missing  figures/table-1.csv" in res.output and "extra    figures/new.txt" in res.output
    res = _verify_cli("--portable")  # only the corpus: it still matches
    assert res.exit_code == 0 and res.output.endswith(": 1 exactly\n")


def test_record_through_the_cli_writes_both_files(env):
    _rewrite_npz(env, lambda a: a["cka"].__setitem__((0, 0), 0.5))
    res = _verify_cli("--record")
    assert res.exit_code == 0
    assert res.output == (f"recorded 5 checksums in {checksums.record_path(env)}, the values of 2 numeric outputs "
                          f"in {checksums.values_path(env)} and the CPU settings that computed them in "
                          f"{checksums.numerics_path(env)}\n")
    assert {o.status for o in checksums.check(env)} == {"exact"}
    assert checksums.parse_values(checksums.values_path(env).read_text())[f"{CKA}.npz"]["cka"]["values"][0] == 0.5


def test_committed_smoke_record_has_values_for_every_numeric_output():
    ws = Workspace(load_profile("smoke"), "work", "results", "figures")
    names = checksums.parse_record(checksums.record_path(ws).read_text())
    numeric = {n for n in names if checksums.value_rule(n)}
    assert any(n.endswith(".npz") for n in numeric)
    values = checksums.parse_values(checksums.values_path(ws).read_text())
    assert set(values) == numeric


# --- the CPU settings of the record and of the run -----------------------------------------------------------

def _state(cpu: str, pinned: bool) -> dict:
    return {"cpu": cpu, "machine": "x86_64", "pinned": pinned, "aten_capability": "AVX2" if pinned else "AVX512",
            "env": {}, "torch": "2.9.1"}


def _record_made_by(ws, *states) -> None:
    from repro.runtime import NUMERICS_NOTE, note_cpu_numerics

    (ws.work / NUMERICS_NOTE).unlink(missing_ok=True)
    for st in states:
        note_cpu_numerics(ws.work, st)
    checksums.record(ws)


def test_the_record_keeps_the_cpu_settings_the_run_noted(env):
    from repro.runtime import note_cpu_numerics

    xeon = _state("Intel(R) Xeon(R) Platinum 8488C", True)
    _record_made_by(env, xeon)
    assert checksums.recorded_numerics(env) == [xeon]
    note_cpu_numerics(env.work, xeon)  # the same settings again: noted once
    assert checksums.run_numerics(env) == [xeon]


def test_pinned_record_and_pinned_run_on_another_cpu_verify_with_both_cpus_named(env):
    from repro.runtime import NUMERICS_NOTE, note_cpu_numerics

    _record_made_by(env, _state("Intel Xeon", True))
    (env.work / NUMERICS_NOTE).unlink()
    note_cpu_numerics(env.work, _state("AMD EPYC", True))
    res = _verify_cli()
    assert res.exit_code == 0, res.output
    assert res.output == (f"all 5 outputs match {checksums.record_path(env)}: 5 exactly (record: Intel Xeon, pinned "
                          "numerics (ATen AVX2); this run: AMD EPYC, pinned numerics (ATen AVX2))\n")


@pytest.mark.parametrize("recorded, ran, words", [
    (True, [False], "was made with pinned CPU numerics and these outputs without pinned CPU numerics"),
    (False, [True], "was made without pinned CPU numerics and these outputs with pinned CPU numerics"),
    (True, [True, False], "was made with pinned CPU numerics and these outputs with and without them"),
])
def test_pinned_numerics_on_one_side_only_is_one_line_saying_how_to_rerun(env, recorded, ran, words):
    from repro.runtime import NUMERICS_NOTE, note_cpu_numerics

    _record_made_by(env, _state("Intel Xeon", recorded))
    (env.work / NUMERICS_NOTE).unlink()
    for i, pinned in enumerate(ran):
        note_cpu_numerics(env.work, _state(f"AMD EPYC {i}", pinned))
    atomic_write_text(env.figures / "table-1.csv", "model,PR\ntiny-hubert,0.13\n")  # a change it must not list
    res = _verify_cli()
    assert res.exit_code == 1
    assert len(res.output.splitlines()) == 1 and words in res.output and "make clean PROFILE=smoke && make demo" \
        in res.output, res.output
    assert "changed" not in res.output


def test_cka_npz_headers_are_the_same_whatever_the_python_patch_version(tmp_path):
    """Python 3.11.7 marks a member streamed with force_zip64 "version needed 4.5", 3.11.2 "2.0": the
    members are written whole, so both write 2.0 (20) in the local and central headers."""
    import struct
    import zipfile

    path = tmp_path / "a.npz"
    atomic_write_npz(path, _cka_arrays())
    data = path.read_bytes()
    assert struct.unpack("<H", data[4:6])[0] == 20  # the first local header
    with zipfile.ZipFile(path) as zf:
        assert {(i.extract_version, i.create_version, i.create_system) for i in zf.infolist()} == {(20, 20, 3)}
        assert not any(i.extra for i in zf.infolist())  # no zip64 extra field for small members
    assert set(np.load(path).files) == set(_cka_arrays())


# --- tolerances measured (artifacts/checksums/tolerances.json), and outputs that cannot be the same bytes ----

def test_the_tolerances_are_the_stated_margins_times_the_committed_measured_spreads():
    rec = checksums.measured_spreads()
    sum_order = max(v for part in ("trained_features", "untrained_features") for v in rec["sum_order"][part].values())
    assert 0 < sum_order < 1e-13  # reordered float64 sums of values near 1: a few units of the last place
    assert TOL == checksums.SUM_ORDER_MARGIN * sum_order
    spread = rec["code_paths"]["spread"]
    fixed = max(by_part[p]["max_abs_difference"] for by_setting in spread.values() for by_part in by_setting.values()
                for p in ("fixed_cka_layers", "fixed_cka_layers_debiased"))
    assert checksums.code_path_tolerance() == checksums.CODE_PATH_MARGIN * fixed


def test_reordered_sums_of_features_the_measurement_never_saw_stay_within_the_cka_tolerance():
    """Wider layers, 2,000 frames, a common offset, other chunkings: every CKA value within TOL."""
    from repro.similarity.accumulator import CKAAccumulator

    rng = np.random.default_rng(7)
    base = rng.standard_normal((2000, 48))
    layers = [base + (l + 1) * 0.3 * rng.standard_normal((2000, 48)) + 5.0 for l in range(4)]

    def cka(order, step):
        acc = CKAAccumulator([48] * len(layers))
        for lo in range(0, len(order), step):
            acc.update([a[order[lo:lo + step]] for a in layers])
        return acc.cka(False), acc.cka(True)

    ref = cka(np.arange(2000), 2000)
    for step in (37, 250, 999):
        for got, want in zip(cka(rng.permutation(2000), step), ref):
            assert np.abs(got - want).max() <= TOL


def _gpu_run(ws, gpu: str = "NVIDIA H100 80GB HBM3") -> None:
    from repro.runtime import NUMERICS_NOTE, note_cpu_numerics

    _record_made_by(ws, _state("AMD EPYC", True))
    (ws.work / NUMERICS_NOTE).unlink()
    note_cpu_numerics(ws.work, {**_state("AMD EPYC", False), "gpu": gpu})


def _change_json(path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    atomic_write_json(path, doc)


def test_on_a_gpu_outputs_of_trained_models_are_expected_machine_differences(env):
    """tiny-ecapa-sup is trained by the smoke profile: its CKA, every probe result and the tables follow
    the machine. One line counts them; the summary names both machines and passes."""
    _gpu_run(env)
    _rewrite_npz(env, lambda a: a["cka"].__setitem__((1, 1), a["cka"][1, 1] + 0.05))
    _change_json(env.results / "cka" / "tiny-hubert__tiny-ecapa-sup.json", lambda d: d["cka"][1].__setitem__(1, 0.5))
    atomic_write_json(env.results / "probing" / "tiny-hubert" / "PR" / "best.json", {"test": 0.2, "lr": 0.001})
    atomic_write_text(env.figures / "table-1.csv", "model,PR\ntiny-hubert,0.20\n")
    res = _verify_cli()
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == [
        f"bytes cannot match (this run computed on a GPU (NVIDIA H100 80GB HBM3)): outputs compared by value, "
        f"tolerances from the spreads measured in {checksums.TOLERANCE_RECORD} (CKA of models no run trains within "
        f"{checksums.code_path_tolerance():.1e}: 10 x the spread across CPU code paths)",
        "machine  4 outputs drawn from models this run trained differ in value, as expected on another machine "
        "(1 in figures, 2 in results/cka, 1 in results/probing); their structure is the record's",
        f"all 5 outputs agree by value with {checksums.record_path(env)}: 1 exactly, 4 expected machine differences "
        "(record: AMD EPYC, pinned numerics (ATen AVX2); this run: AMD EPYC, unpinned numerics (ATen AVX512) "
        "+ GPU NVIDIA H100 80GB HBM3)"]
    out = _by_name(env)  # by bytes: each of them changed
    assert {out[n].status for n in (f"{CKA}.npz", f"{CKA}.json", "figures/table-1.csv")} == {"changed"}
    machine = {o.name: o for o in checksums.check(env, by_value=True)}
    assert machine[f"{CKA}.npz"].status == "machine" and machine[f"{CKA}.npz"].detail.startswith(
        "max |difference| 5.0e-02 (cka[1, 1])")


def test_on_a_gpu_real_changes_are_still_listed_and_fail(env):
    _gpu_run(env)
    atomic_write_text(env.corpus_dir / "corpus.json", '{"utterances": 4}\n')  # the corpus: the same bytes anywhere
    _rewrite_npz(env, lambda a: a.__setitem__("layers_b", np.array(["tdnn", "res2net1", "res2net2"])))
    _change_json(env.results / "cka" / "tiny-hubert__tiny-ecapa-sup.json", lambda d: d["cka"].pop())
    (env.figures / "table-1.csv").unlink()
    res = _verify_cli()
    assert res.exit_code == 1
    assert res.output.splitlines()[1:] == [
        "changed  corpus/corpus.json: sha256 differs (the same bytes on any machine)",
        "missing  figures/table-1.csv",
        f"changed  {CKA}.json: its keys or list lengths differ from the record's",
        f"changed  {CKA}.npz: its arrays, their shapes or its layer names differ from the record's",
        f"4 difference(s) from {checksums.record_path(env)} (record: AMD EPYC, pinned numerics (ATen AVX2); this run: "
        "AMD EPYC, unpinned numerics (ATen AVX512) + GPU NVIDIA H100 80GB HBM3)"]


def test_cka_of_models_no_run_trains_is_held_to_the_measured_code_path_tolerance(env):
    """tiny-hubert and tiny-wavlm are random-weight models (no recipe of the smoke profile trains them): their
    CKA on another machine moves only as far as other CPU code paths move it."""
    arrays = _cka_arrays(1)
    atomic_write_npz(env.results / "cka" / "tiny-hubert__tiny-wavlm.npz", arrays)
    _gpu_run(env)
    name, tol = "results/cka/tiny-hubert__tiny-wavlm.npz", checksums.code_path_tolerance()
    assert tol > TOL and checksums.machine_comparison(name, checksums.trained_models(env)) == "values"
    for step, status in ((tol / 4, "within"), (10 * tol, "changed")):
        atomic_write_npz(env.results / "cka" / "tiny-hubert__tiny-wavlm.npz",
                         {**arrays, "cka": arrays["cka"] + np.eye(4, 3) * step})
        out = {o.name: o for o in checksums.check(env, by_value=True)}[name]
        assert out.status == status, out.detail


def test_which_runs_cannot_give_the_recorded_bytes(env):
    from repro.runtime import NUMERICS_NOTE, note_cpu_numerics

    def run(*states):
        (env.work / NUMERICS_NOTE).unlink(missing_ok=True)
        for st in states:
            note_cpu_numerics(env.work, st)
        return checksums.bytes_cannot_match(env)

    _record_made_by(env, _state("AMD EPYC", True))
    assert run(_state("Intel Xeon", True)) is None  # pinned on both: the bytes of any x86-64 CPU
    assert run(_state("AMD EPYC", False)) is None  # pinned on one side only: numerics_mismatch, the user's to fix
    assert run({**_state("Apple M2", True), "machine": "arm64"}) == "this run computed on arm64, not x86-64"
    _record_made_by(env, _state("AMD EPYC", False))
    assert run(_state("AMD EPYC", False)) is None  # the same machine kind
    assert run(_state("Intel Xeon", False)) == "neither side pinned its CPU numerics, and the CPUs differ"


def test_pinned_on_one_side_only_is_compared_by_value_when_asked(env):
    from repro.runtime import NUMERICS_NOTE, note_cpu_numerics

    _record_made_by(env, _state("Intel Xeon", True))
    (env.work / NUMERICS_NOTE).unlink()
    note_cpu_numerics(env.work, _state("AMD EPYC", False))
    res = _verify_cli()
    assert res.exit_code == 1 and "--by-value" in res.output and len(res.output.splitlines()) == 1
    atomic_write_text(env.figures / "table-1.csv", "model,PR\ntiny-hubert,0.13\n")
    res = _verify_cli("--by-value")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("bytes cannot match (compared by value as asked): outputs compared by value")
    assert lines[-1].startswith(f"all 5 outputs agree by value with {checksums.record_path(env)}: 4 exactly, "
                                "1 expected machine difference (record: Intel Xeon, pinned")
