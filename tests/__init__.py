"""The test suite (a package, so that `tests.*` imports cannot resolve to another installed `tests`)."""
