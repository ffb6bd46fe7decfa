"""`make docker-build` / `make docker-TARGET` (scripts/docker.sh), run through make on a PATH
where `docker` (and `nvidia-smi`) are small fakes that record their arguments, or are absent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tool_path import bin_with

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("bash", "env", "sed", "dirname", "id", "mkdir", "make")
OPTIONAL_TOOLS = ("git",)  # the script records the commit when git is there
ENGINE_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"

FAKE_DOCKER = """#!{bash}
# A stand-in for the docker client: records each call, answers like an engine that is up or down.
{{ printf '%s\\n' "$@"; echo "--end--"; }} >> "$FAKE_DOCKER_LOG"
case "$1" in
  version)
    if [ "$FAKE_ENGINE" = down ]; then echo "Client: Docker Engine"; echo "{down}" >&2; exit 1; fi
    echo "28.2.2" ;;
  image) [ "$FAKE_IMAGE" = present ] || {{ echo "Error: No such image: $3" >&2; exit 1; }} ;;
esac
exit 0
"""


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def dockerfile_volumes() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    return set(json.loads(re.search(r"^VOLUME (\[.*\])$", text, re.M)[1]))


@pytest.fixture
def sandbox(tmp_path):
    """A bin folder holding only the tools the script may use, and the host folders to mount."""
    bin_dir = bin_with(tmp_path, TOOLS, OPTIONAL_TOOLS)
    host = tmp_path / "host"
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
           "REPRO_DATA": str(host / "data"), "REPRO_CACHE": str(host / "cache"),
           "REPRO_WORK": str(host / "deep" / "work"), "REPRO_RESULTS": str(host / "results"),
           "REPRO_FIGURES": str(host / "figures")}

    class Sandbox:
        def __init__(self):
            self.env, self.bin, self.host, self.log = env, bin_dir, host, tmp_path / "docker.log"

        def add(self, name: str, body: str) -> None:
            path = bin_dir / name
            path.write_text(body)
            path.chmod(0o755)

        def fake_docker(self, engine: str, image: str) -> None:
            self.add("docker", FAKE_DOCKER.format(bash=shutil.which("bash"), down=ENGINE_DOWN))
            self.env.update(FAKE_ENGINE=engine, FAKE_IMAGE=image)

        def make(self, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=self.env,
                                  capture_output=True, text=True, timeout=60)

        def calls(self) -> list[list[str]]:
            if not self.log.exists():
                return []
            lines = self.log.read_text().splitlines()
            calls, current = [], []
            for line in lines:
                if line == "--end--":
                    calls.append(current)
                    current = []
                else:
                    current.append(line)
            return calls

    return Sandbox()


def explanation(res: subprocess.CompletedProcess) -> str:
    """The script's own message: stderr without make's closing 'make: *** ...' line."""
    lines = [line for line in res.stderr.splitlines() if not line.startswith("make: ***")]
    assert len(lines) == 1, f"expected one line, got: {res.stderr!r}"
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


def test_no_docker_installed_gives_one_line(sandbox):
    res = sandbox.make("docker-reproduce", "PROFILE=fast")
    assert res.returncode == 2
    line = explanation(res)
    assert line.startswith("error: 'make docker-reproduce' needs Docker, and no 'docker' command is installed")
    assert line.endswith("or without Docker: make reproduce PROFILE=fast")
    assert not sandbox.host.exists(), "nothing is created before the checks pass"


def test_unreachable_engine_gives_one_line_for_run_and_build(sandbox):
    sandbox.fake_docker(engine="down", image="present")
    res = sandbox.make("docker-figure-3")
    assert res.returncode == 2
    line = explanation(res)
    assert line.startswith("error: 'make docker-figure-3' needs a running Docker engine, and none is reachable")
    assert f"(docker says: {ENGINE_DOWN})" in line
    res = sandbox.make("docker-build")
    assert res.returncode == 2 and "'make docker-build' needs a running Docker engine" in explanation(res)
    assert [call[0] for call in sandbox.calls()] == ["version", "version"], "no build or run was attempted"


def test_missing_image_says_how_to_build_it(sandbox):
    sandbox.fake_docker(engine="up", image="absent")
    res = sandbox.make("docker-reproduce")
    assert res.returncode == 2
    assert explanation(res) == f"error: the image repro:{project_version()} is not built; build it with: make docker-build"
    assert "run" not in [call[0] for call in sandbox.calls()]


@pytest.mark.parametrize("gpu", ["working", "broken", "absent"])
def test_run_mounts_every_volume_as_the_calling_user(sandbox, gpu):
    sandbox.fake_docker(engine="up", image="present")
    if gpu != "absent":
        code = 0 if gpu == "working" else 9
        sandbox.add("nvidia-smi", f"#!{shutil.which('bash')}\necho 'GPU 0: NVIDIA H100 80GB HBM3'\nexit {code}\n")
    res = sandbox.make("docker-figure-3", "PROFILE=fast")
    assert res.returncode == 0, res.stderr
    run = [call for call in sandbox.calls() if call[0] == "run"]
    assert len(run) == 1
    argv = run[0]
    image = f"repro:{project_version()}"
    # the image runs `make figure-3 PROFILE=fast`
    assert argv[argv.index("--entrypoint") + 1] == "make"
    assert argv[argv.index(image):] == [image, "figure-3", "PROFILE=fast"]
    assert "--rm" in argv
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    # GPUs only where nvidia-smi finds one
    if gpu == "working":
        assert argv[argv.index("--gpus") + 1] == "all"
    else:
        assert "--gpus" not in argv and "no NVIDIA GPU found" in res.stderr
    # every VOLUME of the Dockerfile gets a host folder, which now exists
    mounts = dict(reversed(argv[i + 1].rsplit(":", 1)) for i, a in enumerate(argv) if a == "--volume")
    assert set(mounts) == dockerfile_volumes()
    expected = {"/data": "data", "/cache": "cache", "/work": "deep/work", "/results": "results", "/figures": "figures"}
    for inside, host in expected.items():
        assert mounts[inside] == str(sandbox.host / host) and Path(mounts[inside]).is_dir()


def test_gpu_choice_can_be_forced(sandbox):
    sandbox.fake_docker(engine="up", image="present")
    sandbox.env["REPRO_DOCKER_GPUS"] = "device=1"
    assert sandbox.make("docker-test").returncode == 0
    argv = [call for call in sandbox.calls() if call[0] == "run"][0]
    assert argv[argv.index("--gpus") + 1] == "device=1"


def test_build_tags_the_project_version(sandbox):
    sandbox.fake_docker(engine="up", image="absent")
    res = sandbox.make("docker-build")
    assert res.returncode == 0, res.stderr
    build = [call for call in sandbox.calls() if call[0] == "build"]
    assert len(build) == 1
    argv = build[0]
    version = project_version()
    assert argv[argv.index("--tag") + 1] == f"repro:{version}"
    assert f"VERSION={version}" in argv and any(a.startswith("REVISION=") for a in argv)
    assert argv[-3:] == ["--file", str(ROOT / "Dockerfile"), str(ROOT)]
    sandbox.env["IMAGE"] = "example.org/repro:test"
    assert sandbox.make("docker-build").returncode == 0
    argv = [call for call in sandbox.calls() if call[0] == "build"][-1]
    assert argv[argv.index("--tag") + 1] == "example.org/repro:test"
