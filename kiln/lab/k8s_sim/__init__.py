"""Kubernetes API simulator: the Node resource of a Kubernetes API server, for kiln's
`kubernetes` pool backend (kiln.roles.pool.kubernetes).

Kubernetes cannot run where kiln's tests run, so they talk, through the official
`kubernetes` Python client and a kubeconfig, to this simulator of the part of the API
server the backend uses, faithful to the real one (k8s.io/apiserver's handlers, the core/v1
Node type, the API reference):

    GET   /version, /api                       discovery
    GET   /api/v1/nodes                        NodeList; ?labelSelector= (k=v, k!=v, k, !k)
    GET   /api/v1/nodes/{name}                 a Node; 404 with a Status (reason NotFound)
    PATCH /api/v1/nodes/{name}                 strategic-merge-patch+json, merge-patch+json,
                                               json-patch+json as the server applies each
                                               (kiln.lab.k8s_sim.patch); another type: 415
    PUT   /api/v1/nodes/{name}                 a whole Node: metadata.resourceVersion must
                                               be the stored one (409 Conflict), and given
                                               (422 Invalid)

A write is stored the way GuaranteedUpdate stores it: a metadata.resourceVersion the
written object carries (a PUT's, or one a patch sets) is a precondition, 409 Conflict when
the node changed since; a write that changes nothing is not stored and keeps the node's
resourceVersion; status, uid and creationTimestamp are the server's. Labels, annotations and
taints are validated as ValidateNodeUpdate does (qualified names, label-value syntax, taint
effects, one taint per key and effect): 422 Invalid with the causes. Every error is a
`Status` object (kind Status, apiVersion v1, status Failure, message, reason, details, code).
Every request needs `Authorization: Bearer <token>`, else 401 Unauthorized, and is recorded
(Cluster.seen) so a test can count what a client sent.

Not simulated: every other resource and verb (create, delete, watch, the status
subresource), server-side apply, strategic merge directives ($patch, $retainKeys, ...),
set-based label selectors, field selectors, RBAC (any valid token may do everything),
admission (the NodeRestriction plugin), the node lifecycle controller (a cordoned node gets
no node.kubernetes.io/unschedulable taint here unless a test puts it there).

    cluster = Cluster(token="...")
    cluster.add(node_object("gpu-001"))
    with serve(cluster, tmp_path) as sim:   # HTTPS on 127.0.0.1, a throwaway CA
        sim.kubeconfig                       # a kubeconfig file for the official client
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from werkzeug.serving import WSGIRequestHandler, make_server

from kiln.lab.k8s_sim.api import ApiError, Cluster, Seen, create_app, node_object

__all__ = ["ApiError", "Cluster", "Running", "Seen", "node_object", "serve"]

CONTEXT = "kiln-sim"


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass(frozen=True)
class Running:
    url: str
    kubeconfig: Path
    context: str
    ca: Path


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (the kubeconfig trusts it)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver (simulator)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "apiserver.pem", directory / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def write_kubeconfig(path: Path, url: str, token: str, ca: Path,
                     context: str = CONTEXT) -> Path:
    """A kubeconfig as `kubectl config` writes one: a cluster, a user with a bearer token,
    a context joining them, the current context set."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": context, "cluster": {"server": url,
                                                   "certificate-authority": str(ca)}}],
        "users": [{"name": f"{context}-admin", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context,
                                                   "user": f"{context}-admin"}}],
        "current-context": context,
    }))
    return path


@contextmanager
def serve(cluster: Cluster, directory: Path) -> Iterator[Running]:
    """Serve `cluster` over HTTPS on a free port of 127.0.0.1 in a thread; a kubeconfig for
    it in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = _self_signed(directory)
    server = make_server("127.0.0.1", 0, create_app(cluster), threaded=True,
                         ssl_context=(str(cert), str(key)), request_handler=_Quiet)
    url = f"https://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="k8s-sim", daemon=True)
    thread.start()
    try:
        yield Running(url, write_kubeconfig(directory / "kubeconfig", url, cluster.token,
                                            cert), CONTEXT, cert)
    finally:
        server.shutdown()
        thread.join(timeout=10)
