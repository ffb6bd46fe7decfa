"""The fresh-machine record (artifacts/bench/fresh_machine.json) describes today's pipeline.

The README quotes the record's `make demo` and `make test` times; these tests fail when the record
names stages the pipeline no longer has (or misses one it has), or when it was measured at a commit
that is not in this checkout's history or is long behind it, so that the quoted times are re-measured
when the code they describe has moved on.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from repro.bench.fresh_machine import load
from repro.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "artifacts" / "bench" / "fresh_machine.json"
MAX_AGE_DAYS = 30  # between the record's date and the newest commit of the checkout
MAX_COMMITS_BEHIND = 150


def _git(*args: str) -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_the_record_times_the_stages_of_the_pipeline_in_order():
    stages = list(load(RECORD)["demo"]["stages"])
    assert stages == list(STAGES), f"{RECORD.name} times stages {stages}; the pipeline runs {list(STAGES)}: re-measure"


def test_the_record_was_measured_at_a_recent_commit_of_this_history():
    record = load(RECORD)
    head_date = _git("log", "-1", "--format=%cs", "HEAD")
    if head_date is None:
        pytest.skip("not a git checkout (or no git): the record's commit cannot be placed")
    if _git("rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("a shallow clone: the record's commit may lie outside the fetched history")
    commit = record["commit"]
    assert _git("merge-base", "--is-ancestor", commit, "HEAD") is not None, \
        f"{RECORD.name}: commit {commit} is not in this checkout's history: re-measure at a commit of main"
    behind = int(_git("rev-list", "--count", f"{commit}..HEAD"))
    assert behind <= MAX_COMMITS_BEHIND, f"{RECORD.name} was measured {behind} commits ago: re-measure"
    age = dt.date.fromisoformat(head_date) - dt.date.fromisoformat(record["date"])
    assert age.days <= MAX_AGE_DAYS, f"{RECORD.name} is {age.days} days older than the newest commit: re-measure"
