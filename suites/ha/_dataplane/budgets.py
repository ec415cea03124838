"""Named bounds of the data-plane controls and how each is derived.

A lost node is noticed by the node lifecycle controller after its node-monitor grace period (read from the cluster,
`facts.node_loss_timing`); only then are its pods marked not ready, removed from their Services' endpoints, and
(with tolerations) evicted and replaced. Until then a Service keeps sending a share of its traffic to the dead
replicas: that share fails. The budgets below bound what comes after detection; detection itself is the cluster's
configured figure.
"""

from __future__ import annotations

from .facts import NodeLossTiming
from .probes import BASELINE_S as BASELINE_PROBE_S

__all__ = [
    "BASELINE_S",
    "ENDPOINT_PROPAGATION_SLACK_S",
    "FAILURE_SHARE_MARGIN",
    "RECOVERY_STREAK_S",
    "REPLACEMENT_SLACK_S",
    "RESTART_RECOVERY_TIMEOUT_S",
    "expected_failure_share",
    "node_loss_hold_s",
    "recovery_budget_s",
]

# Probing before a fault (see probes.BASELINE_S): every attempt must succeed then.
BASELINE_S = BASELINE_PROBE_S
# From a pod marked not ready to every node's kube-proxy (and an ingress controller) no longer sending to it: the
# EndpointSlice controller's update, the watch to each kube-proxy, one proxy sync (iptables: min-sync-period 1 s),
# with the API slower while a fault is in place.
ENDPOINT_PROPAGATION_SLACK_S = 20.0
# After recovery the probe must keep succeeding this long before the fault is undone: recovery is observed, not
# assumed.
RECOVERY_STREAK_S = 10.0
# Replacement pods: scheduling, sandbox and container start, first readiness probe (period 1 s), on a loaded node.
REPLACEMENT_SLACK_S = 40.0
# Until detection, each attempt picks a replica at random (kube-proxy) and fails if it picked a dead one; the
# measured share of failures may exceed the dead share by this margin (sampling noise over a few dozen attempts).
FAILURE_SHARE_MARGIN = 0.25
# A stopped node started again: kubelet, its pods and their readiness back, as the steady state requires.
RESTART_RECOVERY_TIMEOUT_S = 300.0


def recovery_budget_s(timing: NodeLossTiming) -> float:
    """From a node's loss to traffic no longer reaching its replicas."""
    return timing.detection_bound_s + ENDPOINT_PROPAGATION_SLACK_S


def node_loss_hold_s(timing: NodeLossTiming) -> float:
    """How long a node-loss fault is held: through detection and endpoint removal, then a failure-free streak."""
    return recovery_budget_s(timing) + RECOVERY_STREAK_S


def expected_failure_share(dead: int, total: int) -> float:
    """The share of attempts a random pick among `total` replicas sends to the `dead` ones."""
    if total <= 0:
        raise ValueError(f"total replicas must be positive, got {total}")
    return dead / total
