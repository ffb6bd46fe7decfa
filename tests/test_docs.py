"""The README is a short front door whose links, Make targets and commands all exist."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import click
import pytest

from repro.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _code(text: str) -> str:
    """Every code span and code block of a Markdown text, joined by newlines."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return "\n".join(blocks + re.findall(r"`([^`\n]+)`", rest))


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to dashes)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        slug = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
        out.add(slug.replace(" ", "-"))
    return out


def _make_targets() -> list[str]:
    """Targets of the Makefile; pattern rules (`figure-%`) as regular expressions."""
    names = re.findall(r"^([A-Za-z0-9_%.-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
    return [n for n in names if not n.startswith(".")]


def _is_make_target(name: str, targets: list[str]) -> bool:
    if "*" in name or "…" in name:  # `make docker-*`, `make docker-…`: the pattern rule itself
        return re.sub("[*…]", "%", name) in targets
    for t in targets:
        if "%" in t:
            prefix, suffix = t.split("%")
            if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix + suffix):
                stem = name[len(prefix): len(name) - len(suffix)]
                # docker-TARGET runs `make TARGET` in the image: TARGET must exist too
                return prefix != "docker-" or stem.upper() == stem or _is_make_target(stem, targets)
        elif name == t:
            return True
    return False


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    """Links to files (README -> docs/..., docs -> each other) exist, and so do their #anchors."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_readme_links_every_doc():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    assert not [d.name for d in DOCS if d.resolve() not in linked]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_make_target_named_exists(page):
    targets = _make_targets()
    named = set()
    for code in _code(page.read_text()).splitlines():
        for m in re.finditer(r"(?:^|[;&|(] *)make((?: +[A-Z_]+=\S*)*)((?: +[a-z][\w%*…-]*)+)", code):
            named.update(w for w in m.group(2).split() if not re.fullmatch(r"[A-Z_]+=\S*", w))
    missing = sorted(n for n in named if not _is_make_target(n, targets))
    assert not missing, f"{page.name} names Make targets the Makefile lacks: {missing}"


def _cli_missing(words: list[str]) -> str | None:
    """None when `repro WORDS...` names an existing command (group words followed down), else why not."""
    cmd: click.Command = main
    path = ["repro"]
    for word in words:
        if not isinstance(cmd, click.Group):
            return None  # the rest are arguments of a command
        sub = cmd.commands.get(word)
        if sub is None:
            return f"`{' '.join(path + [word])}`: no such command (known: {', '.join(sorted(cmd.commands))})"
        cmd, path = sub, path + [word]
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repro_command_named_exists(page):
    problems = []
    for line in _code(page.read_text()).splitlines():
        for m in re.finditer(r"(?:^|[\s;&|(`]|-m )repro((?: +[a-z][a-z0-9-]*)+)", line):
            words = m.group(1).split()
            why = _cli_missing(words[:2])
            if why:
                problems.append(why)
    assert not problems, f"{page.name}: " + "; ".join(sorted(set(problems)))


def test_the_cli_check_itself_catches_a_wrong_command():
    assert _cli_missing(["train-speaker"]) and _cli_missing(["bench", "nothing"])
    assert _cli_missing(["run"]) is None and _cli_missing(["bench", "report"]) is None
    assert _is_make_target("figure-3", _make_targets()) and _is_make_target("docker-demo", _make_targets())
    assert not _is_make_target("train-speaker", _make_targets())
    assert not _is_make_target("docker-train-speaker", _make_targets())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_homebrew(page):
    """requirements.lock holds Linux x86-64 wheels: other systems go through the Docker image."""
    assert not re.search(r"\bbrew\b", page.read_text())


def test_performance_page_is_what_bench_report_writes(monkeypatch):
    """docs/PERFORMANCE.md is generated: `repro bench report` on the committed records gives it unchanged."""
    from repro.bench.report import render

    monkeypatch.chdir(ROOT)
    assert render(Path("artifacts/bench")) == (ROOT / "docs" / "PERFORMANCE.md").read_text(), \
        "docs/PERFORMANCE.md is stale: run `repro bench report`"


