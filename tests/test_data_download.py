"""The downloader against a loopback HTTP server: resume, mirrors, checksums, unsafe archives, disk space."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
import yaml
from click.testing import CliRunner
from loopback import LoopbackServer, dead_url, make_tar_gz, make_zip, md5, sha256

from repro.cli import main
from repro.config.typed import ConfigError
from repro.data import catalog as catalog_module
from repro.data.archives import DamagedArchiveError, UnsafeArchiveError, extract
from repro.data.catalog import load_catalog
from repro.data.checksums import ChecksumError
from repro.data.diskspace import NotEnoughSpaceError
from repro.data.download import MARKER, ExpectationError, FetchOptions, describe, fetch, plan, verify_auto
from repro.data.http import RetryPolicy
from repro.data.lock import DataLock, LockMismatchError

FAST = RetryPolicy(attempts=3, backoff_s=0.0, timeout_s=5.0)
FILES = {f"pack/sub/{i:03d}.txt": (f"file {i} " * 2000).encode() for i in range(20)}


def _catalog(tmp_path, archives: list[dict], name: str = "toy"):
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"format": 1, "corpora": {name: {
        "title": "toy corpus", "homepage": "http://example.invalid", "licence": "CC0", "access": "auto",
        "tasks": ["PR"], "archives": archives}}}))
    return load_catalog(path)


def _run(names, tmp_path, catalog, **kw):
    logs: list[str] = []
    lock = DataLock(tmp_path / "data.lock.json")
    kw.setdefault("policy", FAST)
    steps = fetch(names, root=tmp_path / "data", lock=lock, catalog=catalog,
                  options=FetchOptions(progress=False, sleep=lambda s: None, log=logs.append, **kw))
    return steps, lock, logs


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


def test_happy_path_tar_gz_is_verified_extracted_and_recorded(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "md5": md5(data), "checksum_source": "test",
                               "bytes": len(data), "bytes_exact": True,
                               "expect": [{"glob": "pack/sub/*.txt", "count": 20, "source": "test", "confirmed": True}]}])
    steps, lock, logs = _run(["toy"], tmp_path, cat)
    out = tmp_path / "data" / "toy" / "a"
    assert sorted(p.name for p in (out / "pack" / "sub").iterdir()) == sorted(n.split("/")[-1] for n in FILES)
    assert (out / "pack/sub/007.txt").read_bytes() == FILES["pack/sub/007.txt"]
    marker = json.loads((out / MARKER).read_text())
    assert marker["files"] == 20 and marker["sha256"] == sha256(data)
    entry = lock.archive("toy/a.tar.gz")
    assert entry["sha256"] == sha256(data) and entry["bytes"] == len(data)
    assert entry["verified_by"] == ["md5 (test)", "sha256 (test)"]
    # a second fetch does nothing and makes no request
    n = len(server.requests)
    _, _, logs = _run(["toy"], tmp_path, cat)
    assert logs == ["toy/a: ready"] and len(server.requests) == n


def test_dropped_connection_resumes_with_range(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    server.drops["/a.tar.gz"] = [len(data) // 3, 100]  # two dropped connections
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    _, lock, logs = _run(["toy"], tmp_path, cat)
    ranges = [r for p, r in server.requests if p == "/a.tar.gz"]
    assert ranges == [None, f"bytes={len(data) // 3}-", f"bytes={len(data) // 3 + 100}-"]
    assert any("connection dropped" in line for line in logs)
    assert lock.archive("toy/a.tar.gz")["sha256"] == sha256(data)
    assert (tmp_path / "data/toy/a/pack/sub/019.txt").read_bytes() == FILES["pack/sub/019.txt"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    server.drops["/a.tar.gz"] = [len(data) // 2]
    server.ignore_range.add("/a.tar.gz")
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    _, lock, _ = _run(["toy"], tmp_path, cat)
    assert lock.archive("toy/a.tar.gz")["bytes"] == len(data)


def test_checksum_mismatch_quarantines_and_extracts_nothing(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "md5": "0" * 32, "checksum_source": "test"}])
    with pytest.raises(ChecksumError, match="every download failed its checksum"):
        _run(["toy"], tmp_path, cat)
    dl = tmp_path / "data" / "downloads"
    assert not (dl / "a.tar.gz").exists() and not (dl / "a.tar.gz.part").exists()
    quarantined = [p for p in (dl / "quarantine").iterdir() if not p.name.endswith(".why.txt")]
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == data
    assert "md5" in next((dl / "quarantine").glob("*.why.txt")).read_text()
    assert not (tmp_path / "data" / "toy").exists()
    assert DataLock(tmp_path / "data.lock.json").archive("toy/a.tar.gz") is None


def test_bad_mirror_content_falls_back_to_next_mirror(server, tmp_path):
    good = make_tar_gz(FILES)
    server.files["/bad/a.tar.gz"] = make_tar_gz({"x.txt": b"wrong"})
    server.files["/good/a.tar.gz"] = good
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz",
                               "urls": [server.url("/bad/a.tar.gz"), server.url("/good/a.tar.gz")],
                               "sha256": sha256(good), "checksum_source": "test"}])
    _, lock, logs = _run(["toy"], tmp_path, cat)
    assert lock.archive("toy/a.tar.gz")["url"].endswith("/good/a.tar.gz")
    assert any("fails its checksum" in line for line in logs)
    assert len(list((tmp_path / "data/downloads/quarantine").glob("a.tar.gz.*[0-9]"))) == 1


def test_dead_first_mirror_and_404_fall_back(server, tmp_path):
    data = make_zip(FILES)
    server.files["/m2/a.zip"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.zip", "format": "zip",
                               "urls": [dead_url("/a.zip"), server.url("/missing/a.zip"), server.url("/m2/a.zip")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    _, lock, logs = _run(["toy"], tmp_path, cat)
    assert lock.archive("toy/a.zip")["url"] == server.url("/m2/a.zip")
    assert any("giving up" in line for line in logs) and any("HTTP 404" in line for line in logs)
    assert (tmp_path / "data/toy/a/pack/sub/000.txt").read_bytes() == FILES["pack/sub/000.txt"]


def test_split_zip_is_verified_part_by_part_and_as_a_whole(server, tmp_path):
    whole = make_zip(FILES)
    cuts = [0, len(whole) // 3, 2 * len(whole) // 3, len(whole)]
    parts = [whole[a:b] for a, b in zip(cuts, cuts[1:])]
    split = []
    for i, p in enumerate(parts):
        server.files[f"/p{i}"] = p
        split.append({"file": f"a.zip.part{i}", "urls": [server.url(f"/p{i}")], "md5": md5(p)})
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.zip", "format": "zip", "split_of": split,
                               "sha256": sha256(whole), "checksum_source": "test"}])
    _, lock, _ = _run(["toy"], tmp_path, cat)
    assert lock.archive("toy/a.zip")["sha256"] == sha256(whole)
    assert all(lock.archive(f"toy/a.zip.part{i}")["md5"] == md5(p) for i, p in enumerate(parts))
    assert (tmp_path / "data/toy/a/pack/sub/011.txt").read_bytes() == FILES["pack/sub/011.txt"]
    assert not (tmp_path / "data/downloads/a.zip").exists()  # the joined file is never written


def test_split_parts_in_the_wrong_order_fail_the_whole_checksum(server, tmp_path):
    whole = make_zip(FILES)
    half = len(whole) // 2
    parts = [whole[half:], whole[:half]]
    split = []
    for i, p in enumerate(parts):
        server.files[f"/p{i}"] = p
        split.append({"file": f"a.zip.part{i}", "urls": [server.url(f"/p{i}")]})
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.zip", "format": "zip", "split_of": split,
                               "sha256": sha256(whole), "checksum_source": "test"}])
    with pytest.raises(ChecksumError, match="joined parts"):
        _run(["toy"], tmp_path, cat)
    assert not (tmp_path / "data/toy").exists()
    lock = DataLock(tmp_path / "data.lock.json")  # parts without a checksum of their own are not pinned either
    assert lock.archive("toy/a.zip.part0") is None and lock.archive("toy/a.zip.part1") is None


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "zip-dotdot"])
def test_path_traversal_archives_are_refused(server, tmp_path, kind):
    if kind == "dotdot":
        data, fmt = make_tar_gz({"ok.txt": b"fine", "../evil.txt": b"gotcha"}), "tar.gz"
    elif kind == "absolute":
        data, fmt = make_tar_gz({"ok.txt": b"fine", "/tmp/evil.txt": b"gotcha"}), "tar.gz"
    elif kind == "symlink":
        data, fmt = make_tar_gz({"ok.txt": b"fine"}, links={"link": "../../outside"}), "tar.gz"
    else:
        data, fmt = make_zip({"ok.txt": b"fine", "../evil.txt": b"gotcha"}), "zip"
    server.files["/x"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "x." + fmt, "format": fmt, "urls": [server.url("/x")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        _run(["toy"], tmp_path, cat)
    assert not (tmp_path / "data/toy/a").exists()
    assert not list((tmp_path / "data/toy").glob(".a.tmp-*"))
    assert not (tmp_path / "data/toy/evil.txt").exists() and not (tmp_path / "data/evil.txt").exists()


def test_too_little_disk_is_refused_before_downloading(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "checksum_source": "test", "bytes": 10_000_000_000,
                               "bytes_exact": True}])
    with pytest.raises(NotEnoughSpaceError) as err:
        _run(["toy"], tmp_path, cat, free=lambda p: 1_000_000_000)
    msg = str(err.value)
    need = 10_000_000_000 + int(10_000_000_000 * 1.25)
    assert f"needs 21.0 GiB ({need:,} bytes)" in msg and f"({need - 1_000_000_000:,} bytes)" in msg
    assert server.requests == []  # nothing was downloaded


def test_expected_counts_confirmed_fail_third_party_warn(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    arch = {"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
            "sha256": sha256(data), "checksum_source": "test"}
    cat = _catalog(tmp_path, [{**arch, "expect": [{"glob": "pack/sub/*.txt", "count": 21, "source": "s"}]}])
    _, _, logs = _run(["toy"], tmp_path, cat)
    assert any("warning: toy/a: 20 path(s) match 'pack/sub/*.txt', expected 21" in line for line in logs)
    sub = tmp_path / "x"
    sub.mkdir()
    cat2 = _catalog(sub, [{**arch, "expect": [{"glob": "pack/sub/*.txt", "count": 21, "source": "s", "confirmed": True}]}])
    with pytest.raises(ExpectationError, match="expected 21"):
        _run(["toy"], sub, cat2)
    assert not (tmp_path / "x/data/toy/a").exists()


def test_interrupted_extraction_is_detected_and_redone(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    # A process that dies (os._exit, no cleanup) in the middle of the extraction.
    script = textwrap.dedent(f"""
        import os, sys
        import repro.data.download as d
        real = d.extract
        def dying(*a, **k):
            return real(*a, **{{**k, "on_member": lambda i: os._exit(3) if i == 5 else None}})
        d.extract = dying
        from repro.data.catalog import load_catalog
        from repro.data.lock import DataLock
        from repro.data.http import RetryPolicy
        from pathlib import Path
        d.fetch(["toy"], root=Path({str(tmp_path / 'data')!r}), lock=DataLock({str(tmp_path / 'l.json')!r}),
                catalog=load_catalog({str(tmp_path / 'catalog.yaml')!r}),
                options=d.FetchOptions(progress=False, log=lambda m: None))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    leftovers = list((tmp_path / "data/toy").glob(".a.tmp-*"))
    assert len(leftovers) == 1 and not (tmp_path / "data/toy/a").exists()
    steps = plan(["toy"], tmp_path / "data", cat)
    assert not steps[0].ready and steps[0].have_files == ["a.tar.gz"]
    n = len(server.requests)
    _, _, logs = _run(["toy"], tmp_path, cat)
    assert any("interrupted extraction" in line for line in logs)
    assert len(server.requests) == n  # the verified archive is reused, not downloaded again
    assert json.loads((tmp_path / "data/toy/a" / MARKER).read_text())["files"] == 20
    assert not list((tmp_path / "data/toy").glob(".a.tmp-*"))


