"""Consent to inject faults, bound to the identity of one cluster.

A disruptive test stops nodes and components. On the embedded kind cluster that the suite runs itself this is the
point, and consent is implicit. On an attached cluster it needs ``--allow-faults`` with the UID of that cluster's
kube-system namespace: the flag then names one cluster, and if the kubeconfig later points somewhere else the
consent does not apply there.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from kubeha.cluster.identity import ClusterIdentity

__all__ = [
    "ALLOW_FAULTS_FLAG",
    "Consent",
    "ConsentError",
    "ConsentSource",
    "UID_COMMAND",
    "check_consent",
    "consent_for",
    "mismatch",
    "refusal",
    "validate_uid",
]

ALLOW_FAULTS_FLAG = "--allow-faults"
# Kubernetes object UIDs are RFC 4122 UUIDs in their textual form.
_UID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UID_COMMAND = "kubectl get namespace kube-system -o jsonpath='{.metadata.uid}'"


class ConsentError(ValueError):
    """Consent was given in a form, or for a cluster, that cannot apply."""


class ConsentSource(enum.Enum):
    EMBEDDED = "embedded"  # the suite's own kind cluster
    FLAG = "flag"  # --allow-faults matching the cluster's kube-system UID


@dataclass(frozen=True)
class Consent:
    """Faults may be injected into the cluster whose kube-system namespace has UID `kube_system_uid`."""

    kube_system_uid: str
    api_url: str
    source: ConsentSource

    def covers(self, identity: ClusterIdentity) -> bool:
        return identity.kube_system_uid == self.kube_system_uid


def validate_uid(value: str) -> str:
    """`value` normalised, or `ConsentError` when it cannot be a namespace UID."""
    uid = value.strip().lower()
    if not _UID_PATTERN.match(uid):
        raise ConsentError(
            f"{ALLOW_FAULTS_FLAG} {value}: not a UID; pass the UID of the cluster's kube-system namespace, "
            f"as printed by {UID_COMMAND}"
        )
    return uid


def refusal(identity: ClusterIdentity) -> str:
    """Why faults are refused on an attached cluster without consent, and the exact flag that gives it."""
    return (
        f"refusing to inject faults into the cluster at {identity.api_url}: it was not created by this suite and "
        f"no consent was given; if every node of this cluster may be disrupted, pass "
        f"{ALLOW_FAULTS_FLAG} {identity.kube_system_uid}"
    )


def mismatch(identity: ClusterIdentity, given_uid: str) -> str:
    return (
        f"{ALLOW_FAULTS_FLAG} {given_uid} was given, but the cluster at {identity.api_url} has kube-system UID "
        f"{identity.kube_system_uid}: that consent is for another cluster; if every node of this cluster may be "
        f"disrupted, pass {ALLOW_FAULTS_FLAG} {identity.kube_system_uid}"
    )


def consent_for(identity: ClusterIdentity, *, embedded: bool, allow_faults: str | None) -> Consent | None:
    """The consent that applies to the cluster `identity`, or None.

    The embedded cluster is consented implicitly. On an attached cluster, `allow_faults` must equal its kube-system
    UID; a different UID raises `ConsentError` (the flag was meant for another cluster: running on regardless would
    hide that mistake).
    """
    if embedded:
        return Consent(identity.kube_system_uid, identity.api_url, ConsentSource.EMBEDDED)
    if allow_faults is None:
        return None
    uid = validate_uid(allow_faults)
    if uid != identity.kube_system_uid:
        raise ConsentError(mismatch(identity, uid))
    return Consent(uid, identity.api_url, ConsentSource.FLAG)


def check_consent(consent: Consent | None, identity: ClusterIdentity) -> str | None:
    """None when faults may be injected into `identity`, else the reason they may not."""
    if consent is None:
        return refusal(identity)
    if not consent.covers(identity):
        return (
            f"consent was given for the cluster with kube-system UID {consent.kube_system_uid} at {consent.api_url}, "
            f"but the kubeconfig now reaches {identity.api_url} with kube-system UID {identity.kube_system_uid}; "
            f"if every node of this cluster may be disrupted, pass {ALLOW_FAULTS_FLAG} {identity.kube_system_uid}"
        )
    return None
