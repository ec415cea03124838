"""Not-run, the outcome of a test that proved nothing, and the reasons pytest reports carry."""

from __future__ import annotations

from typing import NoReturn

import pytest

__all__ = ["DRY_RUN_REASON", "NOT_RUN_PREFIX", "not_run", "skip_reason"]

NOT_RUN_PREFIX = "not-run: "
# Why every cluster test of a dry run is not-run.
DRY_RUN_REASON = "dry run"


def not_run(reason: str) -> NoReturn:
    """End the current test as not-run: it proved nothing, for `reason` (never counted as a pass)."""
    pytest.skip(NOT_RUN_PREFIX + reason)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")