def test_existing_download_failing_checksum_is_quarantined_and_fetched_again(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    (tmp_path / "data/downloads").mkdir(parents=True)
    (tmp_path / "data/downloads/a.tar.gz").write_bytes(b"truncated")
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    _, lock, logs = _run(["toy"], tmp_path, cat)
    assert any("existing file fails its checksum" in line for line in logs)
    assert lock.archive("toy/a.tar.gz")["sha256"] == sha256(data)


def test_file_without_published_checksum_is_recorded_then_enforced(server, tmp_path):
    server.files["/list.txt"] = b"1 a b\n0 a c\n"
    cat = _catalog(tmp_path, [{"name": "trials", "file": "list.txt", "format": "file", "dest": "meta",
                               "urls": [server.url("/list.txt")], "checksum_source": "none published"}])
    _, lock, logs = _run(["toy"], tmp_path, cat)
    assert (tmp_path / "data/toy/meta/list.txt").read_bytes() == b"1 a b\n0 a c\n"
    assert lock.archive("toy/list.txt")["verified_by"] == ["none published: sha256 recorded at first download"]
    assert any("no published checksum; recorded sha256" in line for line in logs)
    # the publisher changes the file: a fresh download no longer matches the lock
    (tmp_path / "data/toy/meta/list.txt").unlink()
    (tmp_path / "data/downloads/list.txt").unlink()
    server.files["/list.txt"] = b"1 a b\n"
    with pytest.raises(ChecksumError):
        _run(["toy"], tmp_path, cat)


def test_dry_run_plan_lists_sizes_and_state(server, tmp_path):
    cat = _catalog(tmp_path, [
        {"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": ["http://x.invalid/a"], "md5": "1" * 32,
         "checksum_source": "t", "bytes": 3 * 2**30, "bytes_exact": True},
        {"name": "b", "file": "b.txt", "format": "file", "urls": ["http://x.invalid/b"], "checksum_source": "t"}])
    steps = plan(["toy"], tmp_path / "data", cat)
    text = describe(steps, tmp_path / "data", free=lambda p: 100 * 2**30)
    assert "toy/a" in text and "3.0 GiB" in text and "toy/b" in text and "unknown" in text
    assert "to download: 3.0 GiB; to extract (estimate): 3.8 GiB; free at" in text
    assert "size unknown (not counted): toy/b" in text
    assert server.requests == []


def test_verify_auto_reports_missing_and_deep_rehash(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    server.files["/b.txt"] = b"hello"
    cat = _catalog(tmp_path, [
        {"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
         "sha256": sha256(data), "checksum_source": "test"},
        {"name": "b", "file": "b.txt", "format": "file", "urls": [server.url("/b.txt")], "checksum_source": "t"}])
    _, lock, _ = _run(["toy/a"], tmp_path, cat)
    rep = verify_auto(cat.corpus("toy"), tmp_path / "data", lock)
    assert not rep.ok and "missing: toy/b (fetch it with `repro data fetch toy/b`)" in rep.lines
    _run(["toy/b"], tmp_path, cat)
    assert verify_auto(cat.corpus("toy"), tmp_path / "data", lock).ok
    kept = tmp_path / "data/downloads/a.tar.gz"
    st = kept.stat()
    with open(kept, "r+b") as f:  # bit rot in the kept archive: same size, same mtime
        f.seek(100)
        f.write(b"\0\0\0")
    os.utime(kept, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify_auto(cat.corpus("toy"), tmp_path / "data", DataLock(tmp_path / "data.lock.json")).ok
    rep = verify_auto(cat.corpus("toy"), tmp_path / "data", DataLock(tmp_path / "data.lock.json"), deep=True)
    assert not rep.ok and any(line.startswith("checksum: a.tar.gz: sha256") for line in rep.lines)


def test_builtin_catalog_loads_and_rejects_bad_entries(tmp_path):
    cat = load_catalog()
    assert {"librispeech", "speech-commands", "voxceleb1", "voxceleb2", "musan", "rirs-noises",
            "fluent-speech-commands", "iemocap", "librispeech-lexicon"} <= set(cat.corpora)
    assert cat.corpus("iemocap").access == "manual" and cat.corpus("voxceleb1").archive("dev").split_of
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"format": 1, "corpora": {"x": {
        "title": "t", "homepage": "h", "licence": "l", "access": "auto", "tasks": ["PR"],
        "archives": [{"name": "a", "file": "a", "format": "zip", "urls": ["ftp://x"], "checksum_source": "s",
                      "md5": "xyz"}]}}}))
    with pytest.raises(ConfigError, match="md5 must be 32 lower-case hex digits"):
        load_catalog(bad)
    bad.write_text(bad.read_text().replace("md5: xyz", "sha1: abc"))
    with pytest.raises(ConfigError, match="unknown key 'corpora.x.archives\\[0\\].sha1'"):
        load_catalog(bad)


