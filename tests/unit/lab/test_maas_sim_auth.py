"""OAuth1 PLAINTEXT as MAAS checks it: what it accepts and how it refuses, over HTTP."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from test_maas_sim_harness import SimHarness, build

from kiln.lab.maas_sim.auth import TIMESTAMP_THRESHOLD, ApiKey, AuthError, OAuthChecker

MACHINES = "/MAAS/api/2.0/machines/"


@pytest.fixture
def sim(tmp_path) -> SimHarness:
    return build(tmp_path, gpu=1, service=0)


def header(consumer: str, token: str, secret: str, *, nonce: str | None = None,
           timestamp: str | None = None, method: str = "PLAINTEXT") -> str:
    signature = quote("&" + quote(secret, safe="~"), safe="~")
    fields = {
        "oauth_consumer_key": consumer,
        "oauth_token": token,
        "oauth_signature_method": method,
        "oauth_signature": signature,
        "oauth_nonce": nonce or str(time.time_ns()),
        "oauth_timestamp": timestamp or str(int(time.time())),
        "oauth_version": "1.0",
    }
    return "OAuth " + ", ".join(f'{k}="{v}"' for k, v in fields.items())


def key_parts(sim: SimHarness) -> tuple[str, str, str]:
    consumer, token, secret = sim.api_key.split(":")
    return consumer, token, secret


def get(sim: SimHarness, authorization: str | None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    return sim.client.http.get(MACHINES, headers=headers)


def test_a_correct_plaintext_signature_is_accepted(sim):
    response = get(sim, header(*key_parts(sim)))
    assert response.status_code == 200
    assert [m["hostname"] for m in response.get_json()] == ["gpu-001"]


def test_no_credentials_is_piston_challenge(sim):
    response = get(sim, None)
    assert response.status_code == 401
    assert response.get_data(as_text=True) == "Forbidden"
    assert response.headers["WWW-Authenticate"] == 'OAuth realm="OAuth"'
    assert get(sim, "Basic YWRtaW46YWRtaW4=").status_code == 401


def test_wrong_consumer_key_is_invalid_api_key(sim):
    _, token, secret = key_parts(sim)
    response = get(sim, header("someoneelse", token, secret))
    assert response.status_code == 401
    assert response.get_data(as_text=True) == "Authorization Error: Invalid API key."


def test_wrong_token_and_wrong_secret_are_refused_without_echoing_them(sim):
    consumer, token, secret = key_parts(sim)
    bad_token = get(sim, header(consumer, "X" * 18, secret))
    assert (bad_token.status_code, bad_token.get_data(as_text=True)) == (
        401, "Authorization Error: 'Invalid access token.'")
    bad_secret = get(sim, header(consumer, token, "not-the-secret"))
    assert (bad_secret.status_code, bad_secret.get_data(as_text=True)) == (
        401, "Authorization Error: 'Invalid signature.'")
    for response in (bad_token, bad_secret):
        assert secret not in response.get_data(as_text=True)
        assert token not in response.get_data(as_text=True)


def test_a_replayed_nonce_is_refused(sim):
    signed = header(*key_parts(sim), nonce="12345678")
    assert get(sim, signed).status_code == 200
    replay = get(sim, signed)
    assert replay.status_code == 401
    assert replay.get_data(as_text=True) == (
        "Authorization Error: 'Nonce already used: 12345678'")


def test_an_old_timestamp_is_refused(sim):
    old = str(int(time.time()) - TIMESTAMP_THRESHOLD - 60)
    response = get(sim, header(*key_parts(sim), timestamp=old))
    assert response.status_code == 401
    assert "Expired timestamp: given " + old in response.get_data(as_text=True)


def test_a_timestamp_that_is_not_a_number_is_400(sim):
    response = get(sim, header(*key_parts(sim), timestamp="yesterday"))
    assert response.status_code == 400
    assert "oauth_timestamp has an unexpected type" in response.get_data(as_text=True)


def test_only_plaintext_is_taken(sim):
    response = get(sim, header(*key_parts(sim), method="HMAC-SHA1"))
    assert response.status_code == 401
    assert "Signature method HMAC-SHA1 not supported" in response.get_data(as_text=True)


def test_every_authenticated_endpoint_checks(sim):
    system_id = sim.client.get("machines/").get_json()[0]["system_id"]
    for method, path in (("GET", f"machines/{system_id}/"), ("POST", f"machines/{system_id}/"),
                         ("GET", "tags/"), ("POST", "tags/"), ("GET", "tags/x/")):
        response = sim.client.http.open(f"/MAAS/api/2.0/{path}", method=method,
                                        query_string={"op": "commission"} if method == "POST"
                                        and "machines" in path else {})
        assert response.status_code == 401, (method, path)
    machine = sim.client.machine(system_id)
    assert machine["status_name"] == "New"  # the unauthenticated commission did nothing


def test_checker_parses_percent_encoded_secrets():
    key = ApiKey("ck", "tk", "s&c%x")
    checker = OAuthChecker(key)
    checker.check(header("ck", "tk", "s&c%x", nonce="1"))
    with pytest.raises(AuthError):
        checker.check(header("ck", "tk", "s&c", nonce="2"))


def test_api_key_shape_is_checked():
    with pytest.raises(ValueError, match="secrets.yaml: maas.api_key is not consumer_key"):
        ApiKey.parse("only:two", "secrets.yaml")
