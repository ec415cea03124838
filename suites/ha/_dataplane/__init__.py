"""Helpers of the data-plane suites (test_ingress, test_dns, test_services, test_workloads).

- `kube`: a throw-away namespace per module with cleanup registered at creation and a dump before deletion when
  something failed, bounded waits, commands in a pod, pod logs.
- `workloads`: the echo backend (agnhost serve-hostname) spread over the workers, Services, the probe pod.
- `probes`: the in-cluster DNS and HTTP probe loops (a pod printing one line per attempt, read back as
  `kubeha.core.outage.Sample`s) and the HTTP(S) prober this machine runs against the ingress nodes.
- `facts`: what the tests derive their figures from: cluster DNS settings, node-monitor grace period, CIDRs.
- `tls`: a throw-away certificate authority and per-host serving certificates for the TLS controls.

The images are the project's own (built from public sources, never pulled): agnhost and the Debian tools image.
"""
