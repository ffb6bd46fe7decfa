"""The downloader against a loopback HTTP server: resume, mirrors, checksums, unsafe archives, disk space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from loopback import LoopbackServer, dead_url, make_tar_gz, make_zip, md5, sha256

from repro.config.typed import ConfigError
from repro.data.archives import UnsafeArchiveError
from repro.data.catalog import load_catalog
from repro.data.checksums import ChecksumError
from repro.data.diskspace import NotEnoughSpaceError
from repro.data.download import MARKER, ExpectationError, describe, fetch, plan, verify_auto
from repro.data.http import RetryPolicy
from repro.data.lock import DataLock

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
    steps = fetch(names, root=tmp_path / "data", lock=lock, catalog=catalog, progress=False,
                  sleep=lambda s: None, log=logs.append, **kw)
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
                catalog=load_catalog({str(tmp_path / 'catalog.yaml')!r}), progress=False, log=lambda m: None)
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
