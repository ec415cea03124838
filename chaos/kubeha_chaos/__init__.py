"""chaostoolkit activities for kubeha: faults within the cluster's fault budget, journaled so they are always undone.

- `actions`: stop_nodes, kill_nodes, start_nodes, stop_component, start_component, isolate_node, heal_node,
  restore_all, wait_for_steady_state;
- `probes`: api_available, nodes_ready, etcd_members_healthy, api_outage_during, api_write_succeeds.

Experiments using them are in ``chaos/experiments/``. The machinery lives in `engine` (registry of held faults,
injection and restore), `budget` (claims, refusals, the per-cluster coordinator), `targets` (node selectors) and
`session` (arguments, consent, API reads).
"""
