"""The lab's certificate authority, so clients check the simulators' certificates.

Redfish BMCs and UFM speak HTTPS in production; kiln verifies their certificates by default.
The lab does the same: a CA made once per lab directory (`<lab>/tls/ca.pem`, its key
`ca.key` 0600 beside it), and a certificate per service with the IP addresses it answers
on as subject alternative names. Clients are given `ca.pem` as their CA bundle; nothing in
the lab turns verification off. Made with the openssl command line.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

CA_DAYS = 3650
CERT_DAYS = 825


class TLSError(RuntimeError):
    pass


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise TLSError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def tls_dir(lab: Path) -> Path:
    return Path(lab) / "tls"


def ensure_ca(lab: Path) -> Path:
    """The lab CA's certificate (made on first use); its key never leaves `<lab>/tls/`."""
    directory = tls_dir(lab)
    ca_cert, ca_key = directory / "ca.pem", directory / "ca.key"
    if ca_cert.exists() and ca_key.exists():
        return ca_cert
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(ca_key))
    os.chmod(ca_key, 0o600)
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", str(CA_DAYS),
             "-subj", "/O=kiln lab/CN=kiln lab CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(ca_cert))
    return ca_cert


def issue_cert(lab: Path, name: str, ips: list[str]) -> tuple[Path, Path]:
    """A server certificate for `name` valid for `ips`, signed by the lab CA: (cert, key).

    Issued again on every call, so a changed address list never leaves a stale SAN.
    """
    if not ips:
        raise TLSError(f"certificate {name}: give at least one IP address")
    ca_cert = ensure_ca(lab)
    ca_key = ca_cert.with_name("ca.key")
    directory = tls_dir(lab)
    cert, key, csr = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr"))
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(key))
    os.chmod(key, 0o600)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/O=kiln lab/CN={name}", "-out", str(csr))
    san = ",".join(f"IP:{ip}" for ip in ips)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".ext") as ext:
        ext.write(
            f"subjectAltName={san}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        ext.flush()
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
                 # A random serial, not openssl's shared ca.srl: BMCs are issued in parallel.
                 "-set_serial", f"0x{secrets.randbits(63):x}", "-days", str(CERT_DAYS), "-sha256",
                 "-extfile", ext.name, "-out", str(cert))
    csr.unlink(missing_ok=True)
    return cert, key
