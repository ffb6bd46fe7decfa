"""Models behind one upstream interface: `load_upstream(name)` returns an `Upstream`;
`check_upstream(model)` checks that a model keeps that interface's contract (`repro.models.check`)."""


def __getattr__(name: str):
    if name == "check_upstream":  # imported on first use: the package itself stays light
        from repro.models.check import check_upstream

        return check_upstream
    raise AttributeError(f"module 'repro.models' has no attribute {name!r}")
