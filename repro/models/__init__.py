"""Models behind one upstream interface: `load_upstream(name)` returns an `Upstream`."""
