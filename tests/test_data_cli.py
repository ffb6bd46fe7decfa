"""The data commands end to end: manual corpora, fetch from a loopback server, the real-corpus stage."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile

import yaml
from click.testing import CliRunner
from fake_corpora import make_fsc, make_iemocap, make_librispeech, make_speech_commands
from loopback import LoopbackServer

from repro.cli import main
from repro.data.catalog import load_catalog
from repro.data.download import FetchOptions, fetch
from repro.data.lock import DataLock
from repro.data.manifest import load_task
from repro.data.manual import verify_manual
from repro.data.prepare import Sources, prepare_corpus


def test_verify_manual_corpus_absent_prints_where_to_get_it(tmp_path):
    res = CliRunner().invoke(main, ["data", "verify", "iemocap", "--path", str(tmp_path / "nowhere")])
    assert res.exit_code == 1
    assert f"not found: {tmp_path / 'nowhere'}" in res.output
    assert "How to get it: Fill in the release form at https://sail.usc.edu/iemocap/iemocap_release.htm" in res.output
    assert f"Put it at {tmp_path / 'nowhere'}" in res.output and "iemocap: NOT READY" in res.output


def test_verify_fsc_present_but_incomplete_lists_what_is_missing(tmp_path):
    folder = tmp_path / "fluent_speech_commands_dataset"
    make_fsc(folder)
    res = CliRunner().invoke(main, ["data", "verify", "fluent-speech-commands", "--path", str(folder)])
    assert res.exit_code == 0, res.output  # complete; third-party counts differ -> warnings only
    assert "warning: data/train_data.csv has 8 rows, expected 23,132" in res.output
    gone = folder / (folder / "data/train_data.csv").read_text().splitlines()[2].split(",")[1]
    gone.unlink()
    (folder / "data/test_data.csv").unlink()
    res = CliRunner().invoke(main, ["data", "verify", "fluent-speech-commands", "--path", str(folder)])
    assert res.exit_code == 1
    assert "missing: fluent-speech-commands: 0 path(s) match 'data/test_data.csv', expected 1" in res.output
    assert "test_data.csv: not found" in res.output
    assert "missing: 1 audio file(s) referenced by data/train_data.csv:" in res.output
    assert gone.relative_to(folder).as_posix() in res.output


def test_verify_iemocap_incomplete_lists_missing_wavs_and_counts(tmp_path):
    folder = tmp_path / "IEMOCAP_full_release"
    rows = make_iemocap(folder)
    rep = verify_manual(load_catalog().corpus("iemocap"), folder)
    assert not rep.ok  # the built-in catalogue expects SUPERB's 5,531 utterances
    assert f"incomplete: 4-class utterances total = {len(rows)}, expected 5531" in "\n".join(rep.lines)
    k, utt, _ = rows[3]
    (folder / f"Session{k}/sentences/wav/{utt.rsplit('_', 1)[0]}/{utt}.wav").unlink()
    rep = verify_manual(load_catalog().corpus("iemocap"), folder)
    assert "missing: 1 audio file(s) referenced by the EmoEvaluation label files:" in rep.lines
    assert f"  Session{k}/sentences/wav/{utt.rsplit('_', 1)[0]}/{utt}.wav" in rep.lines


def _tgz(folder, arc_root: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.name.startswith(".repro"):
                tar.add(p, arcname=(arc_root + p.relative_to(folder).as_posix()))
    return buf.getvalue()


def test_fetch_then_prepare_speech_commands_from_archives(tmp_path):
    """Archives with the real layout served over HTTP, fetched, verified, extracted, then prepared."""
    src = tmp_path / "src"
    make_speech_commands(src)
    train = _tgz(src / "speech-commands/v0.01")
    test = _tgz(src / "speech-commands/test-v0.01")
    cat = yaml.safe_load(open(load_catalog.__globals__["CATALOG_PATH"]).read())
    with LoopbackServer() as srv:
        srv.files["/sc.tar.gz"], srv.files["/sct.tar.gz"] = train, test
        sc = cat["corpora"]["speech-commands"]
        for a, path, data in ((sc["archives"][0], "/sc.tar.gz", train), (sc["archives"][1], "/sct.tar.gz", test)):
            a["urls"] = [srv.url(path)]
            a["sha256"] = hashlib.sha256(data).hexdigest() if path == "/sc.tar.gz" else None
            a["expect"] = [e for e in a["expect"] if e.get("confirmed")]
        (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(cat))
        catalog = load_catalog(tmp_path / "catalog.yaml")
        lock = DataLock(tmp_path / "data.lock.json")
        fetch(["speech-commands"], root=tmp_path / "data", lock=lock, catalog=catalog,
              options=FetchOptions(progress=False, log=lambda m: None))
    assert lock.archive("speech-commands/speech_commands_test_set_v0.01.tar.gz")["verified_by"] == [
        "none published: sha256 recorded at first download"]
    from repro.config import load_profile
    import dataclasses

    base = load_profile("fast")
    prof = dataclasses.replace(base, tasks=["KS"], data=dataclasses.replace(base.data, cka_utterances=0, subsets={}))
    out = prepare_corpus(tmp_path / "corpus", prof, progress=False, log=lambda m: None,
                         sources=Sources(catalog=catalog, root=tmp_path / "data", lock=lock))
    utts = load_task(out, "KS")
    assert len([u for u in utts if u.split == "test"]) == 24
    assert all((out / u.path).is_file() for u in utts)


REAL_PROFILE = """
name: realtiny
description: real-corpus code path on tiny fake corpora
seed: 0
corpus: {kind: real}
models: {speech_ssl: [tiny-hubert], speaker_ssl: [], speaker_sup: []}
tasks: [KS, PR, IC]
extraction: {device: cpu, max_batch_seconds: 16}
probing:
  tasks:
    KS: {steps: 2, batch_size: 2, lr_grid: [0.01], eval_every: 2}
    PR: {steps: 2, batch_size: 2, lr_grid: [0.01], eval_every: 2}
    IC: {steps: 2, batch_size: 2, lr_grid: [0.01], eval_every: 2}
