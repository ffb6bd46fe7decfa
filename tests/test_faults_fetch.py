"""Fetch faults provoked the way a user meets them: `python -m repro data fetch` in child processes against
a loopback server (docs/FAULTS.md, "Fetches: one writer, cut transfers, readable outputs")."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from loopback import LoopbackServer, make_tar_gz, sha256

ROOT = Path(__file__).resolve().parents[1]
FILES = {f"pack/{i:02d}.txt": (f"line {i} " * 4000).encode() for i in range(8)}


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


def _archive(srv: LoopbackServer, name: str, data: bytes, **extra) -> dict:
    srv.files[f"/{name}"] = data
    return {"name": name.split(".")[0], "file": name, "format": "tar.gz", "urls": [srv.url(f"/{name}")],
            "sha256": sha256(data), "checksum_source": "test", "bytes": len(data), "bytes_exact": True,
            "expect": [{"glob": "pack/*.txt", "count": len(FILES), "source": "test", "confirmed": True}], **extra}


def _catalog(tmp_path: Path, corpora: dict[str, list[dict]]) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"format": 1, "corpora": {name: {
        "title": name, "homepage": "http://example.invalid", "licence": "CC0", "access": "auto", "tasks": ["PR"],
        "archives": archives} for name, archives in corpora.items()}}))
    return path


def _fetch(tmp_path: Path, *names: str, umask: int | None = None) -> subprocess.Popen:
    """`python -m repro data fetch NAMES --quiet` in a child process with the test's catalogue, data root and
    lock file (stdout and stderr together)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPRO_DATA": str(tmp_path / "data"),
           "REPRO_DATA_LOCK": str(tmp_path / "data.lock.json"), "REPRO_DATA_CATALOG": str(tmp_path / "catalog.yaml"),
           "OMP_NUM_THREADS": "1"}
    env.pop("REPRO_LOCK_TIMEOUT", None)
    return subprocess.Popen([sys.executable, "-m", "repro", "data", "fetch", *names, "--quiet"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def _done(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


# --- one writer for downloads and the data lock --------------------------------------------------------------------

@pytest.mark.slow
def test_two_fetches_of_different_corpora_keep_every_pin(server, tmp_path):
    data = {c: make_tar_gz({**FILES, f"pack/{c}.id": c.encode()}) for c in ("toya", "toyb")}
    _catalog(tmp_path, {c: [_archive(server, f"{c}.tar.gz", d)] for c, d in data.items()})
    release = threading.Event()  # both transfers wait until both fetches are downloading
    for c in data:
        server.hold[f"/{c}.tar.gz"] = release
    procs = [_fetch(tmp_path, c) for c in data]
    deadline = time.monotonic() + 240
    while len(server.requests) < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    release.set()
    results = [_done(p) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    pins = json.loads((tmp_path / "data.lock.json").read_text())["archives"]
    assert {k: v["sha256"] for k, v in pins.items()} == {f"{c}/{c}.tar.gz": sha256(d) for c, d in data.items()}
    for c in data:
        assert (tmp_path / "data" / c / c / "pack" / f"{c}.id").read_text() == c


@pytest.mark.slow
def test_a_second_fetch_of_one_corpus_waits_for_the_first(server, tmp_path):
    data = make_tar_gz(FILES)
    _catalog(tmp_path, {"toy": [_archive(server, "toy.tar.gz", data)]})
    release = server.hold["/toy.tar.gz"] = threading.Event()  # the first transfer waits for the second fetch
    first = _fetch(tmp_path, "toy")
    deadline = time.monotonic() + 240
    while not server.requests and time.monotonic() < deadline:  # the first fetch is downloading
        time.sleep(0.05)
    second = _fetch(tmp_path, "toy")
    seen = []
    for line in second.stdout:  # until the second fetch says it waits
        seen.append(line)
        if line.startswith("waiting for"):
            break
    release.set()
    (rc1, out1), (rc2, rest) = _done(first), _done(second)
    out2 = "".join(seen) + rest
    assert (rc1, rc2) == (0, 0), (out1, out2)
    assert "Traceback" not in out1 + out2
    waiting = [line for line in out2.splitlines() if line.startswith("waiting for")]
    assert len(waiting) == 1 and waiting[0].startswith(f"waiting for the download of toy under {tmp_path / 'data'}: "
                                                       "another run writes it (pid ")
    assert "`repro data fetch toy --quiet`" in waiting[0]
    assert out2.splitlines()[-1] == "toy/toy: ready"
    assert server.requests == [("/toy.tar.gz", None)]  # downloaded once
    assert (tmp_path / "data/toy/toy/pack/07.txt").read_bytes() == FILES["pack/07.txt"]
    assert json.loads((tmp_path / "data.lock.json").read_text())["archives"]["toy/toy.tar.gz"]["sha256"] == sha256(data)
    assert not list((tmp_path / "data/downloads").glob("*.part"))


# --- transfers judged by what is known -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_transfer_cut_without_a_length_is_resumed_not_blamed_on_the_publisher(server, tmp_path):
    data = make_tar_gz(FILES)
    _catalog(tmp_path, {"toy": [_archive(server, "toy.tar.gz", data)]})
    cut = len(data) // 3
    server.no_length.add("/toy.tar.gz")  # the body ends when the server closes the connection
    server.drops["/toy.tar.gz"] = [cut]  # ... after a third of the file
    server.refusals["/toy.tar.gz"] = 1   # and the retry in the same fetch finds the server gone
    rc, out = _done(_fetch(tmp_path, "toy"))
    assert rc == 2 and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: toy.tar.gz: transfer cut at {cut:,} of {len(data):,} bytes; run the fetch again to resume"), out
    assert "catalog.yaml" not in out and "checksum" not in out
    part = tmp_path / "data/downloads/toy.tar.gz.part"
    assert part.read_bytes() == data[:cut]  # kept for the next fetch
    assert not (tmp_path / "data/downloads/quarantine").exists() and not (tmp_path / "data.lock.json").exists()
    # the next fetch asks for the rest only
    rc, out = _done(_fetch(tmp_path, "toy"))
    assert rc == 0, out
    assert server.requests[-1] == ("/toy.tar.gz", f"bytes={cut}-")
    assert json.loads((tmp_path / "data.lock.json").read_text())["archives"]["toy/toy.tar.gz"]["sha256"] == sha256(data)
    assert (tmp_path / "data/toy/toy/pack/07.txt").read_bytes() == FILES["pack/07.txt"]


# --- readable outputs ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_fetched_outputs_have_the_modes_of_the_umask(server, tmp_path, umask, file_mode, dir_mode):
    listing = b"1 a b\n0 a c\n"
    server.files["/list.txt"] = listing
    _catalog(tmp_path, {"toy": [_archive(server, "toy.tar.gz", make_tar_gz(FILES)),
                                {"name": "meta", "file": "list.txt", "format": "file", "urls": [server.url("/list.txt")],
                                 "sha256": sha256(listing), "checksum_source": "test"}]})
    rc, out = _done(_fetch(tmp_path, "toy", umask=umask))
    assert rc == 0, out
    data = tmp_path / "data"
    files = [tmp_path / "data.lock.json",        # the lock file (atomic JSON writer)
             data / "toy/meta/list.txt",          # a plain file put in place (atomic_path)
             data / "toy/toy" / ".repro-extracted.json", data / "toy/toy/pack/03.txt",
             data / "downloads/toy.tar.gz"]
    folders = [data / "toy/toy", data / "toy/toy/pack", data / "toy/meta"]  # extracted atomically (atomic_directory)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files + folders}
    assert modes == {**{str(p.relative_to(tmp_path)): oct(file_mode) for p in files},
                     **{str(p.relative_to(tmp_path)): oct(dir_mode) for p in folders}}
