"""The paper's commands: list, render, check and verify the figures and tables."""

from __future__ import annotations

import sys

import click

from repro import console
from repro.cli.common import PROFILE, TAKE_OVER, echo_lines, main, open_workspace

@main.group()
def paper() -> None:
    """The paper's figures, tables, claim checks and checksums."""


@paper.command("list")
def paper_list() -> None:
    """Every registered figure and table: id, title, what it shows, what it reads."""
    from repro.paper.registry import OUTPUTS

    for o in OUTPUTS:
        click.echo(f"{o.id:9s} {o.title}\n          shows: {o.shows}\n          reads: results/<profile>/{o.reads}")


@paper.command("render")
@PROFILE
@click.option("--id", "ids", multiple=True, help="output id(s), e.g. figure-3 (default: all that apply)")
@TAKE_OVER
def paper_render(profile: str, ids: tuple[str, ...], take_over: bool) -> None:
    """Draw figures/tables from result files alone (no GPU, no models needed)."""
    from repro.paper.registry import render_output
    from repro.paper.stage import applicable, paper_lock

    ws = open_workspace(profile, take_over)
    with paper_lock(ws):
        for oid in ids or applicable(ws):
            for path in render_output(ws, oid):
                click.echo(str(path))


@paper.command("check")
@PROFILE
def paper_check(profile: str) -> None:
    """Evaluate the claim checks and reference comparisons: PASS / FAIL / NOT-RUN."""
    from repro.paper.claims import check
    from repro.paper.stage import paper_lock
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    with paper_lock(ws):
        result = check(ws)
    echo_lines(console.check_table(result))
    if result.failed:
        sys.exit(1)


@paper.command("verify")
@PROFILE
@click.option("--record", is_flag=True, help="store the current checksums as the profile's record instead")
@click.option("--portable", is_flag=True, help="only the outputs that match on any machine (the synthetic corpus)")
@click.option("--by-value", is_flag=True,
              help="compare by value, as when bytes cannot match (a GPU, another architecture, numerics not pinned)")
def paper_verify(profile: str, record: bool, portable: bool, by_value: bool) -> None:
    """Compare every output with the record: sha256, and numeric results by value within measured tolerances."""
    from repro.paper import checksums
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    if record:
        path = checksums.record(ws)
        click.echo(f"recorded {len(checksums.compute(ws))} checksums in {path}, the values of "
                   f"{len(checksums.compute_values(ws))} numeric outputs in {checksums.values_path(ws)} and the CPU "
                   f"settings that computed them in {checksums.numerics_path(ws)}")
        return
    result = checksums.report(ws, portable=portable, by_value=by_value)
    if result.error:
        click.echo(f"error: {result.error}", err=True)
    for line in result.lines:
        click.echo(line)
    if not result.ok:
        sys.exit(1)
