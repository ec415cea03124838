"""Probes that measure the cluster from outside while faults run: API availability, writes, leader Leases.

- `credentials`: the API endpoint and client credentials of one kubeconfig context (`KubeconfigCredentials`).
- `api`: `ApiProbe`, a new TCP + TLS connection per attempt at 10 Hz, through the load balancer and optionally to
  each control-plane node; also the one-connection HTTPS transport the other probes use.
- `writes`: `WriteRecorder`, steady writes with ok / failed / unknown outcomes and a check for lost writes.
- `leases`: `LeaseWatcher`, leader-election Lease holders and takeover times.
"""

from kubeha.probes.api import ApiProbe, ApiProbeResult, ErrorClass, ProbeTarget, TargetResult
from kubeha.probes.credentials import ApiEndpoint, CredentialsError, KubeconfigCredentials
from kubeha.probes.leases import DEFAULT_LEASES, HttpLeaseReader, LeaseObservation, LeaseRef, LeaseWatcher
from kubeha.probes.writes import (
    ConfigMapStore,
    WriteOutcome,
    WriteRecorder,
    WriteReport,
    WriteVerification,
)

__all__ = [
    "ApiEndpoint",
    "ApiProbe",
    "ApiProbeResult",
    "ConfigMapStore",
    "CredentialsError",
    "DEFAULT_LEASES",
    "ErrorClass",
    "HttpLeaseReader",
    "KubeconfigCredentials",
    "LeaseObservation",
    "LeaseRef",
    "LeaseWatcher",
    "ProbeTarget",
    "TargetResult",
    "WriteOutcome",
    "WriteRecorder",
    "WriteReport",
    "WriteVerification",
]
