"""System programs: only the real-corpus paths ask for one (ffmpeg), each with a one-line ToolMissingError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from repro.data.prepare.voxceleb2 import convert_voxceleb2
from repro.util.tools import ToolMissingError, require_tool

ROOT = Path(__file__).resolve().parents[1]


def test_require_tool_gives_the_path_or_names_the_program_and_the_fix(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "frobnicate"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert require_tool("frobnicate", "unused") == str(program)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissingError) as err:
        require_tool("frobnicate", "install it with `apt-get install frob`")
    assert str(err.value) == "'frobnicate' was not found on PATH; install it with `apt-get install frob`"


def test_voxceleb2_conversion_without_ffmpeg_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "voxceleb2/dev/aac/id00012/vid/").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissingError, match=r"^'ffmpeg' was not found on PATH; VoxCeleb2's AAC audio needs it: "
                                              r"install it with `sudo apt-get install ffmpeg`"):
        convert_voxceleb2(tmp_path, progress=False)
    assert not (tmp_path / "voxceleb2/dev-wav16k").exists()


@pytest.mark.slow
def test_the_command_line_shows_a_missing_program_as_one_line(tmp_path):
    env = {"PATH": str(tmp_path / "empty"), "REPRO_DATA": str(tmp_path / "data"), "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "repro", "data", "prepare-vox2", "--profile", "full", "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "error: 'ffmpeg' was not found on PATH; VoxCeleb2's AAC audio needs it: install it with "
        "`sudo apt-get install ffmpeg` (Debian/Ubuntu) or `brew install ffmpeg` (macOS), or use the Docker image"]
