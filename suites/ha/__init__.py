"""The HA conformance suite: one test per control, each with a stable ID, a MUST statement and measured figures."""