def test_readme_numbers_are_the_records_rounded():
    """The README states measured and projected numbers only as the records in artifacts/bench/ give them."""
    import json

    from repro.bench.fresh_machine import load

    text = " ".join(README.read_text().split())
    fresh = load(ROOT / "artifacts" / "bench" / "fresh_machine.json")
    assert f"`make demo` took about {round(fresh['demo']['wall_seconds'] / 60)} minutes" in text
    assert f"about {round(fresh['demo']['venv_seconds'] / 60)} of them build `.venv`" in text
    assert f"`make test` about {round(fresh['test']['wall_seconds'] / 60)} minutes ({fresh['test']['tests']} tests)" \
        in text
    disk = fresh["disk_gb"]
    assert f"about {disk['clone']:.1f} GB: `.venv` {disk['.venv']:.1f} GB, `work/` {disk['work']:.1f} GB" in text
    from repro.bench.projection import claim_reads, claim_runs, gpu_hours_line

    projection = json.loads((ROOT / "artifacts" / "bench" / "projection.json").read_text())
    full, fast = projection["profiles"]["full"], projection["profiles"]["fast"]
    assert gpu_hours_line("full", full["hours"]) in text and gpu_hours_line("fast", fast["hours"]) in text
    rows = [line for line in README.read_text().splitlines() if line.startswith("| ")]
    reads = claim_reads()
    assert projection["claim_reads"] == reads  # the record was made with the claims' current reads
    for claim, prefix in (("1", "| 1."), ("2", "| 2."), ("3", "| 3."), ("4", "| (secondary)")):
        row = next(r for r in rows if r.startswith(prefix))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == ", ".join(reads[claim]["checks"]) and cells[2] == claim_runs(reads[claim]), row
        hours = f"≈ {round(full['claims']['float32'][claim])} / {round(full['claims']['bf16'][claim])}"
        assert cells[4] == hours, row
    row = next(r for r in rows if r.startswith("| first check"))
    assert f"≈ {round(fast['hours']['float32'])} / {round(fast['hours']['bf16'])}" in row

def test_every_list_of_recipes_names_the_registered_ones():
    """`RECIPE=a|b|...` in the Makefile's help and the docs lists every recipe of `repro.recipes.RECIPES`."""
    from repro.recipes import RECIPES

    lists = []
    for path in [ROOT / "Makefile", *PAGES]:
        for found in re.findall(r"RECIPE=([a-z_]+(?:\\?\|[a-z_]+)+)", path.read_text()):
            lists.append((path.name, found.replace("\\", "").split("|")))
    assert any(name == "Makefile" for name, _ in lists)
    for name, recipes in lists:
        assert sorted(recipes) == sorted(RECIPES), (name, recipes)


def _architecture_tree() -> str:
    """The file tree under "Where things are" in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Where things are"):]
    return re.search(r"```\n(repro/\n.*?)```", section, flags=re.S).group(1)


def test_the_architecture_tree_lists_exactly_the_package_s_modules_and_the_files_it_names_exist():
    tree = _architecture_tree()
    package = ROOT / "repro"
    listed = re.findall(r"^  (\S+) ", tree, flags=re.M)
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    subpackages = {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert sorted(listed) == sorted(modules | subpackages)
    assert len(listed) == len(set(listed))
    # what a subpackage's description names (file.py, file.yaml, folder/) is in that subpackage
    for entry, description in re.findall(r"^  (\S+/) +(.*(?:\n {20}.*)*)", tree, flags=re.M):
        for name in re.findall(r"(?<![\w/.])(\w+\.(?:py|yaml)|\w+/)(?=[\s(*,);:]|$)", description):
            assert (package / entry / name).exists(), f"docs/architecture.md: {entry} names {name}, not in repro/{entry}"
    for entry in re.findall(r"^(\S+)", tree, flags=re.M):  # the project's other files
        assert (ROOT / entry).exists(), entry
