"""The lab's shared pieces for its simulated services: credentials, CA, netboot, processes."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from kiln.core.secrets import lookup
from kiln.lab import netboot, services
from kiln.lab.credentials import ensure_lab_secrets, read_lab_secrets
from kiln.lab.state import LabState, StateError, parse_state, plan_nodes
from kiln.lab.tls import ensure_ca, issue_cert


def test_lab_credentials_are_a_0600_kiln_secrets_file(tmp_path):
    path = ensure_lab_secrets(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    found = lookup("bmc", ("username", "password"), env={}, secrets_file=path)
    assert found["username"].reveal() == read_lab_secrets(tmp_path)["bmc"]["username"]
    consumer, token, secret = lookup("maas", ("api_key",), env={}, secrets_file=path)[
        "api_key"
    ].reveal().split(":")
    assert (len(consumer), len(token), len(secret)) == (18, 18, 32)
    # IPMI 2.0 limits: 16-byte user names, 20-byte passwords.
    bmc = read_lab_secrets(tmp_path)["bmc"]
    assert len(bmc["username"]) <= 16 and len(bmc["password"]) <= 20


def test_each_up_makes_new_credentials(tmp_path):
    first = read_lab_secrets(ensure_lab_secrets(tmp_path).parent)
    second = read_lab_secrets(ensure_lab_secrets(tmp_path).parent)
    assert first["bmc"]["password"] != second["bmc"]["password"]


def _serve_tls(cert, key):
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):  # noqa: ANN002
            pass

    server = HTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_lab_certificate_verifies_against_the_lab_ca_only(tmp_path):
    cert, key = issue_cert(tmp_path, "svc", ["127.0.0.1"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = _serve_tls(cert, key)
    port = server.server_address[1]
    try:
        trusting = ssl.create_default_context(cafile=str(ensure_ca(tmp_path)))
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.0 200")
        # Another lab's CA (or the system store) does not trust it.
        other = ssl.create_default_context(cafile=str(ensure_ca(tmp_path / "other")))
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                other.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        server.shutdown()


def test_a_certificate_is_only_good_for_its_addresses(tmp_path):
    cert, _ = issue_cert(tmp_path, "bmc-x", ["10.231.1.11"])
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:10.231.1.11" in text
    assert "CA:FALSE" in text


def test_netboot_request_is_consumed_and_result_recorded(tmp_path):
    netboot.request(tmp_path, "gpu-001", {"action": "deploy", "ssh_keys": ["ssh-ed25519 AAA k"],
                                          "osystem": "debian", "distro_series": "bookworm"})
    assert netboot.pending(tmp_path, "gpu-001")["osystem"] == "debian"
    netboot.cancel(tmp_path, "gpu-001")
    assert netboot.pending(tmp_path, "gpu-001") is None
    netboot.record_result(tmp_path, "gpu-001", "deploy", False, error="no boot")
    assert netboot.result(tmp_path, "gpu-001")["status"] == "failed"
    # A new request clears the last result: MAAS reads the outcome of *this* boot.
    netboot.request(tmp_path, "gpu-001", {"action": "commission"})
    assert netboot.result(tmp_path, "gpu-001") is None


@pytest.mark.parametrize(
    "action, message",
    [({"action": "rescue"}, "not one of"), ({"action": "deploy", "ssh_keys": "k"}, "ssh_keys")],
)
def test_a_bad_netboot_request_names_the_node(tmp_path, action, message):
    with pytest.raises(netboot.NetbootError, match=f"gpu-007.*{message}"):
        netboot.request(tmp_path, "gpu-007", action)


def test_commissioning_reports_inventory_not_faults():
    from kiln.lab.hwsim.profile import generate_profile

    summary = netboot.hardware_summary(generate_profile("gpu-001", 1))
    assert len(summary["gpus"]) == 8 and len(summary["hcas"]) == 8
    assert summary["interfaces"][0]["mac_address"].startswith("3c:ec:ef:")
    assert summary["cpu_count"] > 0 and summary["memory"] > 0


def test_state_round_trips_disk_and_bmc():
    nodes = plan_nodes(2, 1)
    assert [n.bmc["protocol"] for n in nodes] == ["redfish", "redfish", "ipmi"]
    assert nodes[0].bmc == {"protocol": "redfish", "address": "10.231.1.11", "port": 443}
    nodes[1].disk = "blank"
    state = LabState(lab_dir="/x", ssh_key="/x/k", nodes=nodes, secrets_file="/x/secrets.yaml")
    again = parse_state(state.to_json())
    assert again.nodes == nodes and again.secrets_file == "/x/secrets.yaml"
    assert "password" not in state.to_json()


def test_state_rejects_an_unknown_disk():
    state = LabState(lab_dir="/x", ssh_key="/x/k", nodes=plan_nodes(1, 0))
    text = state.to_json().replace('"installed"', '"wiped"')
    with pytest.raises(StateError, match="gpu-001: disk 'wiped'"):
        parse_state(text)


def test_a_service_process_is_started_found_and_stopped(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    pid = services.start(tmp_path, "web", argv, port=("127.0.0.1", port))
    try:
        assert services.running(tmp_path, "web")
        assert services.start(tmp_path, "web", argv) == pid  # already running: no second one
    finally:
        services.stop_all(tmp_path)
    assert not services.running(tmp_path, "web")
    assert not services.running_any(tmp_path)


def test_a_service_that_dies_at_start_is_reported_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"]
    with pytest.raises(services.ServiceError, match="(?s)web exited.*bad config"):
        services.start(tmp_path, "web", argv, port=("127.0.0.1", 9), timeout=5)
