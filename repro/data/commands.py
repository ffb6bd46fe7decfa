"""The `repro data fetch | verify | prepare | list | prepare-vox2` commands (repro/cli/ stays thin)."""

from __future__ import annotations

from pathlib import Path

import click

from repro.config import load_profile
from repro.data.catalog import load_catalog
from repro.data.diskspace import gib
from repro.data.download import FetchOptions, data_root, describe, fetch, plan, verify_auto
from repro.data.lock import DataLock, lock_path
from repro.data.manual import manual_path, verify_manual
from repro.remedy import command
from repro.util.atomic import check_writable
from repro.util.locks import output_lock


def run_fetch(names: tuple[str, ...], profile: str, dry_run: bool, keep_archives: bool, quiet: bool) -> None:
    from repro.data.prepare import _needs

    cfg = load_profile(profile)
    root, catalog = data_root(cfg.data.root), load_catalog()
    manual: list[str] = []
    if names:
        wanted = list(names)
    else:
        if cfg.corpus.kind != "real":
            raise click.UsageError(f"profile {cfg.name!r} uses the synthetic corpus; name corpora to fetch "
                                   f"({', '.join(sorted(catalog.corpora))}) or use --profile fast|full")
        wanted, manual = _needs(cfg)
    if dry_run:
        click.echo(describe(plan(wanted, root, catalog), root))
    else:
        lock = DataLock(lock_path(cfg.data.lock_file))
        fetch(wanted, root=root, lock=lock, catalog=catalog,
              options=FetchOptions(progress=not quiet, keep_archives=keep_archives))
    for name in manual:
        corpus = catalog.corpus(name)
        rep = verify_manual(corpus, manual_path(corpus, root, cfg.data.manual_paths))
        click.echo(f"{name} (user-provided): {'present' if rep.ok else 'NOT READY'}")
        if not rep.ok:
            click.echo("\n".join("  " + line for line in rep.lines))


def run_verify(name: str, path: Path | None, profile: str, deep: bool) -> bool:
    cfg = load_profile(profile)
    root, catalog = data_root(cfg.data.root), load_catalog()
    corpus = catalog.corpus(name)
    if corpus.access == "manual":
        rep = verify_manual(corpus, manual_path(corpus, root, cfg.data.manual_paths, path))
    else:
        if path is not None:
            root = Path(path)
        rep = verify_auto(corpus, root, DataLock(lock_path(cfg.data.lock_file)), deep=deep)
    for line in rep.lines:
        click.echo(line)
    click.echo(f"{name}: {'OK' if rep.ok else 'NOT READY'}")
    return rep.ok


def run_verify_manifests(path: Path | None, profile: str) -> bool:
    """Every audio file of a corpus folder (default: the profile's) against its manifests' sha256;
    prints the missing and damaged ones and a summary; True when all match."""
    from repro.data.integrity import check_corpus
    from repro.workspace import Workspace

    folder = path if path is not None else Workspace.for_profile(profile).corpus_dir
    report = check_corpus(folder)
    for line in report.lines():
        click.echo(line)
    return report.ok


def run_list() -> None:
    catalog = load_catalog()
    for name, c in catalog.corpora.items():
        if c.access == "manual":
            size = "user-provided"
        else:
            sizes = [a.download_bytes for a in c.archives]
            known = sum(s for s in sizes if s is not None)
            size = gib(known) + (" + unknown" if None in sizes else "")
        click.echo(f"{name:24s} {c.access:6s} {size:>22s}  {'/'.join(c.tasks):8s} {c.licence}")
        for a in c.archives:
            sums = "+".join(k for k in ("md5", "sha256") if getattr(a, k)) or "none published (lock file)"
            if a.split_of:
                parts = {"+".join(k for k in ("md5", "sha256") if getattr(p, k)) or "none" for p in a.split_of}
                sums += f" (joined); {len(a.split_of)} parts: {'/'.join(sorted(parts))}"
            click.echo(f"{'':24s}   {a.name:18s} {a.file:40s} checksum: {sums}")


def run_prepare(profile: str, quiet: bool) -> None:
    from repro.data.prepare import prepare_corpus
    from repro.workspace import Workspace

    ws = Workspace.for_profile(profile)
    if ws.profile.corpus.kind != "real":
        raise click.UsageError(f"profile {ws.profile.name!r} uses the synthetic corpus: "
                               f"{command('run', ws, '--stage', 'corpus')}")
    check_writable(ws.work)
    with output_lock(ws.lock_file(ws.corpus_dir), f"corpus {ws.corpus_dir}"):  # the corpus stage's lock
        prepare_corpus(ws.corpus_dir, ws.profile, progress=not quiet)


def run_prepare_vox2(profile: str, speakers: int | None, workers: int, quiet: bool) -> None:
    from repro.data.prepare.voxceleb2 import convert_voxceleb2

    cfg = load_profile(profile)
    convert_voxceleb2(data_root(cfg.data.root), workers=workers, speakers=speakers, progress=not quiet)
