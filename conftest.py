"""Loads the kubeha pytest plugin for everything under this repository."""

pytest_plugins = ["kubeha.plugin"]
