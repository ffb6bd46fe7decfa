"""Run `python -m repro ARGS` with every package outside a stock CUDA PyTorch environment blocked from import.

Usage: python tests/stock_only.py ALLOWED_EXTRA_COMMA_LIST -- repro arguments...

Allowed: the standard library, `repro`, the distributions of `repro.bench.wheels.STOCK` and everything
they require (read from the installed metadata, extras excluded), and the comma-separated extra
distributions (the wheel folder's). Any other top-level module is reported as not found (so optional
imports fall back as they would where it is absent). At exit, the blocked names and the loaded top-level
modules are printed as JSON on the last line of stderr.
"""

import json
import re
import runpy
import sys
from importlib import metadata

STOCK = ("torch", "torchaudio", "transformers", "numpy", "scipy", "click", "pyyaml", "tqdm")


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(names):
    seen = set()
    todo = [_normal(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in requires:
            if "extra ==" in r:
                continue
            todo.append(_normal(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]))
    return seen


def top_levels(dists):
    tops = set()
    for d in metadata.distributions():
        if _normal(d.metadata["Name"]) in dists:
            for f in d.files or []:
                first = str(f).split("/")[0]
                tops.add(first[:-3] if first.endswith(".py") else first.split(".")[0])
    return tops


extra = [n for n in sys.argv[1].split(",") if n]
dists = closure(STOCK) | {_normal(n) for n in extra}
allowed = top_levels(dists) | {"repro"}
# modules a package generates at run time (torch's `_remote_module_non_scriptable`, `_sysconfigdata_*`) belong to
# no distribution: private names are allowed unless a distribution outside the set ships them (`_soundfile`)
others = top_levels({_normal(d.metadata["Name"]) for d in metadata.distributions()}) - allowed
blocked = set()


class StockOnly:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in allowed or (top.startswith("_") and top not in others):
            return self.finder.find_spec(name, path, target) if hasattr(self.finder, "find_spec") else None
        blocked.add(top)
        return None

    def find_distributions(self, context=metadata.DistributionFinder.Context()):
        finder = getattr(self.finder, "find_distributions", None)
        if finder is None:
            return iter(())
        return (d for d in finder(context) if _normal(d.metadata["Name"] or "") in dists)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()


sys.meta_path[:] = [StockOnly(f) for f in sys.meta_path]


def _report():
    loaded = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps({"blocked": sorted(blocked), "loaded": loaded}), file=sys.stderr)


import atexit  # noqa: E402

atexit.register(_report)
sys.argv = ["repro", *sys.argv[sys.argv.index("--") + 1:]]
runpy.run_module("repro", run_name="__main__")
