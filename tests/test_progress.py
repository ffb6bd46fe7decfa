"""Progress output fit for files: whole lines at a bounded rate when the stream is not a terminal."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

from tqdm import tqdm

from repro.util.progress import EVERY_PERCENT, MAX_SECONDS, MIN_SECONDS, LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A fake monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(total, steps: int, seconds_per_step: float, **kwargs) -> tuple[str, list[float]]:
    """Drive a bar on a file-like stream; return what it wrote and the clock at every line."""
    clock, out = Clock(), io.StringIO()
    bar = progress_bar(total=total, desc="probe PR", unit="step", file=out, clock=clock, mininterval=0, **kwargs)
    assert isinstance(bar, LineProgress)
    times, seen = [], 0
    for _ in range(steps):
        clock.t += seconds_per_step
        bar.update(1)
        lines = out.getvalue().count("\n")
        times += [clock.t] * (lines - seen)
        seen = lines
    bar.close()
    return out.getvalue(), times


def test_a_file_gets_whole_lines_without_carriage_returns():
    text, _ = _run(total=1000, steps=1000, seconds_per_step=1.0)
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert text.endswith("\n") and lines
    for line in lines:
        assert re.fullmatch(r"probe PR: +\d+% \d+/1000 \[[\d:]+<[\d:?]+, [\d.?]+step/s\]", line), line
    assert lines[-1].startswith("probe PR: 100% 1000/1000")  # a bar that wrote lines writes where it ended


def test_lines_come_every_few_percent_and_no_more_often():
    # 10,000 steps over 1,000 s: a line every EVERY_PERCENT per cent (50 s), not one per step
    text, times = _run(total=10_000, steps=10_000, seconds_per_step=0.1)
    lines = text.splitlines()
    assert len(lines) <= 100 / EVERY_PERCENT + 1
    assert len(lines) >= 100 / EVERY_PERCENT - 1
    percents = [int(re.search(r"(\d+)%", line).group(1)) for line in lines]
    assert all(b - a >= EVERY_PERCENT for a, b in zip(percents, percents[1:]))
    assert all(b - a >= MIN_SECONDS for a, b in zip(times, times[1:]))


def test_fast_progress_is_bounded_by_time():
    # 100,000 steps in 100 s: whatever the percentage, at most one line per MIN_SECONDS
    text, times = _run(total=100_000, steps=100_000, seconds_per_step=0.001)
    assert len(text.splitlines()) <= 100 / MIN_SECONDS + 1
    assert all(b - a >= MIN_SECONDS for a, b in zip(times, times[:-1][1:]))


def test_slow_progress_still_shows_it_is_alive():
    # 1 % in 10 minutes: the percentage rule never fires, the time rule does, no more than every MAX_SECONDS
    text, times = _run(total=10_000, steps=100, seconds_per_step=6.0)
    lines = text.splitlines()
    assert 600 / MAX_SECONDS - 1 <= len(lines) <= 600 / MAX_SECONDS + 1
    assert all(b - a >= MAX_SECONDS for a, b in zip(times, times[:-1][1:]))


def test_without_total_lines_come_by_time():
    clock, out = Clock(), io.StringIO()
    bar = progress_bar(desc="download", unit="B", unit_scale=True, unit_divisor=1024, file=out, clock=clock,
                       mininterval=0)
    for _ in range(100):
        clock.t += 10
        bar.update(1 << 20)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 1000 / MAX_SECONDS - 1 <= len(lines) <= 1000 / MAX_SECONDS + 1
    assert lines[-1].startswith("download: 100MB [")


def test_a_short_bar_writes_nothing_and_iteration_still_yields_everything():
    out = io.StringIO()
    assert list(progress_bar(range(500), desc="quick", file=out, leave=False)) == list(range(500))
    assert out.getvalue() == ""


def test_disabled_bar_writes_nothing():
    clock, out = Clock(), io.StringIO()
    bar = progress_bar(total=10, file=out, disable=True, clock=clock)
    for _ in range(10):
        clock.t += 1000
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""


def test_a_terminal_gets_tqdm_bar():
    out = Terminal()
    bar = progress_bar(total=3, desc="x", file=out, mininterval=0)
    assert type(bar) is tqdm
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in out.getvalue()


def test_every_progress_bar_of_the_package_goes_through_progress_bar():
    """No module but repro/util/progress.py makes a tqdm bar itself."""
    offenders = []
    for path in (ROOT / "repro").rglob("*.py"):
        if path == ROOT / "repro" / "util" / "progress.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tqdm":
                offenders.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tqdm" for a in node.names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"use repro.util.progress.progress_bar instead of tqdm in {offenders}"
