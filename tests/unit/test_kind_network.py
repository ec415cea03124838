"""The node network's pure helpers: subnets read from `docker network inspect`, kind's environment."""

from __future__ import annotations

import ipaddress
import os

from fixtures.kind.network import CANDIDATE_SUBNETS, KIND_NETWORK_VARIABLE, kind_env, network_subnets


def test_subnets_from_an_inspect_document() -> None:
    document = {"IPAM": {"Driver": "default", "Config": [{"Subnet": "172.30.0.0/24"},
                                                         {"Subnet": "fc00:f853:ccd:e793::/64", "Gateway": "x"}]}}
    assert network_subnets(document) == ("172.30.0.0/24", "fc00:f853:ccd:e793::/64")
    assert network_subnets({"IPAM": {"Config": None}}) == ()
    assert network_subnets({}) == ()


def test_kind_env_names_the_network_and_leaves_this_process_alone() -> None:
    before = dict(os.environ)
    env = kind_env("kubeha", {"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", KIND_NETWORK_VARIABLE: "kubeha"}
    assert dict(os.environ) == before
    assert kind_env("kubeha")[KIND_NETWORK_VARIABLE] == "kubeha"


def test_candidate_subnets_avoid_the_cluster_ranges() -> None:
    cluster_ranges = [ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("10.96.0.0/12")]
    for candidate in CANDIDATE_SUBNETS:
        network = ipaddress.ip_network(candidate)
        assert not any(network.overlaps(r) for r in cluster_ranges), candidate
