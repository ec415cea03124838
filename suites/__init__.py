"""Conformance suites built on the kubeha framework."""
