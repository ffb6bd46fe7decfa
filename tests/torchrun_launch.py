"""torchrun launched by a test so that it cannot hang: a loopback rendezvous and a start watchdog.

`torchrun --standalone` names the local node by `socket.getfqdn()`; on a machine whose name is not in
/etc/hosts (a fresh Debian root, some containers) the launcher waits in its rendezvous forever and no
worker ever starts. `command` rendezvous on 127.0.0.1 (`--rdzv-endpoint 127.0.0.1:<free port>
--local-addr 127.0.0.1`), which needs no name at all, and `Launch` fails the test when no worker has
started within `START_TIMEOUT_S` seconds, with the launcher's output.

A worker says it started by writing `<folder>/started/rank-<RANK>` from a `sitecustomize` module that
`Launch` puts first on the workers' PYTHONPATH (torchrun's workers, and only they, carry
TORCHELASTIC_RUN_ID and LOCAL_RANK): the command the workers run is the user's, unchanged.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 120.0

_SITECUSTOMIZE = """\
import os
if "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ and os.environ.get("REPRO_TEST_STARTED"):
    with open(os.path.join(os.environ["REPRO_TEST_STARTED"], "rank-" + os.environ.get("RANK", "?")), "w") as _f:
        _f.write(str(os.getpid()))
"""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(nproc: int, args: list[str], port: int | None = None) -> list[str]:
    """`python -m torch.distributed.run` for `nproc` workers on this machine, rendezvous on 127.0.0.1."""
    port = free_port() if port is None else port
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}",
            "--local-addr", "127.0.0.1", *args]


class Launch:
    """A torchrun launch (`cmd`, from `command` or any other torchrun command line) whose output goes to
    `<folder>/launcher.log`; `wait_started` and `wait` fail the test, showing that output, when it hangs.

    `site_code` is run by every Python process of the launch at start-up, before the marker is written
    (tests use it to give the launcher a machine name that does not resolve)."""

    def __init__(self, cmd: list[str], nproc: int, env: dict[str, str], cwd: Path, folder: Path,
                 start_timeout_s: float = START_TIMEOUT_S, site_code: str = ""):
        self.nproc, self.start_timeout_s = nproc, start_timeout_s
        self.started_dir, site = folder / "started", folder / "site"
        for d in (self.started_dir, site):
            d.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(site_code + "\n" + _SITECUSTOMIZE)
        self.log_path = folder / "launcher.log"
        env = {**env, "REPRO_TEST_STARTED": str(self.started_dir), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)  # its own process group: stopped with its workers
        self.t0 = time.monotonic()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def started(self) -> list[str]:
        return sorted(p.name for p in self.started_dir.iterdir())

    def stop(self) -> None:
        """Stop the launcher and its workers (its process group)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self._log.close()

    def _fail(self, why: str) -> None:
        self.stop()
        pytest.fail(f"{why}; the launcher's output ({self.log_path}):\n{self.output()[-6000:]}", pytrace=False)

    def wait_started(self) -> float:
        """Seconds until every worker started; fails the test when not all `nproc` did within
        `start_timeout_s`, or when the launcher exited first."""
        while len(self.started()) < self.nproc:
            elapsed = time.monotonic() - self.t0
            if self.proc.poll() is not None:
                self._fail(f"torchrun exited with status {self.proc.returncode} before its {self.nproc} workers "
                           f"started (started: {self.started() or 'none'})")
            if elapsed > self.start_timeout_s:
                self._fail(f"no torchrun worker started within {self.start_timeout_s:g} s "
                           f"(started: {self.started() or 'none'}): the launcher hangs, e.g. in its rendezvous")
            time.sleep(0.2)
        return time.monotonic() - self.t0

    def wait(self, timeout_s: float) -> tuple[int, str]:
        """(exit status, output) of the launch; fails the test when it runs longer than `timeout_s`."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._fail(f"torchrun still ran after {timeout_s:g} s")
        out = self.output()
        self._log.close()
        return rc, out
