"""Loads the kubeha pytest plugin and the report writers for everything under this repository."""

pytest_plugins = ["kubeha.plugin", "reports.pytest_plugin"]
