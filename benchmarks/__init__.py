"""pytest-benchmark suite: `pytest --benchmark-only` runs it; plain `pytest` skips it."""