data:
  cka_utterances: 3
  workers: 2
  subsets:
    KS: {train: {per_label: 1}, dev: {per_label: 1}, test: {per_label: 1}}
"""


def test_pipeline_runs_unchanged_on_a_prepared_real_corpus(tmp_path, workspace_env, monkeypatch):
    root = tmp_path / "data"
    make_librispeech(root, speakers=1, per_chapter=2)
    make_speech_commands(root, per_word=2)
    make_fsc(tmp_path / "fsc", per_split={"train": 4, "valid": 4, "test": 4})
    monkeypatch.setenv("REPRO_DATA", str(root))
    monkeypatch.setenv("REPRO_DATA_LOCK", str(tmp_path / "data.lock.json"))
    prof = tmp_path / "realtiny.yaml"
    prof.write_text(REAL_PROFILE + f"  manual_paths: {{fluent-speech-commands: {tmp_path / 'fsc'}}}\n")
    runner = CliRunner()
    # without IEMOCAP nothing else is missing: the profile has no ER
    res = runner.invoke(main, ["run", "--profile", str(prof), "--stage", "corpus", "--stage", "features", "--quiet"])
    assert res.exit_code == 0, res.output
    work = workspace_env / "work" / "realtiny"
    stores = sorted(str(p.parent.relative_to(work / "features")) for p in (work / "features").rglob("meta.json"))
    assert stores == [f"{m}/{t}/{s}" for m in ("tiny-hubert",) for t in ("IC", "KS", "PR")
                      for s in ("dev", "test", "train")]
    assert (work / "corpus" / "manifests" / "CKA.jsonl").is_file()
    # the data moves: only the links change, manifests stay byte-identical
    before = (work / "corpus" / "manifests" / "PR.jsonl").read_bytes()
    shutil.move(root, tmp_path / "moved")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "moved"))
    res = runner.invoke(main, ["data", "prepare", "--profile", str(prof), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (work / "corpus" / "manifests" / "PR.jsonl").read_bytes() == before
    assert (work / "corpus" / "sources" / "data").resolve() == (tmp_path / "moved").resolve()


def test_real_stage_without_data_names_what_is_missing(tmp_path, workspace_env, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("REPRO_DATA_LOCK", str(tmp_path / "l.json"))
    res = CliRunner().invoke(main, ["run", "--profile", "fast", "--stage", "corpus", "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "error: profile 'fast' needs data that is not there" in res.output
    assert "repro data fetch librispeech librispeech-lexicon speech-commands voxceleb1" in res.output
    assert "fluent_speech_commands_dataset" in res.output and "IEMOCAP_full_release" in res.output


def test_fetch_dry_run_lists_the_profile_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "d"))
    res = CliRunner().invoke(main, ["data", "fetch", "--profile", "full", "--dry-run"])
    assert res.exit_code == 0, res.output
    for key in ("librispeech/train-clean-100", "speech-commands/test-v0.01", "voxceleb1/dev", "voxceleb1/trials",
                "librispeech-lexicon/lexicon-200k"):
        assert key in res.output
    assert "voxceleb2" not in res.output  # only what the profile's tasks need
    assert "fluent-speech-commands (user-provided): NOT READY" in res.output
    assert not (tmp_path / "d").exists()
