"""Which paths a session selected, for implementations of ``pytest_kubeha_cluster_required`` that decide by the tests
being run (see `kubeha.hooks`).

A conftest.py that implements the hook is consulted only if pytest loaded it before the session started: the
rootdir's, those on the way to each path given on the command line, and their ``test*`` subdirectories. A directory
of cluster tests whose name does not start with ``test`` (``tests/integration``) is not among them when ``tests`` is
given, so the decision belongs in a conftest.py above it, made with `needs_cluster`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import pytest

__all__ = ["needs_cluster", "selected_paths"]


def selected_paths(config: pytest.Config) -> tuple[Path, ...] | None:
    """The absolute paths the session collects from: its arguments, or ``testpaths`` when none were given, without
    ``::`` test names. None with ``--pyargs``, whose arguments are module names rather than paths."""
    if config.option.pyargs:
        return None
    base = config.invocation_params.dir
    return tuple((base / arg.split("::", 1)[0]).resolve() for arg in config.args)


def needs_cluster(selected: Sequence[Path], *, cluster_dirs: Collection[Path], within: Path) -> bool | None:
    """Whether a selection runs the tests in `cluster_dirs` (absolute, resolved paths).

    True when a selected path is one of them, lies inside one, or contains one (the whole tree they belong to);
    False when every selected path lies inside `within` and none of that holds; None, no opinion, when a selected path
    lies outside `within` and none of that holds, so that the conftests of those other paths decide.
    """
    for path in selected:
        for directory in cluster_dirs:
            if path.is_relative_to(directory) or directory.is_relative_to(path):
                return True
    if all(path.is_relative_to(within) for path in selected):
        return False
    return None
