"""Benchmarks run only under --benchmark-only, so a plain `pytest` stays quick."""

import pytest


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with pytest --benchmark-only")
    for item in items:
        if "benchmarks" in item.nodeid.split("::")[0].split("/"):
            item.add_marker(skip)
