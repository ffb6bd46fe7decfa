"""No code from data, no damaged weights: weights-only loads, and every weight file checked against its digest.

The faults (docs/FAULTS.md, "Weights and checkpoints") are tried through the command line as a user
meets them; the rules (weights-only `torch.load`, pickle-free numpy, safe YAML) are enforced on the
package's source, so a new violation fails here.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from repro import weights
from repro.models.upstream import ModelUnavailableError
from repro.cli import main
from repro.weights import WeightsError, digest_record, load_checkpoint, load_weights, save_checkpoint
from test_faults import faultprof, faultprof_corpus  # noqa: F401 - the one-model, one-task profile (fixtures)
from test_wespeaker_ecapa import _register, tiny_checkpoint  # noqa: F401 - a tiny wespeaker checkpoint (a fixture)

PACKAGE = Path(__file__).resolve().parents[1] / "repro"


# --- the rules, on the package's source ------------------------------------------------------------

def _name(node: ast.AST) -> str:
    """`a.b.c` for an attribute chain or name, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, key: str):
    """The constant value of keyword `key` of `call` ('absent' when not given, 'not a constant' otherwise)."""
    for kw in call.keywords:
        if kw.arg == key:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
        if kw.arg is None:  # **kwargs hides it
            return "not a constant"
    return "absent"


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Loads of data that could run code: `torch.load` without `weights_only=True`, `numpy.load` with
    `allow_pickle` other than False, YAML through anything but the safe loader, and any unpickling."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module path (import torch as t; from torch import load)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        where = f"{filename}:{node.lineno}"
        if full == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif full in ("numpy.load", "numpy.lib.format.read_array", "numpy.lib.format.write_array") and _keyword(node, "allow_pickle") not in (
                False, "absent"):
            found.append(f"{where}: {full} with allow_pickle={_keyword(node, 'allow_pickle')}")
        elif full.startswith("yaml.") and full.split(".")[-1] in ("load", "load_all", "unsafe_load", "full_load",
                                                                     "unsafe_load_all", "full_load_all"):
            found.append(f"{where}: {full} (only yaml.safe_load)")
        elif full.startswith(("pickle.", "cPickle.", "dill.", "joblib.")) and full.split(".")[-1] in (
                "load", "loads", "Unpickler"):
            found.append(f"{where}: {full}")
    return found


def test_the_package_loads_no_code_from_data():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == []


@pytest.mark.parametrize("line, caught", [
    ("torch.load(p)", True),
    ("torch.load(p, weights_only=False)", True),
    ("torch.load(p, weights_only=flag)", True),
    ("torch.load(p, **kw)", True),
    ("torch.load(p, map_location='cpu', weights_only=True)", False),
    ("import torch as t\nt.load(p)", True),
    ("from torch import load\nload(p, weights_only=False)", True),
    ("np.load(p, allow_pickle=True)", True),
    ("np.load(p)", False),
    ("np.load(p, allow_pickle=False)", False),
    ("yaml.load(text, Loader=yaml.Loader)", True),
    ("yaml.unsafe_load(text)", True),
    ("yaml.safe_load(text)", False),
    ("import pickle\npickle.loads(b)", True),
])
def test_the_source_check_catches_each_kind_of_unsafe_load(line, caught):
    source = "import numpy as np\nimport torch\nimport yaml\n" + line + "\n"
    assert bool(violations(source)) is caught, violations(source)


def test_numpy_results_are_written_and_read_without_pickles(tmp_path):
    import numpy as np

    from repro.util.npz import read_npz, write_npz

    write_npz(tmp_path / "a.npz", {"x": np.array([1.0, 2.0])})
    assert read_npz(tmp_path / "a.npz")["x"].tolist() == [1.0, 2.0]
    objects = np.array([{"code": 1}], dtype=object)  # an object array is stored as a pickle
    with pytest.raises(ValueError, match="allow_pickle"):
        write_npz(tmp_path / "b.npz", {"x": objects})
    np.savez(tmp_path / "obj.npz", x=objects)  # a file from elsewhere
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npz(tmp_path / "obj.npz")


