"""The kubeha command-line options, and `Settings`: their validated form, kept in the config's stash."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeha.cluster.client import KubeconfigError, KubeconfigInfo, KubeconfigTarget, read_kubeconfig
from kubeha.consent import ConsentError, validate_uid
from kubeha.core.model import Profile
from kubeha.providers.inventory import Inventory, InventoryError, load_inventory

__all__ = [
    "ClusterSource",
    "DEFAULT_CLUSTER_NAME",
    "DEFAULT_REPORT_DIR",
    "EMBEDDED_KIND",
    "SETTINGS_KEY",
    "Settings",
    "parse_settings",
    "pytest_addoption",
    "settings",
]

EMBEDDED_KIND = "kind"
DEFAULT_CLUSTER_NAME = "kubeha"
DEFAULT_REPORT_DIR = Path("out") / "reports"

_KIND_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ClusterSource(enum.Enum):
    EMBEDDED = "embedded"  # the suite's own kind cluster
    ATTACH = "attach"  # any cluster reached through --kubeconfig


@dataclass(frozen=True)
class Settings:
    source: ClusterSource
    explicit: bool  # --kubeconfig or --cluster given: the session needs a cluster whatever the hooks say
    kubeconfig: KubeconfigInfo | None
    cluster_name: str
    inventory: Inventory | None
    allow_faults: str | None
    keep_cluster: bool
    dry_run: bool
    profile: Profile
    report_dir: Path


SETTINGS_KEY = pytest.StashKey[Settings]()


def settings(config: pytest.Config) -> Settings:
    """The validated kubeha options of this session."""
    return config.stash[SETTINGS_KEY]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kubeha", "kubeha: Kubernetes high-availability conformance")
    group.addoption(
        "--kubeconfig",
        metavar="PATH",
        default=None,
        help="attach to the cluster of this kubeconfig (default: the embedded kind cluster)",
    )
    group.addoption("--context", metavar="NAME", default=None, help="kubeconfig context to use with --kubeconfig")
    group.addoption(
        "--cluster",
        choices=(EMBEDDED_KIND,),
        default=None,
        help="run against the embedded kind cluster, creating it if needed (the default without --kubeconfig)",
    )
    group.addoption(
        "--cluster-name",
        metavar="NAME",
        default=None,
        help=f"name of the embedded kind cluster (default: {DEFAULT_CLUSTER_NAME})",
    )
    group.addoption(
        "--inventory",
        metavar="FILE",
        default=None,
        help="SSH access to the nodes of an attached cluster (YAML, see kubeha.providers.inventory)",
    )
    group.addoption(
        "--allow-faults",
        metavar="CLUSTER_UID",
        default=None,
        help="consent to inject faults into the attached cluster whose kube-system namespace has this UID",
    )
    group.addoption(
        "--keep-cluster",
        action="store_true",
        default=False,
        help="keep the embedded cluster after the session (by default it is deleted if the session created it)",
    )
    group.addoption(
        "--dry-run",
        action="store_true",
        default=False,
        help="print the faults disruptive tests would inject and their targets; touch nothing",
    )
    group.addoption(
        "--profile",
        choices=tuple(profile.value for profile in Profile),
        default=Profile.DEFAULT.value,
        help="certification: any skipped or not-run test fails the session",
    )
    group.addoption(
        "--report-dir",
        metavar="DIR",
        default=None,
        help=f"where the run's reports are written (default: ./{DEFAULT_REPORT_DIR})",
    )


def _resolve(config: pytest.Config, raw: str) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else config.invocation_params.dir / path


def parse_settings(config: pytest.Config) -> Settings:
    """Validate the kubeha options; every error is a `pytest.UsageError` saying what to pass instead."""
    option = config.option
    raw_kubeconfig: str | None = option.kubeconfig
    context: str | None = option.context
    cluster: str | None = option.cluster
    cluster_name: str | None = option.cluster_name
    raw_inventory: str | None = option.inventory
    allow_faults: str | None = option.allow_faults
    keep_cluster: bool = option.keep_cluster
    attach = raw_kubeconfig is not None

    if attach and cluster is not None:
        raise pytest.UsageError(
            f"--kubeconfig and --cluster {cluster} both choose a cluster: pass --kubeconfig PATH to attach to an "
            "existing cluster, or --cluster kind for the embedded one, not both"
        )
    if context is not None and not attach:
        raise pytest.UsageError(
            f"--context {context} selects a context of --kubeconfig, which was not given: pass --kubeconfig PATH "
            "too, or omit --context to use the embedded kind cluster"
        )
    if attach and cluster_name is not None:
        raise pytest.UsageError(
            f"--cluster-name {cluster_name} names the embedded kind cluster, but --kubeconfig attaches to another "
            "cluster: omit --cluster-name, or omit --kubeconfig to use the embedded cluster"
        )
    if attach and keep_cluster:
        raise pytest.UsageError(
            "--keep-cluster applies to the embedded kind cluster only (an attached cluster is never deleted): "
            "omit --keep-cluster"
        )
    if not attach and allow_faults is not None:
        raise pytest.UsageError(
            f"--allow-faults {allow_faults} gives consent for an attached cluster, but no --kubeconfig was given: "
            "the embedded kind cluster needs no consent; omit --allow-faults, or pass --kubeconfig PATH"
        )
    if not attach and raw_inventory is not None:
        raise pytest.UsageError(
            f"--inventory {raw_inventory} describes the machines of an attached cluster, but no --kubeconfig was "
            "given: the embedded kind cluster is reached through docker; omit --inventory, or pass --kubeconfig PATH"
        )
    name = cluster_name if cluster_name is not None else DEFAULT_CLUSTER_NAME
    if not _KIND_NAME.match(name):
        raise pytest.UsageError(
            f"--cluster-name {name}: not a valid kind cluster name; use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )

    kubeconfig: KubeconfigInfo | None = None
    if raw_kubeconfig is not None:
        try:
            kubeconfig = read_kubeconfig(KubeconfigTarget(_resolve(config, raw_kubeconfig), context))
        except KubeconfigError as error:
            raise pytest.UsageError(str(error)) from None

    inventory: Inventory | None = None
    if raw_inventory is not None:
        try:
            inventory = load_inventory(_resolve(config, raw_inventory))
        except InventoryError as error:
            raise pytest.UsageError(f"--inventory {raw_inventory}: {error}") from None

    if allow_faults is not None:
        try:
            allow_faults = validate_uid(allow_faults)
        except ConsentError as error:
            raise pytest.UsageError(str(error)) from None

    raw_report_dir: str | None = option.report_dir
    report_dir = _resolve(config, raw_report_dir if raw_report_dir is not None else str(DEFAULT_REPORT_DIR))
    if report_dir.exists() and not report_dir.is_dir():
        raise pytest.UsageError(
            f"--report-dir {report_dir}: exists and is not a directory; pass a directory path (it is created if "
            "missing)"
        )

    return Settings(
        source=ClusterSource.ATTACH if attach else ClusterSource.EMBEDDED,
        explicit=attach or cluster is not None,
        kubeconfig=kubeconfig,
        cluster_name=name,
        inventory=inventory,
        allow_faults=allow_faults,
        keep_cluster=keep_cluster,
        dry_run=bool(option.dry_run),
        profile=Profile(option.profile),
        report_dir=report_dir,
    )
