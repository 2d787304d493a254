"""kiln's UFM client against the lab's UFM simulator over HTTPS on loopback: typed
resources, basic and token authentication, TLS against the lab CA, retries, and errors that
name the endpoint and never a credential."""

from __future__ import annotations

import logging

import pytest
from ufm_served import ENV, PASSWORD, USER, Served, make_lab

from kiln.core.retry import RetryPolicy
from kiln.lab.bmc.static import free_port
from kiln.roles.ufm.client import UFMClient, server_root
from kiln.roles.ufm.errors import UFMAuthError, UFMError, UFMTLSError, UFMUnavailable
from kiln.roles.ufm.settings import client_for

FAST = RetryPolicy(attempts=3, first_delay=0.0)


@pytest.fixture
def ufm(tmp_path):
    served = Served(make_lab(tmp_path, gpu_nodes=2))
    yield served
    served.close()


def basic(ufm, **kwargs):
    return UFMClient(ufm.url, username=USER, password=PASSWORD, verify=ufm.ca, retry=FAST,
                     **kwargs)


def test_server_root_takes_the_ufm_address_or_its_api_root():
    assert server_root("https://ufm.example") == "https://ufm.example/"
    assert server_root("https://ufm.example/ufmRest/") == "https://ufm.example/"
    assert server_root("https://ufm.example:8443/ufmRestV3") == "https://ufm.example:8443/"
    with pytest.raises(UFMError, match="not an http"):
        server_root("ufm.example")


def test_reads_are_typed_resources(ufm):
    client = basic(ufm)
    assert client.version().startswith("6.")
    ports = client.ports()
    host = next(p for p in ports if p.is_host)
    assert host.up and host.active_speed == "NDR" and host.rate_gbps == 400.0
    peer = next(p for p in ports if p.name == host.peer)
    assert peer.system_name.startswith("leaf-rail") and not peer.is_host
    assert peer.label == "1/1" and peer.peer == host.name
    assert client.unhealthy_ports() == []
    assert client.events() == []
    assert client.partition("0x0a12") is None  # UFM answers {} for an unknown PKey
    management = client.partition("0x7fff")
    assert management is not None and len(management.members()) == 16


def test_wrong_credentials_fail_without_naming_them(ufm):
    client = UFMClient(ufm.url, username=USER, password="not-the-Pa55", verify=ufm.ca,
                       retry=FAST)
    with pytest.raises(UFMAuthError) as caught:
        client.ports()
    message = str(caught.value)
    assert f"UFM {ufm.url}: GET /ufmRest/resources/ports: HTTP 401" in message
    assert "not-the-Pa55" not in message and PASSWORD not in message
    assert ufm.requests[("GET", "/ufmRest/resources/ports")] == 1  # never retried


def test_tls_is_checked_against_the_ca_bundle(ufm, tmp_path, caplog):
    system_cas = UFMClient(ufm.url, username=USER, password=PASSWORD, retry=FAST)
    with pytest.raises(UFMTLSError, match="TLS certificate not trusted"):
        system_cas.version()
    data = ufm.host_data("gpu-001", tmp_path, verify_tls=False)
    warnings: list[str] = []
    client = client_for(data, env=ENV, warn=warnings.append)
    assert client.verify is False and client.version()
    assert warnings == [f"UFM {ufm.url}: TLS certificate verification is OFF (verify_tls: "
                        "false in the inventory); anyone on the path can read its credentials"]


def test_token_authentication_uses_the_v3_prefix(ufm, tmp_path):
    token = basic(ufm).request("POST", "app/tokens")["access_token"]
    client = client_for(ufm.host_data("gpu-001", tmp_path), env={"KILN_UFM_TOKEN": token})
    assert client.auth_kind == "token" and client.prefix == "ufmRestV3"
    assert len(client.ports()) > 0
    assert ufm.requests[("GET", "/ufmRestV3/resources/ports")] == 1
    basic(ufm)._session.post(f"{ufm.url}ufmRest/app/tokens/revoke",
                             files={"token": (None, token)}, verify=ufm.ca).raise_for_status()
    with pytest.raises(UFMAuthError, match="HTTP 401") as caught:
        client.ports()
    assert token not in str(caught.value)


def test_credentials_come_from_the_environment_or_say_where_to_put_them(ufm, tmp_path):
    data = ufm.host_data("gpu-001", tmp_path)
    assert client_for(data, env=ENV).auth_kind == "basic"
    with pytest.raises(UFMError, match="no credentials for 'ufm': set KILN_UFM_USERNAME, "
                                       "KILN_UFM_PASSWORD.*or KILN_UFM_TOKEN"):
        client_for(data, env={})
    with pytest.raises(UFMError, match="node gpu-009: host data has no kiln_ufm_server"):
        client_for({"kiln_node": "gpu-009"}, env=ENV)


def test_5xx_answers_are_retried_within_the_bound(ufm, caplog):
    sleeps: list[float] = []
    client = basic(ufm, sleep=sleeps.append)
    ufm.fail_next = [503, 502]
    with caplog.at_level(logging.WARNING, logger="kiln.retry"):
        assert client.version()
    assert len(sleeps) == 2
    ufm.fail_next = [500, 500, 500]
    with pytest.raises(UFMUnavailable, match=r"GET /ufmRest/app/ufm_version: no usable "
                                             r"answer after 3 attempts.*HTTP 500"):
        client.version()


def test_a_write_that_may_have_reached_ufm_is_not_sent_again(ufm):
    client = basic(ufm, sleep=lambda _: None)
    ufm.fail_next = [500]
    with pytest.raises(UFMUnavailable, match="not retried: the request may have reached UFM"):
        client.create_partition("0x0a12", "tenant_a")
    assert ufm.requests[("POST", "/ufmRest/resources/pkeys/add")] == 1
    ufm.fail_next = [503]  # UFM said it did not act: safe to send again
    client.create_partition("0x0a12", "tenant_a")
    assert ufm.requests[("POST", "/ufmRest/resources/pkeys/add")] == 3


def test_an_unreachable_ufm_is_retried_then_named():
    sleeps: list[float] = []
    url = f"https://127.0.0.1:{free_port()}/"
    client = UFMClient(url, username=USER, password=PASSWORD, retry=FAST, sleep=sleeps.append)
    with pytest.raises(UFMUnavailable, match=rf"UFM {url}: GET /ufmRest/resources/ports: no "
                                             r"usable answer after 3 attempts"):
        client.ports()
    assert len(sleeps) == 2
