"""`make install` finds a Python 3.11 (or says in one line how to get one), run through make on a PATH
that holds only small fake interpreters which report a chosen version and record what they are asked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tool_path import bin_with

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("make", "touch", "mkdir", "cat", "chmod")

# A stand-in interpreter: answers the Makefile's version and venv-module probes like Python VERSION
# would, and `-m venv DIR` by making DIR/bin/python, a recorder that accepts every pip call.
FAKE_PYTHON = """#!{sh}
echo "{name} $*" >> "$FAKE_LOG"
case "$2" in
  *version_info*) [ "{version}" = 3.11 ]; exit $? ;;
  *python_version*) echo "{version}.4"; exit 0 ;;
  *ensurepip*) [ "{ensurepip}" = yes ]; exit $? ;;
esac
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!{sh}\\necho "venv-python $*" >> "$FAKE_LOG"\\n' > "$3/bin/python"
  chmod +x "$3/bin/python"
  exit 0
fi
exit 1
"""

GET_PYTHON = ("on Debian 12 or Ubuntu: sudo apt-get install python3.11 python3.11-venv; "
              "otherwise use the Docker image (make docker-build)")


@pytest.fixture
def sandbox(tmp_path):
    bin_dir = bin_with(tmp_path, TOOLS)

    class Sandbox:
        venv = tmp_path / "venv"
        log = tmp_path / "calls.log"
        env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FAKE_LOG": str(tmp_path / "calls.log")}

        def python(self, name: str, version: str, ensurepip: bool = True, where: Path = bin_dir) -> Path:
            path = where / name
            path.write_text(FAKE_PYTHON.format(sh=shutil.which("sh"), name=name, version=version,
                                               ensurepip="yes" if ensurepip else "no"))
            path.chmod(0o755)
            return path

        def make(self, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["make", "--no-print-directory", f"VENV={self.venv}", *args, "install"], cwd=ROOT,
                                  env=self.env, capture_output=True, text=True, timeout=60)

        def calls(self) -> list[str]:
            return self.log.read_text().splitlines() if self.log.exists() else []

    return Sandbox()


def explanation(res: subprocess.CompletedProcess) -> str:
    """The Makefile's own message: stderr without make's closing 'make: ***' line."""
    lines = [line for line in res.stderr.splitlines() if not line.startswith("make: ***")]
    assert len(lines) == 1, f"expected one line, got: {res.stderr!r}"
    return lines[0]


def venv_built_by(sandbox) -> str:
    """The interpreter that ran `-m venv`, after checking that the whole install ran in that venv."""
    builders = [c.split()[0] for c in sandbox.calls() if c.split()[1:3] == ["-m", "venv"]]
    assert len(builders) == 1, sandbox.calls()
    pip_calls = [c for c in sandbox.calls() if c.startswith("venv-python -m pip install")]
    assert len(pip_calls) == 3 and "--require-hashes -r requirements.lock" in pip_calls[1]
    assert (sandbox.venv / ".installed").is_file()
    return builders[0]


def test_python3_11_is_preferred(sandbox):
    sandbox.python("python3.11", "3.11")
    sandbox.python("python3", "3.11")
    res = sandbox.make()
    assert res.returncode == 0, res.stderr
    assert venv_built_by(sandbox) == "python3.11"


def test_python3_serves_when_it_is_3_11(sandbox):
    sandbox.python("python3", "3.11")
    res = sandbox.make()
    assert res.returncode == 0, res.stderr
    assert venv_built_by(sandbox) == "python3"


@pytest.mark.parametrize("python3", ["3.12", None])
def test_no_python_3_11_says_how_to_get_one(sandbox, python3):
    if python3:
        sandbox.python("python3", python3)
    res = sandbox.make()
    assert res.returncode == 2
    found = "python3 is 3.12.4" if python3 else "no python3 either"
    assert explanation(res) == (f"error: .venv needs Python 3.11, and there is no python3.11 ({found}); {GET_PYTHON}; "
                                "or set PYTHON_BIN=/path/to/python3.11")
    assert not sandbox.venv.exists() and not any("-m venv" in c for c in sandbox.calls())


def test_python_bin_overrides_the_search(sandbox, tmp_path):
    sandbox.python("python3.11", "3.11")
    chosen = sandbox.python("python-custom", "3.11", where=tmp_path)
    res = sandbox.make(f"PYTHON_BIN={chosen}")
    assert res.returncode == 0, res.stderr
    assert venv_built_by(sandbox) == "python-custom"


def test_python_bin_that_is_not_3_11_or_absent_is_named(sandbox, tmp_path):
    sandbox.python("python3.11", "3.11")
    other = sandbox.python("python-old", "3.10", where=tmp_path)
    res = sandbox.make(f"PYTHON_BIN={other}")
    assert res.returncode == 2
    assert explanation(res) == f"error: PYTHON_BIN={other} is Python 3.10.4, and .venv needs Python 3.11; {GET_PYTHON}"
    res = sandbox.make(f"PYTHON_BIN={tmp_path / 'nowhere'}")
    assert res.returncode == 2
    assert explanation(res).startswith(f"error: PYTHON_BIN={tmp_path / 'nowhere'}: no such program; name a Python 3.11")
    assert not sandbox.venv.exists()


def test_missing_venv_module_names_the_debian_package(sandbox):
    sandbox.python("python3.11", "3.11", ensurepip=False)
    res = sandbox.make()
    assert res.returncode == 2
    assert explanation(res) == ("error: python3.11 has no venv module (with ensurepip) to build .venv; "
                                "on Debian/Ubuntu: sudo apt-get install python3.11-venv")
    assert not sandbox.venv.exists(), "no half-made venv is left behind"


def test_the_real_interpreter_passes_the_checks(sandbox, tmp_path):
    """The probes themselves, run by this Python 3.11: it is accepted, and `-m venv` is where it stops."""
    import sys

    real = tmp_path / "python-real"
    real.write_text(f"#!{shutil.which('sh')}\n"
                    f"case \"$1 $2\" in \"-m venv\") echo \"real -m venv\" >> \"$FAKE_LOG\"; exit 1 ;; esac\n"
                    f"exec {sys.executable} \"$@\"\n")
    real.chmod(0o755)
    res = sandbox.make(f"PYTHON_BIN={real}")
    assert sandbox.calls() == ["real -m venv"], res.stderr
