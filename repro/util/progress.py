"""Progress bars that suit both a terminal and a log file.

Every progress bar of the project is made by `progress_bar(...)`, which takes tqdm's arguments.
On a terminal it is tqdm's bar, redrawn in place with carriage returns. When the stream is not
a terminal (output redirected to a file, a pipe, a CI log, `docker run` without `-t`), carriage
returns would pile thousands of redraws into one line, so the bar becomes `LineProgress`: whole
lines, one when the work has advanced by `EVERY_PERCENT` per cent and at least `MIN_SECONDS`
have passed since the last line, or when `MAX_SECONDS` have passed (a long bar, or one without a
total, still shows it is alive). A bar that finishes before its first line is due writes
nothing; one that wrote a line writes a last one when it closes, so a log shows where each
long bar ended.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable

from tqdm import tqdm

EVERY_PERCENT = 5.0  # a line when the bar has moved this many percentage points ...
MIN_SECONDS = 5.0    # ... and at least this many seconds have passed since the last line
MAX_SECONDS = 120.0  # a line at least this often while the bar moves, whatever its progress


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class LineProgress(tqdm):
    """A tqdm bar that writes whole lines, at a bounded rate, for streams that are not terminals.

    The bar's counting, rates and formatting are tqdm's; only when and how it is written differ
    (see the module doc). `clock` (seconds, monotonic) decides when a line is due; tests pass a
    fake one. A line reads e.g. `probe PR lr=0.01:  45% 450/1000 [00:52<01:04, 8.65step/s, PER=0.4]`.
    """

    def __init__(self, *args, every_percent: float = EVERY_PERCENT, min_seconds: float = MIN_SECONDS,
                 max_seconds: float = MAX_SECONDS, clock: Callable[[], float] = time.monotonic, **kwargs):
        self._every, self._min, self._max, self._clock = every_percent, min_seconds, max_seconds, clock
        self._line_t: float | None = None  # clock at the start or at the last line
        self._line_pct = 0.0                # percentage at the last line
        self._line_n: float | None = None   # count at the last line
        self.lines = 0                      # lines written so far
        self._start = clock()
        kwargs.setdefault("mininterval", 1.0)  # how often tqdm asks whether to display (cheap)
        super().__init__(*args, **kwargs)
        # no status printer: tqdm's close() then writes no carriage return or blank line
        self.sp = None

    def _percent(self) -> float | None:
        return 100.0 * self.n / self.total if self.total else None

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line if one is due (see the module doc); tqdm calls this on its refreshes."""
        if msg == "" or self.disable:  # tqdm clearing the bar: nothing to clear in a log
            return False
        now, pct = self._clock(), self._percent()
        if self._line_t is None:  # the first call, from tqdm's constructor: start the clock
            self._line_t, self._line_pct, self._line_n = now, pct or 0.0, self.n
            return False
        waited = now - self._line_t
        moved = pct is not None and pct - self._line_pct >= self._every
        if self.n != self._line_n and (waited >= self._max or (moved and waited >= self._min)):
            self._write_line(now)
        return False

    def _count(self, n: float) -> str:
        if self.unit_scale:
            return self.format_sizeof(n, divisor=self.unit_divisor)
        return f"{n:.3g}" if isinstance(n, float) and not float(n).is_integer() else f"{int(n)}"

    def line(self) -> str:
        """The bar's state as one line: description, percentage, count, elapsed and remaining time, rate."""
        elapsed = max(0.0, self._clock() - self._start)
        rate = self.n / elapsed if elapsed > 0 else None
        rate_text = f"{'?' if rate is None else self._count(rate)}{self.unit}/s"
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            remaining = (self.total - self.n) / rate if rate else None
            when = f"{self.format_interval(elapsed)}<{'?' if remaining is None else self.format_interval(remaining)}"
            text = f"{head}{100.0 * self.n / self.total:3.0f}% {self._count(self.n)}/{self._count(self.total)} " \
                   f"[{when}, {rate_text}"
        else:
            text = f"{head}{self._count(self.n)}{self.unit} [{self.format_interval(elapsed)}, {rate_text}"
        text += f", {self.postfix}]" if self.postfix else "]"
        return text.replace("\r", " ").replace("\n", " ")

    def _write_line(self, now: float) -> None:
        self.fp.write(self.line() + "\n")
        self.fp.flush()
        self._line_t, self._line_pct, self._line_n = now, self._percent() or 0.0, self.n
        self.lines += 1

    def close(self) -> None:
        """Write the last line of a bar that wrote any (so the log shows where it ended), then close."""
        if not self.disable and self.lines and self.n != self._line_n:
            self._write_line(self._clock())
        super().close()


def progress_bar(iterable: Iterable | None = None, *, file: Any = None, **kwargs) -> tqdm:
    """A progress bar over `iterable` (or updated by hand) with tqdm's arguments.

    tqdm's own bar on a terminal; `LineProgress` (whole lines at a bounded rate) when `file`
    (default standard error) is not one. `disable=True` gives a bar that writes nothing."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("leave", None)  # lines are never cleared
    return LineProgress(iterable, file=stream, **kwargs)
