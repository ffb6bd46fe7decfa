"""A test that launches torchrun fails within `START_TIMEOUT_S` when no worker starts, showing the
launcher's output; the loopback rendezvous of `torchrun_launch.command` starts its workers on a machine
whose name does not resolve, where `torchrun --standalone` hangs in its rendezvous."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from torchrun_launch import Launch, command

ROOT = Path(__file__).resolve().parents[1]
# The launcher and its workers on a machine whose name is not in /etc/hosts (a fresh Debian root).
NO_NAME = """\
import socket
socket.getfqdn = lambda name="": "unnamed-machine.invalid"
socket.gethostname = lambda: "unnamed-machine.invalid"
"""
WORKER = """\
import os
import torch.distributed as dist
dist.init_process_group("gloo")
dist.all_reduce(__import__("torch").ones(1))
with open(os.path.join(os.path.dirname(__file__), f"joined-{dist.get_rank()}"), "w") as f:
    f.write(os.environ["MASTER_ADDR"])
dist.destroy_process_group()
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    return env


@pytest.mark.slow
def test_the_loopback_rendezvous_starts_every_worker_where_the_machine_has_no_name(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    launch = Launch(command(2, [str(tmp_path / "worker.py")]), 2, _env(), tmp_path, tmp_path / "launch",
                    site_code=NO_NAME)
    launch.wait_started()
    rc, out = launch.wait(timeout_s=120)
    assert rc == 0, out[-3000:]
    assert [(tmp_path / f"joined-{r}").read_text() for r in (0, 1)] == ["127.0.0.1"] * 2  # both in one group
    assert launch.started() == ["rank-0", "rank-1"]


@pytest.mark.slow
def test_a_launch_whose_workers_never_start_fails_in_time_with_the_launchers_output(tmp_path):
    """`--standalone` names the node by its FQDN, which does not resolve here: the rendezvous never
    completes. The watchdog (10 s here, 120 s in the tests that launch the pipeline) stops the launcher and
    its processes and fails the test with what the launcher printed."""
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "worker.py")]
    launch = Launch(cmd, 2, _env(), tmp_path, tmp_path / "launch", start_timeout_s=10, site_code=NO_NAME)
    deadline = time.monotonic() + 120  # on a loaded machine torch takes a while to import: let it speak first
    while "unnamed-machine.invalid" not in launch.output() and time.monotonic() < deadline:
        time.sleep(0.5)
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        launch.wait_started()
    assert time.monotonic() - t0 < 20  # at most what is left of its 10 s, and the stop
    message = str(failed.value)
    assert message.startswith("no torchrun worker started within 10 s (started: none)")
    assert "the launcher's output" in message and "unnamed-machine.invalid" in message  # what torchrun said
    assert launch.proc.poll() is not None  # the launcher is stopped, not left waiting