def test_yaml_profiles_and_registries_do_not_build_python_objects(tmp_path, monkeypatch):
    from repro.config import ConfigError, load_profile
    from repro.models.registry import load_registry

    marker = tmp_path / "ran"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    prof = tmp_path / "p.yaml"
    prof.write_text(f"extends: smoke\nname: p\ndescription: {payload}\n")
    with pytest.raises(ConfigError):
        load_profile(prof)
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"m:\n  family: speech_ssl\n  loader: hf_random\n  about: {payload}\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", str(reg))
    import yaml

    with pytest.raises(yaml.YAMLError):
        load_registry()
    assert not marker.exists()


# --- checkpoints: digest recorded when written, checked when read ----------------------------------

class _Payload:
    """What a stranger's `torch.save` can hold: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _flip_bit(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_checkpoint_round_trips_and_a_flipped_bit_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    written = save_checkpoint({"step": 3, "w": torch.arange(1000.0)}, path)
    assert json.loads(digest_record(path).read_text()) == {"file": "c.pt", "sha256": written, "previous": None}
    assert load_checkpoint(path, "fix it")["step"] == 3
    _flip_bit(path)
    weights._DIGESTS.clear()
    with pytest.raises(WeightsError) as err:
        load_checkpoint(path, "fix it")
    assert str(err.value) == (f"{path}: damaged: its sha256 differs from the one recorded when it was written "
                              f"({digest_record(path)}); fix it")


def test_a_run_killed_between_the_record_and_the_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"step": 2}, path)
    before = path.read_bytes()

    real = os.replace

    def killed(src, dst):  # the digest record of step 4 is in place; the checkpoint's rename never happens
        if Path(dst) == path:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 4}, path)
    monkeypatch.undo()
    weights._DIGESTS.clear()
    assert path.read_bytes() == before and load_checkpoint(path, "fix it")["step"] == 2


def test_a_pickle_payload_is_never_run_even_with_a_matching_digest(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "c.pt"
    torch.save({"model": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="no digest recorded beside it"):
        load_checkpoint(path, "fix it")
    digest_record(path).write_text(json.dumps({"file": "c.pt", "sha256": weights.digest(path)}))
    with pytest.raises(WeightsError) as err:
        load_checkpoint(path, "fix it")
    assert str(err.value) == (f"{path}: holds Python objects besides weights, which are never loaded (loading them "
                              "could run code); fix it")
    assert not marker.exists()


def test_a_cut_file_is_unreadable_in_one_line(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(WeightsError) as err:
        load_weights(path, "fix it")
    message = str(err.value)
    assert message.startswith(f"{path}: unreadable (") and message.endswith("); fix it") and "\n" not in message


def test_a_digest_is_computed_once_per_process(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"w": torch.zeros(10)}, path)
    weights._DIGESTS.clear()
    calls = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        load_checkpoint(path, "fix it")
    assert len(calls) == 1
    save_checkpoint({"w": torch.ones(10)}, path)  # written in this process: its digest is known
    load_checkpoint(path, "fix it")
    assert len(calls) == 2  # the temporary file hashed once when written, never again when read


def test_a_fix_it_command_names_the_profile_as_given(tmp_path):
    from repro.config import load_profile
    from repro.remedy import command

    assert command("extract", load_profile("smoke"), "-m", "tiny-hubert") == \
        "`repro extract --profile smoke -m tiny-hubert`"
    prof = tmp_path / "my variant.yaml"
    prof.write_text("extends: smoke\nname: variant\n")
    cfg = load_profile(str(prof))
    assert command("train", cfg, "--recipe", "dino", "--force") == \
        f"`repro train --profile '{prof}' --recipe dino --force`"
    assert command("paper render", "variant") == f"`repro paper render --profile '{prof}'`"
    assert command("data fetch", None, "KS") == "`repro data fetch KS`"


# --- the faults, through the command line ----------------------------------------------------------

def _probe_checkpoint(ws_root: Path) -> Path:
    return ws_root / "work" / "faultprof" / "probes" / "tiny-hubert" / "KS" / "lr-1e-02.pt"


def _last_line(output: str) -> str:
    assert "Traceback" not in output, output
    return output.strip().splitlines()[-1]


def _extract_and_probe(runner: CliRunner, profile: Path) -> None:
    for stage in ("extract", "probe"):
        res = runner.invoke(main, [stage, "--profile", str(profile), "--quiet"])
        assert res.exit_code == 0, res.output


def _probe_again(ws_root: Path) -> None:
    """Remove the probe's results, so that the next `repro probe` resumes from its checkpoint."""
    shutil.rmtree(ws_root / "results" / "faultprof" / "probing")
    weights._DIGESTS.clear()  # as a new process would start


