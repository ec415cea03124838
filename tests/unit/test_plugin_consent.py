"""Consent to inject faults is bound to one cluster's identity."""

from __future__ import annotations

import pytest

from kubeha.cluster.identity import ClusterIdentity
from kubeha.consent import ConsentError, ConsentSource, check_consent, consent_for, refusal, validate_uid

UID = "0b7f3c2e-1d2a-4c5b-9e8f-0123456789ab"
OTHER_UID = "11111111-2222-3333-4444-555555555555"
PROD = ClusterIdentity(api_url="https://prod.example:6443", kube_system_uid=UID, kubernetes_version="v1.34.3")
STAGING = ClusterIdentity(api_url="https://staging.example:6443", kube_system_uid=OTHER_UID, kubernetes_version="v1.33.1")


def test_refusal_shows_the_api_url_and_the_exact_flag() -> None:
    assert refusal(PROD) == (
        "refusing to inject faults into the cluster at https://prod.example:6443: it was not created by this suite "
        f"and no consent was given; if every node of this cluster may be disrupted, pass --allow-faults {UID}"
    )


def test_attached_cluster_without_flag_has_no_consent() -> None:
    assert consent_for(PROD, embedded=False, allow_faults=None) is None
    assert check_consent(None, PROD) == refusal(PROD)


def test_matching_flag_gives_consent() -> None:
    consent = consent_for(PROD, embedded=False, allow_faults=UID.upper())
    assert consent is not None
    assert consent.source is ConsentSource.FLAG
    assert check_consent(consent, PROD) is None


def test_flag_for_another_cluster_is_refused_with_the_right_uid() -> None:
    with pytest.raises(ConsentError) as raised:
        consent_for(PROD, embedded=False, allow_faults=OTHER_UID)
    message = str(raised.value)
    assert f"--allow-faults {OTHER_UID} was given" in message
    assert "https://prod.example:6443" in message
    assert f"pass --allow-faults {UID}" in message


def test_consent_does_not_follow_the_kubeconfig_to_another_cluster() -> None:
    consent = consent_for(PROD, embedded=False, allow_faults=UID)
    reason = check_consent(consent, STAGING)
    assert reason is not None
    assert f"consent was given for the cluster with kube-system UID {UID} at https://prod.example:6443" in reason
    assert f"pass --allow-faults {OTHER_UID}" in reason


def test_embedded_cluster_is_consented_implicitly() -> None:
    consent = consent_for(PROD, embedded=True, allow_faults=None)
    assert consent is not None and consent.source is ConsentSource.EMBEDDED
    assert check_consent(consent, PROD) is None
    assert check_consent(consent, STAGING) is not None


@pytest.mark.parametrize("value", ["", "yes", UID[:-1], UID + "0", "zzzzzzzz-2222-3333-4444-555555555555"])
def test_invalid_uids(value: str) -> None:
    with pytest.raises(ConsentError, match="not a UID"):
        validate_uid(value)