def test_complete_part_file_is_finished_without_downloading_again(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    (tmp_path / "data/downloads").mkdir(parents=True)
    (tmp_path / "data/downloads/a.tar.gz.part").write_bytes(data)  # killed between the last byte and the rename
    _, lock, _ = _run(["toy"], tmp_path, cat)
    assert server.requests == [("/a.tar.gz", f"bytes={len(data)}-")]  # answered 416: nothing left to send
    assert lock.archive("toy/a.tar.gz")["sha256"] == sha256(data)


def test_manual_corpora_are_never_fetched(tmp_path):
    with pytest.raises(KeyError, match="iemocap is licence-restricted and never downloaded"):
        plan(["iemocap"], tmp_path, load_catalog())


# --- archives that try to leave the target through their own links -------------------------------------------------

def _tar(entries: list[tuple[str, str, bytes | str | None]], gz: bool = True) -> bytes:
    """A tar(.gz) from (kind, name, payload) entries in order: kind file (bytes), sym/hard (link target), dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for kind, name, arg in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                info.size = len(arg)
                tar.addfile(info, io.BytesIO(arg))
                continue
            info.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE}[kind]
            info.linkname = arg or ""
            tar.addfile(info)
    return buf.getvalue()


def _zip_with_links(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """A zip whose `sym` entries carry the Unix symbolic-link mode (as `zip --symlinks` writes them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for kind, name, arg in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = ((stat.S_IFLNK | 0o777) if kind == "sym" else (stat.S_IFREG | 0o644)) << 16
            zf.writestr(info, arg.encode() if isinstance(arg, str) else arg)
    return buf.getvalue()


CHAIN = [("sym", "d1/l", ".."), ("sym", "d1/l/e", "..")]
ESCAPES = {
    # each link passes a check of its own name, together they point above the target
    "tar-symlink-chain": ("tar.gz", _tar(CHAIN + [("file", "d1/l/e/escaped.txt", b"gotcha")]), "d1/l/e"),
    # a hard link through the same chain would copy a file from outside into the corpus
    "tar-hardlink-chain": ("tar.gz", _tar(CHAIN + [("hard", "copy.txt", "d1/l/e/secret.txt")]), "d1/l/e"),
    # one link that stays inside, and a hard link whose name only looks inside ("d1/l/.." is not "d1")
    "tar-hardlink-through-link": ("tar.gz", _tar([("sym", "d1/l", ".."), ("hard", "copy.txt", "d1/l/../secret.txt")]),
                                  "copy.txt"),
    # a link that is inside when written, redirected outside by a later link
    "tar-redirected-link": ("tar.gz", _tar([("sym", "d/a", "b/.."), ("sym", "d/b", ".."), ("file", "z", b"z")]), "d/a"),
    "zip-symlink-chain": ("zip", _zip_with_links([("sym", "d1/l", ".."), ("sym", "d1/l/e", ".."),
                                                  ("file", "d1/l/e/escaped.txt", b"gotcha")]), "d1/l"),
}


def _outside(root):
    """Every path under `root` outside its `target/` folder, with the content of the files."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*") if not p.relative_to(root).as_posix().startswith("target")}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_chained_links_never_write_outside_the_target(tmp_path, case):
    fmt, data, member = ESCAPES[case]
    (tmp_path / "secret.txt").write_bytes(b"outside the corpus")
    archive = tmp_path / f"x.{fmt}"
    archive.write_bytes(data)
    (tmp_path / "target").mkdir()
    before = _outside(tmp_path)
    with pytest.raises(UnsafeArchiveError) as err:
        extract([archive], fmt, tmp_path / "target", progress=False)
    assert str(err.value).startswith(f"x.{fmt}: member {member!r}") and "refusing to extract" in str(err.value)
    assert _outside(tmp_path) == before  # nothing written, nothing replaced
    assert not list((tmp_path / "target").rglob("copy.txt"))


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_chained_links_are_refused_through_fetch_with_a_valid_checksum(server, tmp_path, case):
    fmt, data, member = ESCAPES[case]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/secret.txt").write_bytes(b"outside the corpus")
    server.files["/x"] = data
    cat = _catalog(tmp_path, [{"name": "a", "file": "x." + fmt, "format": fmt, "urls": [server.url("/x")],
                               "sha256": sha256(data), "checksum_source": "test"}])
    with pytest.raises(UnsafeArchiveError, match=rf"^x\.{re.escape(fmt)}: member '{re.escape(member)}'"):
        _run(["toy"], tmp_path, cat)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink())
    assert files == [".data.lock.json.lock", "catalog.yaml", "data.lock.json",  # the lock file and its own lock
                     "data/downloads/.locks/toy.lock", "data/downloads/.locks/toy.lock.owner",  # the fetch lock
                     "data/downloads/.verified/x." + fmt + ".json", "data/downloads/x." + fmt,
                     "data/secret.txt"]  # no extraction, nothing escaped
    assert (tmp_path / "data/secret.txt").read_bytes() == b"outside the corpus"


def _cli_fetch_errors(tmp_path, monkeypatch) -> list[str]:
    """`repro data fetch toy --quiet` with the test's catalogue, data root and lock: it fails with status 2
    and no traceback; returns its `error:` lines."""
    monkeypatch.setattr(catalog_module, "CATALOG_PATH", tmp_path / "catalog.yaml")
    monkeypatch.setenv("REPRO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("REPRO_DATA_LOCK", str(tmp_path / "data.lock.json"))
    res = CliRunner().invoke(main, ["data", "fetch", "toy", "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    return [line for line in res.output.splitlines() if line.startswith("error:")]


def test_unsafe_archive_is_one_line_through_the_cli(server, tmp_path, monkeypatch):
    fmt, data, _ = ESCAPES["tar-symlink-chain"]
    server.files["/x"] = data
    _catalog(tmp_path, [{"name": "a", "file": "x.tar.gz", "format": fmt, "urls": [server.url("/x")],
                         "sha256": sha256(data), "checksum_source": "test"}])
    errors = _cli_fetch_errors(tmp_path, monkeypatch)
    assert errors == ["error: x.tar.gz: member 'd1/l/e' is a link to '..', which leads outside the target; "
                      "refusing to extract"]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data/escaped.txt").exists()


def test_links_that_stay_inside_are_extracted(tmp_path):
    data = _tar([("file", "a/f.txt", b"data"), ("sym", "b/f", "../a/f.txt"), ("sym", "b/dir", "../a"),
                 ("file", "b/dir/g.txt", b"through a link"), ("hard", "c/h.txt", "b/dir/f.txt"),
                 ("sym", "top", "."), ("file", "top/top/t.txt", b"t")])
    (tmp_path / "x.tar.gz").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    assert extract([tmp_path / "x.tar.gz"], "tar.gz", out, progress=False) == 4  # a/f, a/g, c/h, t (regular files)
    assert (out / "b/f").read_bytes() == b"data" and os.readlink(out / "b/f") == "../a/f.txt"
    assert (out / "a/g.txt").read_bytes() == b"through a link"
    assert (out / "c/h.txt").read_bytes() == b"data" and not (out / "c/h.txt").is_symlink()
    assert (out / "t.txt").read_bytes() == b"t"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x.tar.gz"]


# --- archives cut short or damaged ---------------------------------------------------------------------------------

def _cut_tar_without_end_blocks() -> bytes:
    whole = _tar([("file", n, d) for n, d in FILES.items()], gz=False)
    return whole[: -10240]  # tarfile pads to 10 KiB records; without them the end-of-archive blocks are gone


@pytest.mark.parametrize("fmt,data,why", [
    # the last bytes of a gzip stream are its CRC and length: every member reads, the stream is incomplete
    ("tar.gz", make_tar_gz(FILES)[:-6], "cut short or damaged"),
    ("tar.gz", make_tar_gz(FILES)[: len(make_tar_gz(FILES)) // 2], "cut short or damaged"),
    ("tar", _cut_tar_without_end_blocks(), "without tar's end-of-archive blocks"),
    ("zip", make_zip(FILES)[:-40], "cut short or damaged"),
])
def test_cut_archives_are_refused(tmp_path, fmt, data, why):
    (tmp_path / f"x.{fmt}").write_bytes(data)
    (tmp_path / "out").mkdir()
    with pytest.raises(DamagedArchiveError, match=rf"^x\.{re.escape(fmt)}: .*{why}"):
        extract([tmp_path / f"x.{fmt}"], fmt, tmp_path / "out", progress=False)


def test_zip_member_with_a_bad_crc_is_refused(tmp_path):
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"A" * 5000)
    data = bytearray(stored.getvalue())
    data[data.index(b"AAAA") + 10] = ord("X")  # one byte of the stored content flipped
    (tmp_path / "x.zip").write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(DamagedArchiveError, match=r"^x\.zip: .*Bad CRC-32 for file 'a\.txt'"):
        extract([tmp_path / "x.zip"], "zip", tmp_path / "out", progress=False)


# --- downloads without a published checksum are pinned only after their checks -----------------------------------

@pytest.mark.parametrize("cut", ["gzip trailer", "half"])
def test_truncated_archive_without_checksum_is_not_pinned(server, tmp_path, cut):
    good = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = good[:-6] if cut == "gzip trailer" else good[: len(good) // 2]
    cat = _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                               "checksum_source": "none published",
                               "expect": [{"glob": "pack/sub/*.txt", "count": 20, "source": "third-party"}]}])
    with pytest.raises(DamagedArchiveError) as err:
        _run(["toy"], tmp_path, cat)
    msg = str(err.value)
    assert msg.startswith("a.tar.gz: the archive is cut short or damaged") and "\n" not in msg
    assert f"nothing was recorded in {tmp_path / 'data.lock.json'}" in msg and "Fetch again" in msg
    assert DataLock(tmp_path / "data.lock.json").archive("toy/a.tar.gz") is None
    assert not (tmp_path / "data/toy/a").exists() and not (tmp_path / "data/downloads/a.tar.gz").exists()
    assert len(list((tmp_path / "data/downloads/quarantine").glob("a.tar.gz.*[0-9]"))) == 1
    # the server now sends the whole archive: the next fetch downloads it again, extracts it and pins it
    server.files["/a.tar.gz"] = good
    _, lock, logs = _run(["toy"], tmp_path, cat)
    assert lock.archive("toy/a.tar.gz")["sha256"] == sha256(good)
    assert any("no published checksum; recorded sha256" in line for line in logs)
    assert (tmp_path / "data/toy/a/pack/sub/019.txt").read_bytes() == FILES["pack/sub/019.txt"]


def test_archive_without_checksum_missing_files_is_not_pinned(server, tmp_path):
    short = make_tar_gz(dict(list(FILES.items())[:15]))  # complete as a tar.gz, but 5 files are missing
    server.files["/a.tar.gz"] = short
    arch = {"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
            "checksum_source": "none published",
            "expect": [{"glob": "pack/sub/*.txt", "count": 20, "source": "third-party"}]}
    cat = _catalog(tmp_path, [arch])
    with pytest.raises(ExpectationError, match=r"^toy/a: 15 path\(s\) match 'pack/sub/\*\.txt', expected 20 .*"
                                               r"No checksum is published for a\.tar\.gz"):
        _run(["toy"], tmp_path, cat)
    assert DataLock(tmp_path / "data.lock.json").archive("toy/a.tar.gz") is None
    # the same archive with a published checksum: the checksum vouches for it, a third-party count only warns
    sub = tmp_path / "with-sum"
    sub.mkdir()
    _, lock, logs = _run(["toy"], sub, _catalog(sub, [{**arch, "sha256": sha256(short)}]))
    assert lock.archive("toy/a.tar.gz")["sha256"] == sha256(short)
    assert any("warning: toy/a: 15 path(s) match" in line for line in logs)


def test_file_without_checksum_and_wrong_size_is_not_pinned(server, tmp_path):
    server.files["/list.txt"] = b"1 a b\n"
    cat = _catalog(tmp_path, [{"name": "t", "file": "list.txt", "format": "file", "urls": [server.url("/list.txt")],
                               "checksum_source": "none published", "bytes": 12, "bytes_exact": True}])
    with pytest.raises(ExpectationError, match=r"^toy/t: list\.txt holds 6 bytes, the catalogue says 12\. No checksum"):
        _run(["toy"], tmp_path, cat)
    assert DataLock(tmp_path / "data.lock.json").archive("toy/list.txt") is None
    assert not (tmp_path / "data/toy/t/list.txt").exists()
    server.files["/list.txt"] = b"1 a b\n0 a c\n"
    _, lock, _ = _run(["toy"], tmp_path, cat)
    assert lock.archive("toy/list.txt")["bytes"] == 12


def test_truncated_archive_is_one_line_through_the_cli(server, tmp_path, monkeypatch):
    good = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = good[:-6]
    _catalog(tmp_path, [{"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
                         "checksum_source": "none published"}])
    errors = _cli_fetch_errors(tmp_path, monkeypatch)
    assert len(errors) == 1 and errors[0].startswith("error: a.tar.gz: the archive is cut short or damaged")
    assert "Fetch again" in errors[0] and not (tmp_path / "data.lock.json").exists()
    server.files["/a.tar.gz"] = good
    res = CliRunner().invoke(main, ["data", "fetch", "toy", "--quiet"])
    assert res.exit_code == 0, res.output
    assert DataLock(tmp_path / "data.lock.json").archive("toy/a.tar.gz")["sha256"] == sha256(good)


# --- one writer for the lock file, transfers judged by the catalogue's size ------------------------------------------

def test_lock_file_records_of_stale_readers_are_merged_not_overwritten(tmp_path):
    path = tmp_path / "data.lock.json"
    first, second = DataLock(path), DataLock(path)  # both read the file before either records
    entry = {"sha256": "a" * 64, "md5": "b" * 32, "bytes": 1, "verified_by": [], "url": "u", "recorded": "d"}
    first.record_archive("one/a.tar.gz", entry)
    second.record_archive("two/b.tar.gz", {**entry, "sha256": "c" * 64})
    assert second.check_or_record_subset("PR/train", 3, "d" * 64, "corpus") == "recorded"
    assert first.check_or_record_subset("PR/train", 3, "d" * 64, "corpus") == "verified"  # the other's record
    with pytest.raises(LockMismatchError, match="one/a.tar.gz: sha256 e+ differs from a+ recorded"):
        second.record_archive("one/a.tar.gz", {**entry, "sha256": "e" * 64})
    on_disk = json.loads(path.read_text())
    assert sorted(on_disk["archives"]) == ["one/a.tar.gz", "two/b.tar.gz"] and list(on_disk["subsets"]) == ["PR/train"]
    assert on_disk["archives"]["one/a.tar.gz"]["sha256"] == "a" * 64


def test_a_transfer_cut_without_a_length_is_resumed_in_the_same_fetch(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data
    server.no_length.add("/a.tar.gz")
    server.drops["/a.tar.gz"] = [len(data) // 4]
    arch = {"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
            "sha256": sha256(data), "checksum_source": "test", "bytes": len(data), "bytes_exact": True}
    _, lock, logs = _run(["toy"], tmp_path, _catalog(tmp_path, [arch]))
    assert [r for p, r in server.requests] == [None, f"bytes={len(data) // 4}-"]
    assert any(f"transfer cut at {len(data) // 4:,} of {len(data):,} bytes" in line for line in logs)
    assert lock.archive("toy/a.tar.gz")["sha256"] == sha256(data)
    assert not (tmp_path / "data/downloads/quarantine").exists()


def test_a_short_transfer_against_an_approximate_size_is_left_to_the_checksum(server, tmp_path):
    data = make_tar_gz(FILES)
    server.files["/a.tar.gz"] = data[:-100]
    server.no_length.add("/a.tar.gz")
    arch = {"name": "a", "file": "a.tar.gz", "format": "tar.gz", "urls": [server.url("/a.tar.gz")],
            "sha256": sha256(data), "checksum_source": "test", "bytes": len(data), "bytes_exact": False}
    with pytest.raises(ChecksumError, match="every download failed its checksum"):
        _run(["toy"], tmp_path, _catalog(tmp_path, [arch]))
    assert len(server.requests) == 1  # an approximate size says nothing about where the file ends


def test_two_corpora_downloading_one_file_name_are_refused(tmp_path):
    arch = {"name": "a", "file": "same.tar.gz", "format": "tar.gz", "urls": ["http://example.invalid/x"],
            "checksum_source": "none published"}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"format": 1, "corpora": {c: {
        "title": c, "homepage": "http://example.invalid", "licence": "CC0", "access": "auto", "tasks": ["PR"],
        "archives": [arch]} for c in ("one", "two")}}))
    with pytest.raises(ConfigError, match=r"corpora one and two both download a file named 'same\.tar\.gz' into "
                                          r"downloads/; give one of them another 'file' name"):
        load_catalog(path)