def test_a_probe_checkpoint_holding_a_pickle_payload_is_refused_and_never_run(faultprof, workspace_env):
    runner = CliRunner()
    _extract_and_probe(runner, faultprof)
    ckpt = _probe_checkpoint(workspace_env)
    marker = workspace_env / "command-ran"
    saved = torch.load(ckpt, weights_only=True)
    fix = ("delete it (the probe then trains from its start), or train again with "
           f"`repro probe --profile {faultprof} -m tiny-hubert -t KS --force`")
    for with_record in (False, True):  # a stranger's file alone, or with a digest record that matches it
        torch.save({**saved, "state": {**saved["state"], "payload": _Payload(marker)}}, ckpt)
        digest_record(ckpt).unlink(missing_ok=True)
        if with_record:
            digest_record(ckpt).write_text(json.dumps({"file": ckpt.name, "sha256": weights.digest(ckpt)}))
        _probe_again(workspace_env)
        res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet"])
        assert res.exit_code == 2
        reason = ("holds Python objects besides weights, which are never loaded (loading them could run code)"
                  if with_record else "no digest recorded beside it (lr-1e-02.pt.sha256 is missing: not written "
                                      "by this version of the program)")
        assert _last_line(res.output) == f"error: {ckpt}: {reason}; {fix}"
        assert not marker.exists()
        assert not (workspace_env / "results" / "faultprof" / "probing" / "tiny-hubert" / "KS").exists()
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet", "--force"])
    assert res.exit_code == 0 and not marker.exists(), res.output


