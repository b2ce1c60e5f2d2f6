"""Where routes may reach: the platform's own cloud identity only when the operator allows it
and only towards the providers' hosts; private and loopback addresses only in networks the
operator listed; link-local (cloud metadata) never."""

from __future__ import annotations

import pytest

from tenant_runtime.gateway.egress import EgressPolicy, EgressRefused, check_route

CLOSED = EgressPolicy()
LOOPBACK_OK = EgressPolicy.parse(ambient_identity=False, private_networks=("127.0.0.0/8",))
AMBIENT = EgressPolicy.parse(ambient_identity=True, private_networks=())


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "http://10.1.2.3/v1",
    "http://192.168.1.10/v1", "http://[::1]:8000/v1", "http://100.64.0.1/v1",
    "http://0.0.0.0/v1", "http://[::ffff:127.0.0.1]/v1",
])
def test_private_and_loopback_addresses_are_refused_by_default(endpoint):
    with pytest.raises(EgressRefused, match="private or loopback"):
        check_route(CLOSED, provider="on-prem", endpoint=endpoint, has_credential=False)


def test_listed_networks_are_allowed_and_link_local_never():
    check_route(LOOPBACK_OK, provider="on-prem", endpoint="http://127.0.0.1:9/v1",
                has_credential=False)
    with pytest.raises(EgressRefused, match="private or loopback"):
        check_route(LOOPBACK_OK, provider="on-prem", endpoint="http://10.0.0.5/v1",
                    has_credential=False)
    everything = EgressPolicy.parse(ambient_identity=True,
                                    private_networks=("0.0.0.0/0", "::/0"))
    for metadata in ("http://169.254.169.254/latest", "http://[fe80::1]/"):
        with pytest.raises(EgressRefused, match="link-local"):
            check_route(everything, provider="on-prem", endpoint=metadata,
                        has_credential=False)


def test_the_platform_identity_is_lent_only_when_allowed_and_only_to_the_providers():
    for provider in ("azure-openai", "bedrock"):
        with pytest.raises(EgressRefused, match="needs a credential"):
            check_route(CLOSED, provider=provider, endpoint="https://x.openai.azure.com",
                        has_credential=False)
        with pytest.raises(EgressRefused, match="may only reach the provider's own hosts"):
            check_route(AMBIENT, provider=provider, endpoint="https://attacker.example",
                        has_credential=False)
    # with a credential of the tenant's own, the identity rule does not apply
    with pytest.raises(EgressRefused, match="private or loopback"):
        check_route(AMBIENT, provider="azure-openai", endpoint="http://127.0.0.1:1",
                    has_credential=True)


def test_a_host_that_does_not_resolve_is_refused():
    with pytest.raises(EgressRefused, match="does not resolve"):
        check_route(CLOSED, provider="on-prem", endpoint="http://no-such-host.invalid/v1",
                    has_credential=False)
