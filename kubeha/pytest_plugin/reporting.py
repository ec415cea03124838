"""The session's account, on the xdist controller (or the only process): the `RunReport` built from every process's
results and handed to the report writers, the certification profile's verdict, and the terminal summary.

`SessionReporter` is registered by `kubeha.plugin` next to the `Controller`, which calls `SessionReporter.write_reports`
and `SessionReporter.settle_exit_status` at session end, around tearing the cluster down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubeha.core import model
from kubeha.core.model import Profile, RunReport, Verdict
from kubeha.pytest_plugin.gate import DRY_RUN_SECTION
from kubeha.pytest_plugin.options import Settings
from kubeha.pytest_plugin.outcomes import NOT_RUN_PREFIX, skip_reason
from kubeha.pytest_plugin.results import read_results
from kubeha.pytest_plugin.runcontext import RUN_KEY, ClusterHandle, read_timeline

__all__ = ["Incomplete", "SessionReporter", "Summary"]


@dataclass(frozen=True)
class Incomplete:
    """A test that proved nothing."""

    nodeid: str
    kind: str  # "not-run", "skipped", "xfailed"
    reason: str


@dataclass
class Summary:
    """What the terminal summary shows; the controller adds its notes (journal replays, cluster teardown)."""

    incomplete: list[Incomplete] = field(default_factory=list)
    dry_run_plans: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


class SessionReporter:
    """Registered on the xdist controller, or in the only process without xdist."""

    def __init__(self, config: pytest.Config, options: Settings) -> None:
        self.config = config
        self.options = options
        self.summary = Summary()
        self.report_verdict: model.RunSummary | None = None

    def _cluster(self) -> ClusterHandle | None:
        context = self.config.stash.get(RUN_KEY, None)
        return None if context is None else context.cluster

    # -- outcomes --------------------------------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            wasxfail = getattr(report, "wasxfail", None)
            if isinstance(wasxfail, str):
                self.summary.incomplete.append(Incomplete(report.nodeid, "xfailed", wasxfail or "expected failure"))
            else:
                reason = skip_reason(report)
                kind = "not-run" if reason.startswith(NOT_RUN_PREFIX) else "skipped"
                self.summary.incomplete.append(
                    Incomplete(report.nodeid, kind, reason.removeprefix(NOT_RUN_PREFIX))
                )
        for key, content in report.sections if report.when == "setup" else ():
            if DRY_RUN_SECTION in key:
                self.summary.dry_run_plans.append((report.nodeid, content))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            reason = skip_reason(report)
            kind = "not-run" if reason.startswith(NOT_RUN_PREFIX) else "skipped"
            self.summary.incomplete.append(Incomplete(report.nodeid, kind, reason.removeprefix(NOT_RUN_PREFIX)))

    # -- session end (called by the controller) --------------------------------------------------------------------

    def write_reports(self) -> None:
        """Build the run report from the results every process wrote and hand it to the report writers."""
        context = self.config.stash.get(RUN_KEY, None)
        if self.options.dry_run or context is None:
            return
        stored = read_results(context)
        handle = context.cluster
        if not stored and handle is None:
            return
        if handle is not None:
            identity = model.ClusterIdentity(
                api_url=handle.identity.api_url,
                cluster_uid=handle.identity.kube_system_uid,
                kubernetes_version=handle.identity.kubernetes_version,
            )
        else:
            seen = next((item.cluster for item in stored if item.cluster is not None), None)
            identity = seen or model.ClusterIdentity(api_url="unknown", cluster_uid="unknown", kubernetes_version="unknown")
        report = RunReport(
            cluster=identity,
            started_wall=context.started_wall,
            finished_wall=max(time.time(), context.started_wall),
            results=tuple(item.result for item in stored),
            profile=self.options.profile,
        )
        self.report_verdict = report.summary()
        self.options.report_dir.mkdir(parents=True, exist_ok=True)
        written = self.config.hook.pytest_kubeha_write_reports(
            config=self.config, report=report, timeline=read_timeline(context), directory=self.options.report_dir
        )
        for paths in written:
            self.summary.written.extend(paths)

    def settle_exit_status(self, session: pytest.Session) -> None:
        """Fail a passing session that proved less than it should: under the certification profile any skip,
        not-run or failed run report; under any profile a failure the controller recorded (a crashed worker's
        faults that could not be undone)."""
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.options.profile is Profile.CERTIFICATION and session.exitstatus in passing:
            verdict = self.report_verdict
            if verdict is not None and verdict.verdict is not Verdict.PASSED and not self.summary.incomplete:
                # e.g. no control produced a result: the pytest outcomes alone would not show it.
                self.summary.failures.append(f"run report verdict {verdict.verdict.value}: {'; '.join(verdict.reasons)}")
            if self.summary.incomplete or self.summary.failures:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif self.summary.failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    # -- terminal --------------------------------------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
        summary = self.summary
        write = terminalreporter.write_line
        if summary.dry_run_plans:
            terminalreporter.section("kubeha dry run: planned faults")
            for nodeid, plan in summary.dry_run_plans:
                write(nodeid)
                for line in plan.splitlines():
                    write(f"    {line}")
        if summary.incomplete:
            certification = self.options.profile is Profile.CERTIFICATION
            title = "kubeha: tests that proved nothing"
            terminalreporter.section(title + (" (certification: each one fails the run)" if certification else ""))
            for entry in summary.incomplete:
                write(f"{entry.kind.upper()} {entry.nodeid}: {entry.reason}")
        if summary.notes or summary.failures or summary.written:
            terminalreporter.section("kubeha")
            for note in summary.notes:
                write(note)
            for failure in summary.failures:
                write(f"FAILED: {failure}")
            for path in summary.written:
                write(f"report written: {path}")
        if self.options.profile is Profile.CERTIFICATION and (summary.incomplete or summary.failures):
            write(
                f"kubeha certification FAILED: {len(summary.incomplete)} test(s) skipped or not run"
                + (f", {len(summary.failures)} other failure(s)" if summary.failures else ""),
                red=True,
                bold=True,
            )
        if self._cluster() is not None and not summary.written and not self.options.dry_run:
            write(
                'kubeha: no report writer is registered: add "reports.pytest_plugin" to pytest_plugins (the '
                "repository's conftest.py does) or pass -p reports.pytest_plugin, to write the JSON and HTML reports "
                f"into {self.options.report_dir}"
            )
