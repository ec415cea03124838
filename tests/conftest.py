"""The project's own tests: those in integration/ and negative/ run against the real embedded cluster, unit/ without
one.

The decision is made here rather than in integration/conftest.py or negative/conftest.py: when ``tests`` is given,
pytest loads conftests of subdirectories whose names start with ``test`` only before the session starts, and the
cluster is set up at session start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeha.pytest_plugin.selection import needs_cluster, selected_paths

TESTS_DIR = Path(__file__).resolve().parent
CLUSTER_TEST_DIRS = (TESTS_DIR / "integration", TESTS_DIR / "negative")


def pytest_kubeha_cluster_required(config: pytest.Config) -> bool | None:
    """True for tests/integration, tests/negative or tests as a whole; False for tests/unit alone; no opinion when
    paths outside tests/ are selected too (suites/ha/conftest.py answers for its own)."""
    selected = selected_paths(config)
    if selected is None:
        return None
    return needs_cluster(selected, cluster_dirs=CLUSTER_TEST_DIRS, within=TESTS_DIR)


# Tests written against the real cluster that have not yet passed there end to end. They are deselected by
# `./run tests` (CI) with `-m "not wip"` and run by `./run tests-all`; each entry says what is missing.
WIP_PATHS: dict[Path, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        for wip, reason in WIP_PATHS.items():
            if path == wip or wip in path.parents:
                item.add_marker(pytest.mark.wip(reason=reason))
