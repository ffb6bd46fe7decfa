"""No run overwrites another, tried through the command line (docs/FAULTS.md, "Profile folders, names,
roots and links"): a profile's folders belong to one profile file, names from the command line are
checked, YAML and messages are bounded, roots and links are kept, fix-it commands name the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from repro.cli import main
from test_faults import PROFILE

ROOT = Path(__file__).resolve().parents[1]


def _repro(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m repro ARGS` in a child process (stdout and stderr together)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "repro", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=full, cwd=cwd, timeout=600)


def _profile(folder: Path, text: str = PROFILE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faultprof.yaml"
    path.write_text(text)
    return path


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _owner(folder: Path) -> dict:
    return json.loads((folder / ".profile.json").read_text())


# --- a profile's folders belong to one profile file -------------------------------------------------

def test_another_file_with_the_same_name_stops_before_computing_and_takes_over_only_when_asked(
        tmp_path, workspace_env):
    a = _profile(tmp_path / "a", PROFILE.replace("lr_grid: [0.01]", "lr_grid: [0.01, 0.02]"))
    b = _profile(tmp_path / "b")  # the same name, one learning rate fewer
    res = _invoke("run", "--profile", a, "--quiet", "--stage", "corpus", "--stage", "features", "--stage", "cka",
                  "--stage", "probe")
    assert res.exit_code == 0, res.output
    work, results = workspace_env / "work" / "faultprof", workspace_env / "results" / "faultprof"
    probes = results / "probing" / "tiny-hubert" / "KS"
    before = {p.name: p.read_bytes() for p in probes.iterdir()}
    assert {"lr-1e-02.json", "lr-2e-02.json", "best.json"} <= set(before)
    assert _owner(work)["profile"] == str(a.resolve()) == _owner(results)["profile"]

    for extra in ([], ["--force"]):  # --force keeps its meaning: it takes nothing over
        res = _invoke("run", "--profile", b, "--quiet", *extra)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert res.output.startswith(f"error: {work}, {results}: made by the profile file {a.resolve()} (settings ")
        assert f"and the profile file {b.resolve()} has the same name 'faultprof' with other settings" in res.output
        assert "give it a name of its own" in res.output and "--take-over" in res.output
    assert {p.name: p.read_bytes() for p in probes.iterdir()} == before  # nothing computed, nothing moved
    assert _owner(work)["profile"] == str(a.resolve())

    copy = _profile(tmp_path / "c", a.read_text())  # another file with the same settings: a copy, runs as today
    res = _invoke("run", "--profile", copy, "--quiet", "--stage", "probe")
    assert res.exit_code == 0 and "up to date" in res.output, res.output
    assert _owner(work)["profile"] == str(a.resolve())

    res = _invoke("run", "--profile", b, "--quiet", "--stage", "probe", "--take-over")
    assert res.exit_code == 0, res.output
    assert "moved 2 result(s) that the settings no longer produce (probing/tiny-hubert/KS/lr-2e-02.json, " \
        "probing/tiny-hubert/KS/lr-2e-02.timing.json) to " in res.output
    assert sorted(p.name for p in probes.iterdir()) == ["best.json", "lr-1e-02.json", "lr-1e-02.timing.json"]
    assert [r["lr"] for r in json.loads((probes / "best.json").read_text())["sweep"]] == [0.01]
    attic, = (workspace_env / "results" / ".superseded" / "faultprof").iterdir()
    assert (attic / "probing" / "tiny-hubert" / "KS" / "lr-2e-02.json").read_bytes() == before["lr-2e-02.json"]
    assert _owner(work)["profile"] == _owner(results)["profile"] == str(b.resolve())

    # paper_figures/<name> a symbolic link: written through, the link kept, the owner recorded there
    elsewhere = tmp_path / "elsewhere" / "figs"
    elsewhere.mkdir(parents=True)
    figures = workspace_env / "figures" / "faultprof"
    figures.parent.mkdir(parents=True)
    figures.symlink_to(elsewhere, target_is_directory=True)
    res = _invoke("run", "--profile", b, "--quiet", "--stage", "paper")
    assert res.exit_code == 0, res.output
    assert figures.is_symlink() and os.readlink(figures) == str(elsewhere)
    assert {"REPORT.md", "CHECKSUMS.sha256", ".profile.json"} <= {p.name for p in elsewhere.iterdir()}
    assert _owner(elsewhere)["profile"] == str(b.resolve())
    assert not [p.name for p in elsewhere.parent.iterdir() if p.name != "figs"]  # no temporaries left beside it


def test_the_same_file_with_edited_settings_moves_aside_what_they_no_longer_produce(tmp_path, workspace_env):
    prof = _profile(tmp_path, PROFILE.replace("lr_grid: [0.01]", "lr_grid: [0.01, 0.05]")
                    .replace("speech_ssl: [tiny-hubert]", "speech_ssl: [tiny-hubert, tiny-wavlm]"))
    res = _invoke("run", "--profile", prof, "--quiet", "--stage", "corpus")
    assert res.exit_code == 0, res.output
    results = workspace_env / "results" / "faultprof"
    made = ["probing/tiny-hubert/KS/lr-1e-02.json", "probing/tiny-hubert/KS/lr-5e-02.json",
            "probing/tiny-hubert/KS/best.json", "probing/tiny-wavlm/KS/lr-1e-02.json",
            "cka/tiny-hubert__tiny-wavlm.json", "cka/tiny-hubert__tiny-hubert.npz", "notes.txt"]
    for name in made:  # what the first settings made (contents do not matter here)
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(name)
    res = _invoke("run", "--profile", prof, "--quiet", "--stage", "corpus")  # the same settings: nothing moves
    assert res.exit_code == 0 and "moved" not in res.output, res.output

    prof.write_text(PROFILE)  # one model and one learning rate fewer
    res = _invoke("run", "--profile", prof, "--quiet", "--stage", "corpus")
    assert res.exit_code == 0, res.output
    moved = [line for line in res.output.splitlines() if line.startswith("moved ")]
    assert len(moved) == 1 and moved[0].startswith("moved 3 result(s) that the settings no longer produce ("), moved
    left = sorted(p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file())
    assert left == [".profile.json", "cka/tiny-hubert__tiny-hubert.npz", "notes.txt",
                    "probing/tiny-hubert/KS/best.json", "probing/tiny-hubert/KS/lr-1e-02.json"]
    attic, = (workspace_env / "results" / ".superseded" / "faultprof").iterdir()
    assert sorted(p.relative_to(attic).as_posix() for p in attic.rglob("*") if p.is_file()) == [
        "cka/tiny-hubert__tiny-wavlm.json", "probing/tiny-hubert/KS/lr-5e-02.json",
        "probing/tiny-wavlm/KS/lr-1e-02.json"]


# --- names from the command line ---------------------------------------------------------------------

def test_a_task_that_is_a_path_is_refused_in_one_line(tmp_path):
    res = _repro("extract", "-t", "../../../../x", cwd=tmp_path)
    assert res.returncode == 2 and res.stdout.strip() == (
        "error: --task '../../../../x': not a task; tasks: PR, KS, IC, SID, ASV, ER, CKA"), res.stdout
    assert list(tmp_path.iterdir()) == []  # nothing read or written
    for args in (["probe", "-t", "/etc/x"], ["probe", "-t", "KS", "-m", "../../x"], ["cka", "-m", "tiny-hubert", "/x"]):
        res = _invoke(*args)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert res.output.startswith(("error: --task '/etc/x': not a task", "error: unknown model '../../x'",
                                      "error: unknown model '/x'"))


@pytest.mark.parametrize("names", [("tiny-hubert", "..", "x"), ("tiny-hubert", "/abs", "x"), ("a/b",), ("",)])
def test_every_path_built_from_names_stays_under_its_root(tmp_path, names):
    from repro.errors import ConfigError
    from repro.workspace import under

    with pytest.raises(ConfigError, match="not a name .* that names one folder under"):
        under(tmp_path / "features", *names)
    made = under(tmp_path / "features", "tiny-hubert", "KS", "dev.pooled")
    assert made == tmp_path / "features" / "tiny-hubert" / "KS" / "dev.pooled"


def test_a_symbolic_link_leading_outside_the_stores_is_refused(tmp_path, workspace_env):
    from test_faults import PROFILE as text

    prof = _profile(tmp_path / "p", text)
    assert _invoke("run", "--profile", prof, "--stage", "corpus", "--quiet").exit_code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    model = workspace_env / "work" / "faultprof" / "features" / "tiny-hubert"
    model.mkdir(parents=True)
    (model / "KS").symlink_to(outside, target_is_directory=True)
    res = _invoke("extract", "--profile", prof, "-t", "KS", "--quiet")
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (
        f"error: {model / 'KS'}: a symbolic link that leads outside {model.parent} (to {outside / 'dev'}); remove it "
        "(the run then makes the folder there), or link the whole of its parent folder instead")
    assert list(outside.iterdir()) == []


def test_manifest_and_split_settings_are_file_names(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("extends: smoke\nspeaker_training: {train_task: ../../x}\n")
    res = _invoke("config", "show", "--profile", prof)
    assert res.exit_code == 2 and res.output.strip() == (
        f"error: {prof}: key 'speaker_training.train_task' is '../../x'; it names a manifest or split, not a path: "
        "use letters, digits, '.', '_' and '-', starting with a letter or digit")


# --- bounded YAML and messages -----------------------------------------------------------------------

def _laughs(levels: int = 9) -> str:
    """Nine levels of nine aliases under a setting that takes any value (9^9 strings once expanded), then a
    string setting given the last level: the type error used to print the expanded value."""
    lines = ["name: laughs", "ssl_training: {hubert: {arch: {", " a0: &a0 [" + ",".join(["lol"] * 9) + "],"]
    lines += [f" a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]," for i in range(1, levels)]
    return "\n".join(lines) + f"\n}}}}}}\ndescription: *a{levels - 1}\n"


def test_a_billion_laughs_profile_is_refused_at_load_time(tmp_path):
    prof = tmp_path / "laughs.yaml"
    prof.write_text(_laughs())
    assert prof.stat().st_size < 500
    started = time.perf_counter()
    res = _repro("config", "show", "--profile", str(prof))
    assert res.returncode == 2 and res.stdout.strip() == (
        f"error: {prof}: its YAML aliases (*name) expand to more than 10,000 values; write the values out, or use "
        "fewer aliases"), res.stdout
    assert time.perf_counter() - started < 60  # (a process start; the expansion took 14 s and 3 GB before)


def test_small_aliases_load_and_a_value_holding_itself_is_refused(tmp_path):
    from repro.config.yamlfile import safe_load
    from repro.errors import ConfigError

    assert safe_load("a: &x [1, 2]\nb: [*x, *x]\n") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    with pytest.raises(ConfigError, match=r"the YAML alias \*x refers to the value that contains it"):
        safe_load("a: &x [1, *x]\n", "r.yaml")


def test_every_yaml_file_is_read_by_the_bounded_loader():
    found = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "repro").rglob("*.py"))
             if "yaml.safe_load(" in p.read_text() or "yaml.load(" in p.read_text()]
    assert found == []


@pytest.mark.parametrize("text", ["description: [" + ", ".join(["lol"] * 5000) + "]",
                                  "description: smoke\nseed: '" + "9" * 20000 + "'"])
def test_values_in_error_messages_are_cut_to_a_readable_length(tmp_path, text):
    prof = tmp_path / "p.yaml"
    prof.write_text("extends: smoke\nname: long\n" + text + "\n")
    res = _invoke("config", "show", "--profile", prof)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output[:300]
    assert len(res.output) < 250 and "..." in res.output, res.output


# --- roots and links ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("var", ["REPRO_WORK", "REPRO_RESULTS"])
def test_a_root_that_is_a_file_is_one_line_naming_it(tmp_path, monkeypatch, var):
    afile = tmp_path / "afile"
    afile.write_text("")
    res = _repro("run", "--stage", "corpus", "--quiet", cwd=tmp_path, env={var: str(afile)})
    assert res.returncode == 2 and res.stdout.strip() == (
        f"error: ${var}={afile}: {afile} is a file, not a folder; point ${var} at a folder (the outputs go there), "
        "or move the file away"), res.stdout


def test_force_never_deletes_a_linked_corpus(tmp_path, workspace_env):
    from test_faults import PROFILE as text

    prof = _profile(tmp_path / "p", text)
    res = _invoke("run", "--profile", prof, "--stage", "corpus", "--quiet")
    assert res.exit_code == 0, res.output
    corpus = workspace_env / "work" / "faultprof" / "corpus"
    shared = tmp_path / "shared" / "corpus"
    shared.parent.mkdir()
    corpus.rename(shared)
    corpus.symlink_to(shared, target_is_directory=True)
    files = sorted(p.relative_to(shared) for p in shared.rglob("*"))
    res = _invoke("run", "--profile", prof, "--stage", "corpus", "--quiet")  # complete: kept through the link
    assert res.exit_code == 0, res.output
    res = _invoke("run", "--profile", prof, "--stage", "corpus", "--quiet", "--force")
    assert res.exit_code == 2 and res.output.strip() == (
        f"error: {corpus}: a symbolic link to {shared}: --force would delete the corpus there and make it again; "
        f"delete {shared} yourself to make the corpus there, or remove the link (`rm {corpus}`) to make it in "
        f"{corpus.parent}"), res.output
    prof.write_text(text.replace("speakers: 14,", "speakers: 15,"))  # a corpus of other settings would replace it
    res = _invoke("run", "--profile", prof, "--stage", "corpus", "--quiet")
    assert res.exit_code == 2 and "the corpus there was made under other settings" in res.output, res.output
    assert corpus.is_symlink() and sorted(p.relative_to(shared) for p in shared.rglob("*")) == files


# --- fix-it commands name the profile as given ---------------------------------------------------------

def test_fix_it_commands_name_the_profile_file(tmp_path, workspace_env):
    from repro.config import load_profile
    from repro.provenance import trained_model_key

    prof = _profile(tmp_path / "p", PROFILE.replace("speaker_sup: []", "speaker_sup: [tiny-ecapa-sup]"))
    assert _invoke("run", "--profile", prof, "--stage", "corpus", "--quiet").exit_code == 0
    res = _invoke("paper", "render", "--profile", prof, "--id", "table-1")
    assert res.exit_code == 2 and f"-> make them with `make probe PROFILE={prof}`" in res.output, res.output

    folder = workspace_env / "work" / "faultprof" / "models" / "tiny-ecapa-sup"
    res = _invoke("extract", "--profile", prof, "-m", "tiny-ecapa-sup", "-t", "KS", "--quiet")
    assert res.exit_code == 2 and res.output.strip().endswith(
        f"train it with `repro train --profile {prof} --recipe supervised` "
        f"(or `repro run --profile {prof} --stage train`)"), res.output

    folder.mkdir(parents=True)
    (folder / "embedding_model.ckpt").write_bytes(b"not weights")
    import hashlib

    info = {"recipe": "supervised", "kind": "speechbrain_ecapa", "weights_file": "embedding_model.ckpt",
            "weights_sha256": "0" * 64,
            "provenance": {"settings": trained_model_key(load_profile(str(prof)), "supervised")}}
    (folder / "model.json").write_text(json.dumps(info))
    res = _invoke("extract", "--profile", prof, "-m", "tiny-ecapa-sup", "-t", "KS", "--quiet")
    assert res.exit_code == 2 and res.output.strip().endswith(
        f"train it again: `repro train --profile {prof} --recipe supervised --force` makes it"), res.output

    info.update(kind="other", weights_sha256=hashlib.sha256(b"not weights").hexdigest())
    (folder / "model.json").write_text(json.dumps(info))
    res = _invoke("extract", "--profile", prof, "-m", "tiny-ecapa-sup", "-t", "KS", "--quiet")
    assert res.exit_code == 2 and res.output.strip().endswith(
        f"retrain with `repro train --profile {prof} --recipe supervised --force`"), res.output
