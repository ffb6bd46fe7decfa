"""The committed smoke checksums: the portable part (the synthetic corpus) must match on any machine."""

from pathlib import Path

from conftest import copy_corpus
from repro.config import load_profile
from repro.paper import checksums
from repro.workspace import Workspace


def test_smoke_corpus_matches_the_committed_record(tmp_path, smoke_corpus):
    ws = Workspace(load_profile("smoke"), tmp_path / "work", tmp_path / "results", tmp_path / "figures")
    copy_corpus(smoke_corpus, ws.corpus_dir)  # the session's smoke corpus (conftest), made by make_corpus
    record = checksums.parse_record(checksums.record_path(ws).read_text())
    portable = {n for n in record if n.startswith(checksums.PORTABLE)}
    assert len(portable) >= 8  # corpus.json, phones.txt, 6 task manifests, 2 trial lists
    assert checksums.verify(ws, portable=True) == {"changed": [], "missing": [], "extra": []}


def test_record_covers_every_registered_output():
    from repro.paper.registry import OUTPUTS

    ws = Workspace.for_profile("smoke")
    names = set(checksums.parse_record(checksums.record_path(ws).read_text()))
    for out in OUTPUTS:
        for suffix in out.writes:
            assert f"figures/{out.id}{suffix}" in names
    assert any(n.startswith("results/probing/") for n in names) and any(n.startswith("results/cka/") for n in names)
