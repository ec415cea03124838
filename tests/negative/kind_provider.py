"""pytest plugin the negative checks load into the suite runs they start (``-p tests.negative.kind_provider``).

The negative checks attach to the embedded kind cluster through ``--kubeconfig`` (so that the suite run never
creates, recreates or deletes it, whatever state the broken variant leaves it in) and give consent with
``--allow-faults``. This plugin then supplies the kind provider for that cluster, named by
``--negative-kind-cluster``, so that disruptive tests can act on its nodes as they do on the embedded cluster.
"""

from __future__ import annotations

import pytest

from kubeha.plugin import KubehaCluster
from kubeha.providers import ProviderKind, make_provider
from kubeha.providers.base import Provider

OPTION = "--negative-kind-cluster"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("kubeha").addoption(
        OPTION,
        metavar="NAME",
        default=None,
        help="act on the attached cluster's nodes through the kind provider of this kind cluster (negative checks)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_kubeha_make_provider(config: pytest.Config, cluster: KubehaCluster) -> Provider | None:
    name = config.getoption(OPTION)
    if not name:
        return None
    return make_provider(ProviderKind.KIND, kind_cluster=str(name))