def test_a_truncated_probe_checkpoint_is_one_line_naming_it(faultprof, workspace_env):
    runner = CliRunner()
    _extract_and_probe(runner, faultprof)
    ckpt = _probe_checkpoint(workspace_env)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    _probe_again(workspace_env)
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 2
    assert _last_line(res.output) == (
        f"error: {ckpt}: damaged: its sha256 differs from the one recorded when it was written "
        f"({digest_record(ckpt)}); delete it (the probe then trains from its start), or train again with "
        f"`repro probe --profile {faultprof} -m tiny-hubert -t KS --force`")
    ckpt.unlink()  # the first remedy
    res = runner.invoke(main, ["probe", "--profile", str(faultprof), "--quiet"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("damage", ["one-low-bit", "a-few-bytes"])
def test_a_damaged_generated_model_is_refused_before_any_store_is_touched(faultprof, workspace_env, damage):
    runner = CliRunner()
    assert runner.invoke(main, ["extract", "--profile", str(faultprof), "--quiet"]).exit_code == 0
    folder = workspace_env / "work" / "faultprof" / "models" / "tiny-hubert"
    recorded = json.loads((folder / "digests.json").read_text())
    assert set(recorded) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    features = workspace_env / "work" / "faultprof" / "features"
    stores = {p: p.stat().st_mtime_ns for p in features.rglob("meta.json")}
    weights_file = folder / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    if damage == "one-low-bit":
        data[-4000] ^= 0x01  # the lowest mantissa bit of a float of the last tensor
    else:
        data[len(data) // 2: len(data) // 2 + 5] = b"\0" * 5
    weights_file.write_bytes(bytes(data))
    weights._DIGESTS.clear()
    command = f"`repro extract --profile {faultprof} -m tiny-hubert`"
    for args in (["extract"], ["extract", "--force"], ["run"]):  # (a probe reads the good stores, not the model)
        res = runner.invoke(main, [*args, "--profile", str(faultprof), "--quiet"])
        assert res.exit_code == 2, (args, res.output)
        assert _last_line(res.output) == (
            f"error: {weights_file}: damaged: its sha256 differs from the one recorded when it was written "
            f"({folder / 'digests.json'}); delete {folder}, then {command} makes it again")
    assert {p: p.stat().st_mtime_ns for p in features.rglob("meta.json")} == stores  # nothing re-extracted
    assert not (workspace_env / "results" / "faultprof" / "probing").exists()
    shutil.rmtree(folder)
    res = runner.invoke(main, ["extract", "--profile", str(faultprof), "--quiet", "-m", "tiny-hubert"])
    assert res.exit_code == 0 and "all up to date" in res.output, res.output  # made again: the same weights
    assert json.loads((folder / "digests.json").read_text()) == recorded


def test_a_speaker_resume_checkpoint_with_a_flipped_bit_is_neither_resumed_nor_published(tiny_corpus, tmp_path,
                                                                                           monkeypatch):
    from repro.recipes import TrainingInterrupted
    from test_speaker_training import make_ws, train_speaker

    ws = make_ws(tmp_path, tiny_corpus)
    with pytest.raises(TrainingInterrupted):
        train_speaker(ws, "supervised", progress=False, stop_after_step=3)  # checkpoint at step 2
    ckpt = ws.work / "speaker_training" / "tiny-ecapa-sup" / "checkpoint.pt"
    _flip_bit(ckpt)
    weights._DIGESTS.clear()
    monkeypatch.setenv("REPRO_WORK", str(ws.work_root))
    prof = str(tmp_path / "spk.yaml")
    res = CliRunner().invoke(main, ["train", "-r", "supervised", "-p", prof])
    assert res.exit_code == 2
    assert _last_line(res.output) == (
        f"error: {ckpt}: damaged: its sha256 differs from the one recorded when it was written "
        f"({digest_record(ckpt)}); delete it (the training then starts from scratch), or train again with "
        f"`repro train --profile {prof} --recipe supervised --force`")
    assert not (ws.models_dir / "tiny-ecapa-sup").exists()  # nothing published
    res = CliRunner().invoke(main, ["train", "-r", "supervised", "-p", prof, "--force"])
    assert res.exit_code == 0, res.output
    info = json.loads((ws.models_dir / "tiny-ecapa-sup" / "model.json").read_text())
    timing = json.loads((ws.work / "speaker_training" / "tiny-ecapa-sup" / "timing.json").read_text())
    assert info["steps"] == 4 and timing["resumed_from"] == 0


def test_a_published_model_whose_weights_changed_is_refused_with_the_command_that_trains_it(tmp_path):
    from repro.models.registry import load_upstream

    models = tmp_path / "work" / "smoke" / "models"
    folder = models / "tiny-hubert-mp"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "model.json").write_text(json.dumps({"recipe": "hubert", "kind": "hf_pretrained",
                                                   "weights_file": "model.safetensors",
                                                   "weights_sha256": "0" * 64}))
    with pytest.raises(WeightsError) as err:
        load_upstream("tiny-hubert-mp", models)
    assert str(err.value) == (f"{folder / 'model.safetensors'}: damaged: its sha256 differs from the one recorded "
                              f"when it was written ({folder / 'model.json'}); train it again: "
                              "`repro train --profile smoke --recipe hubert --force` makes it")


def test_a_damaged_model_json_is_refused_in_one_line_with_the_command_that_trains_it(tmp_path):
    from repro.models.registry import load_upstream

    models = tmp_path / "work" / "smoke" / "models"
    (models / "tiny-hubert-mp").mkdir(parents=True)
    (models / "tiny-hubert-mp" / "model.json").write_text('{"recipe": "hubert", "weights_fi')
    with pytest.raises(ModelUnavailableError) as err:
        load_upstream("tiny-hubert-mp", models)
    assert str(err.value) == (f"{models / 'tiny-hubert-mp' / 'model.json'}: damaged (not a model.json that names "
                              "its weights); train it again: `repro train --profile smoke --recipe hubert --force` "
                              "makes it")


def test_an_imported_model_changed_after_its_first_use_is_refused(hf_folder, tmp_path, monkeypatch):
    from repro.models.registry import load_upstream

    source = tmp_path / "my-wavlm"
    shutil.copytree(hf_folder("wavlm"), source)
    registry = tmp_path / "reg.yaml"
    registry.write_text(f"my-wavlm:\n  family: speech_ssl\n  loader: hf\n  source: {source}\n  about: a local model\n")
    monkeypatch.setenv("REPRO_MODEL_REGISTRY", f"{os.environ['REPRO_MODEL_REGISTRY']}:{registry}")
    models = tmp_path / "work" / "smoke" / "models"
    load_upstream("my-wavlm", models)  # the first import records the digest
    record = models / "my-wavlm" / "imported.json"
    assert list(json.loads(record.read_text())["files"]) == [os.path.realpath(source / "model.safetensors")]
    load_upstream("my-wavlm", models)
    _flip_bit(source / "model.safetensors", at=0.9)
    weights._DIGESTS.clear()
    with pytest.raises(WeightsError) as err:
        load_upstream("my-wavlm", models)
    assert str(err.value) == (
        f"{source / 'model.safetensors'}: damaged: its sha256 differs from the one recorded on its first import "
        f"({record}); restore it, or delete {record} to import the file as it is now; or point the registry "
        "entry's `source:` elsewhere")
    record.unlink()  # imported as it is now
    load_upstream("my-wavlm", models)


def test_an_imported_checkpoint_and_its_extracted_copy_are_checked(tmp_path, monkeypatch, tiny_checkpoint):
    import zipfile

    from repro.models.registry import load_upstream

    _, _, path = tiny_checkpoint
    models = tmp_path / "models"
    # a local checkpoint file: recorded on first use, refused once changed
    _register(tmp_path, monkeypatch, path)
    load_upstream("ws-tiny", models)
    original = path.read_bytes()
    _flip_bit(path, at=0.8)
    weights._DIGESTS.clear()
    with pytest.raises(WeightsError, match=r"avg_model.pt: damaged: its sha256 differs from the one recorded on its "
                                           r"first import \(.*imported.json\); restore it, or delete"):
        load_upstream("ws-tiny", models)
    path.write_bytes(original)
    # a zip as wespeaker publishes them: the extracted copy is checked against the digest taken when extracted
    archive = tmp_path / "published.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "model/avg_model.pt")
    _register(tmp_path, monkeypatch, archive)
    load_upstream("ws-tiny", tmp_path / "models2")
    extracted = tmp_path / "models2" / "ws-tiny" / "avg_model.pt"
    _flip_bit(extracted, at=0.8)
    weights._DIGESTS.clear()
    with pytest.raises(WeightsError) as err:
        load_upstream("ws-tiny", tmp_path / "models2")
    assert str(err.value) == (f"{extracted}: damaged: its sha256 differs from the one recorded when it was extracted "
                              f"({extracted.parent / 'extracted_from.json'}); delete it: the next run extracts it "
                              f"again from {archive}")
    extracted.unlink()
    load_upstream("ws-tiny", tmp_path / "models2")
