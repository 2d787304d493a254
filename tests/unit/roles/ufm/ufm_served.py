"""The lab's UFM simulator served in this process over HTTPS on loopback, for the ufm
role's tests: a lab directory with real hwsim hardware, a certificate from the lab CA, and
a WSGI wrapper that counts the requests the simulator receives (and can answer some with
a 5xx first, to exercise retries). Never a mock of the client: kiln's client talks real
HTTP(S) to the simulator's real Flask app."""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from kiln.lab.hwsim import lab_hooks
from kiln.lab.tls import issue_cert
from kiln.lab.ufm_sim.app import create_app

USER, PASSWORD = "admin", "ufm-test-Pa55word"


def make_lab(root: Path, gpu_nodes: int) -> Path:
    for index in range(1, gpu_nodes + 1):
        lab_hooks.prepare_node_hardware(root, f"gpu-{index:03d}", index, "gpu", None)
    return root


class Served:
    def __init__(self, lab: Path):
        self.lab = lab
        self.app = create_app(lab, USER, PASSWORD)
        self.simulator = self.app.config["UFM_SIMULATOR"]
        self.requests: Counter[tuple[str, str]] = Counter()
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        self._lock = threading.Lock()
        cert, key = issue_cert(lab, "ufm", ["127.0.0.1"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                  ssl_context=context)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.server.server_port}/"
        self.ca = str(lab / "tls" / "ca.pem")
        self.simulator.fabric()  # the first look: the baseline events are measured from

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self._lock:
            self.requests[(environ["REQUEST_METHOD"], environ["PATH_INFO"])] += 1
            status = self.fail_next.pop(0) if self.fail_next else None
        if status is not None:
            start_response(f"{status} Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "busy"}']
        return self.app(environ, start_response)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()

    def writes(self) -> int:
        return sum(n for (method, _), n in self.requests.items() if method != "GET")

    def host_data(self, node: str, tmp: Path, **ufm: Any) -> dict[str, Any]:
        return {
            "kiln_node": node,
            "kiln_sku": "lab",
            "kiln_ufm_server": {"url": self.url, "ca_bundle": self.ca, **ufm},
            "kiln_ledger": str(tmp / "kiln.db"),
        }

    def hca_ports(self, node: str) -> list[tuple[str, str]]:
        profile = _profile(self.lab, node)
        return [(h["name"], h["ports"][0]["port_guid"]) for h in profile["hcas"]]

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()


def _profile(lab: Path, node: str) -> dict[str, Any]:
    import json

    return json.loads((lab / "hw" / node / "profile.json").read_text())


ENV = {"KILN_UFM_USERNAME": USER, "KILN_UFM_PASSWORD": PASSWORD}


@contextmanager
def served_lab(root: Path, monkeypatch: Any, gpu_nodes: int) -> Iterator[Served]:
    """A lab of `gpu_nodes` under `root` with its UFM simulator served, and the UFM
    credentials in the environment, for the length of a test."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    served = Served(make_lab(root, gpu_nodes=gpu_nodes))
    try:
        yield served
    finally:
        served.close()
