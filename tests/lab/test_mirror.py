"""The local file mirror on a running lab: `pyinfra -y inventory/lab.py deploy/mirror.py` for
real, then what nodes do with it.

The upstream is the lab's vendor repository (http://10.231.0.1:8081/, apt/ and os/); the
mirror runs on the service node (Debian's nginx); the TLS certificate is issued by the lab
CA for the service node's address; the upload credentials are random for this test.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import subprocess
from pathlib import Path

import pytest

from kiln.core.manifest import load_manifest
from kiln.lab.state import LabState
from kiln.lab.tls import issue_cert
from kiln.lab.vendor import build_repository, server
from kiln.roles.mirror.signing import init_key

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = ROOT / ".venv/bin/pyinfra"
MIRROR_ROOT = "/srv/kiln-mirror"
PINNED = "nccl-tests"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"


class Mirror:
    """What the tests share: the lab, where the mirror is, how to run the deploy."""

    def __init__(self, lab: LabState, labtools, state_dir: Path):
        self.lab = lab
        self.labtools = labtools
        self.lab_dir = Path(lab.lab_dir)
        self.service = next(node for node in lab.nodes if node.role == "service")
        self.gpu_nodes = [node for node in lab.nodes if node.role == "gpu"]
        self.address = self.service.address
        self.username = "kiln-upload"
        self.password = secrets.token_urlsafe(18)
        self.ca = self.lab_dir / "tls/ca.pem"
        cert, key = self.lab_dir / "tls/mirror-test.pem", self.lab_dir / "tls/mirror-test.key"
        if not (cert.exists() and key.exists()):
            cert, key = issue_cert(self.lab_dir, "mirror-test", [self.address])
        upstream_key = str(self.lab_dir / "vendor/keys/lab-archive.asc")
        self.data = {
            "kiln_mirror_state": str(state_dir),
            "kiln_mirror_tls_cert": str(cert),
            "kiln_mirror_tls_key": str(key),
            "kiln_mirror_ca": str(self.ca),
            "kiln_mirror_apt_upstream": [
                {"uri": "http://10.231.0.1:8081/apt", "suite": "kilnlab", "key": upstream_key},
                {"uri": "http://10.231.0.1:8081/os", "suite": "bookworm", "key": upstream_key},
            ],
            "kiln_mirror_firmware_upstream": "http://10.231.0.1:8081/firmware/",
            "kiln_mirror_base_status": str(self.lab_dir / "base/var/lib/dpkg/status"),
        }

    def deploy(self) -> subprocess.CompletedProcess[str]:
        args = [str(PYINFRA), "-y", "inventory/lab.py", "deploy/mirror.py"]
        for key, value in self.data.items():
            text = value if isinstance(value, str) else json.dumps(value)
            args += ["--data", f"{key}={text}"]
        env = {**os.environ, "KILN_MIRROR_USERNAME": self.username,
               "KILN_MIRROR_PASSWORD": self.password}
        result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env,
                                timeout=900)
        assert self.password not in result.stdout + result.stderr
        return result

    def ssh(self, node: str, command: str, check: bool = True) -> str:
        return self.labtools.ssh(self.lab, node, command, check=check)

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", "--cacert", str(self.ca), *args],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def mirror(lab, labtools, tmp_path_factory) -> Mirror:
    lab_dir = Path(lab.lab_dir)
    build_repository(lab_dir)
    server.start(lab_dir)
    state_dir = tmp_path_factory.mktemp("mirror-state")
    init_key(state_dir)  # the site's one-time `kiln mirror init-key`
    return Mirror(lab, labtools, state_dir)


@pytest.fixture(scope="module")
def first_run(mirror: Mirror) -> subprocess.CompletedProcess[str]:
    result = mirror.deploy()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result


def fetched_report(output: str) -> tuple[int, int]:
    for line in output.splitlines():
        if "mirror: fetched " in line:
            words = line.split("mirror: fetched ", 1)[1].split()
            return int(words[0]), int(words[2])
    raise AssertionError(f"no 'mirror: fetched' report in:\n{output[-4000:]}")


def test_first_run_fetches_the_pins_verified_and_signs(mirror: Mirror, first_run):
    output = first_run.stdout + first_run.stderr
    files, size = fetched_report(output)
    manifest = load_manifest(ROOT / "kiln/firmware/lab.yaml")
    blobs = [c.blob for c in manifest.firmware.values() if c.blob]
    assert files >= len(manifest.pinned_packages()) + len(blobs)
    assert size >= sum(blob.size for blob in blobs)
    listing = mirror.ssh(mirror.service.name, f"cd {MIRROR_ROOT}/firmware && sha256sum -c "
                         "--quiet SHA256SUMS && ls ../apt/pool/main .")
    for name in manifest.pinned_packages():
        assert f"\n{name}_" in f"\n{listing}", f"{name} not on the mirror"
    for blob in blobs:
        assert blob.file in listing
    # The pool holds what SHA256SUMS says; the signature is the state key's, the key is
    # served for people, and no private key is on the node.
    mirror.ssh(mirror.service.name, f"cd {MIRROR_ROOT}/apt/pool/main && sha256sum -c --quiet "
               "SHA256SUMS && test -s ../../dists/kiln/InRelease")
    secret_keys = mirror.ssh(mirror.service.name,
                             "find / -xdev -path /proc -prune -o -name 'private-keys-v1.d' "
                             "-print 2>/dev/null | head -5", check=False)
    assert secret_keys.strip() == ""
    served_key = mirror.curl(f"http://{mirror.address}/keys/kiln-mirror.asc").stdout
    assert served_key == (Path(mirror.data["kiln_mirror_state"]) / "mirror-key.asc").read_text()


def grand_total(output: str) -> dict[str, str]:
    """pyinfra's results table, last line: Hosts, Success (changed), Error, No Change."""
    line = next(line for line in output.splitlines() if line.strip().startswith("Grand total"))
    hosts, success, error, no_change = line.split()[-4:]
    return {"operations": hosts, "changed": success, "errors": error, "unchanged": no_change}


def test_second_run_fetches_nothing_and_changes_nothing(mirror: Mirror, first_run):
    first = grand_total(first_run.stdout + first_run.stderr)
    assert first["changed"] not in ("-", "0") and first["errors"] == "-"
    again = mirror.deploy()
    assert again.returncode == 0, again.stdout[-4000:]
    output = again.stdout + again.stderr
    assert fetched_report(output) == (0, 0)
    total = grand_total(output)
    assert total == {"operations": first["operations"], "changed": "-", "errors": "-",
                     "unchanged": first["operations"]}, output[-6000:]


def test_upload_with_auth_is_downloaded_whole_and_by_range_from_every_node(mirror: Mirror,
                                                                          first_run, tmp_path):
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "blob.bin").write_bytes(blob)
    url = f"https://{mirror.address}/files/tests/blob.bin"
    put = mirror.curl("-u", f"{mirror.username}:{mirror.password}", "-T",
                      str(tmp_path / "blob.bin"), "-o", "/dev/null", "-w", "%{http_code}", url)
    assert put.stdout in ("201", "204"), put.stdout + put.stderr
    whole = hashlib.sha256(blob).hexdigest()
    part = hashlib.sha256(blob[1_000_000:2_000_000]).hexdigest()
    tail = hashlib.sha256(blob[-17:]).hexdigest()
    plain = f"http://{mirror.address}/files/tests/blob.bin"
    for node in mirror.lab.nodes:
        out = mirror.ssh(node.name, (
            f"curl -fsS {plain} | sha256sum; "
            f"curl -fsS -r 1000000-1999999 -o /tmp/part -w '%{{http_code}}\\n' {plain}; "
            "sha256sum < /tmp/part; "
            f"curl -fsS -H 'Range: bytes=-17' {plain} | sha256sum; "
            f"curl -fsS --cacert /etc/kiln/mirror-ca.pem {url} | sha256sum"
        )).split()
        assert out == [whole, "-", "206", part, "-", tail, "-", whole, "-"], node.name


def test_uploads_are_refused_without_credentials_and_outside_upload_trees(mirror: Mirror,
                                                                         first_run, tmp_path):
    (tmp_path / "x").write_bytes(b"not allowed")

    def status(*args: str) -> str:
        return mirror.curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout

    https = f"https://{mirror.address}"
    assert status("-T", str(tmp_path / "x"), f"{https}/files/x") == "401"
    assert status("-u", f"{mirror.username}:wrong", "-T", str(tmp_path / "x"),
                  f"{https}/files/x") == "401"
    assert status("-X", "DELETE", f"{https}/files/tests/blob.bin") == "401"
    # no credentials in clear text: plain HTTP takes no writes at all
    assert status("-u", f"{mirror.username}:{mirror.password}", "-T", str(tmp_path / "x"),
                  f"http://{mirror.address}/files/x") == "403"
    # kiln's trees are written by deploy/mirror.py only
    assert status("-u", f"{mirror.username}:{mirror.password}", "-T", str(tmp_path / "x"),
                  f"{https}/firmware/lab-bios-1.6.2.bin") == "405"
    assert status(f"{https}/files/x") == "404"


def test_apt_installs_a_pin_from_the_mirror_with_the_vendor_repository_cut(mirror: Mirror,
                                                                           first_run):
    node = mirror.gpu_nodes[0]
    version = load_manifest(ROOT / "kiln/firmware/lab.yaml").pinned_packages()[PINNED]
    # The cut: a policy-routing rule in the node's own network namespace refuses TCP to the
    # vendor repository (10.231.0.1:8081); everything else, the mirror and SSH, still works.
    rule = ["to", "10.231.0.1/32", "ipproto", "tcp", "dport", "8081", "prohibit"]
    subprocess.run(["ip", "netns", "exec", node.netns, "ip", "rule", "add", *rule], check=True)
    try:
        probe = mirror.ssh(node.name, "curl -sS -m 5 http://10.231.0.1:8081/ 2>&1; echo rc=$?",
                           check=False)
        assert "rc=0" not in probe
        mirror.ssh(node.name, f"{APT} update >/tmp/apt-update.log 2>&1 || true; "
                   "rm -f /var/cache/apt/archives/*.deb")
        installed = mirror.ssh(node.name, f"{APT} install {PINNED}={shlex.quote(version)} 2>&1")
        gets = [line for line in installed.splitlines() if line.startswith("Get:")]
        assert gets and all(f"http://{mirror.address}/apt kiln/main" in line for line in gets), \
            installed
        assert mirror.ssh(node.name, f"dpkg-query -W -f '${{Version}}' {PINNED}") == version
    finally:
        subprocess.run(["ip", "netns", "exec", node.netns, "ip", "rule", "del", *rule],
                       check=False)
        mirror.ssh(node.name, f"{APT} purge {PINNED} libnccl2 >/dev/null 2>&1", check=False)


def test_a_corrupted_blob_is_refused_by_its_sha256_and_the_next_run_repairs_it(mirror: Mirror,
                                                                               first_run):
    manifest = load_manifest(ROOT / "kiln/firmware/lab.yaml")
    blob = manifest.firmware["bios"].blob
    path = f"{MIRROR_ROOT}/firmware/{blob.file}"
    # Flip one byte in place, as a bad disk would.
    mirror.ssh(mirror.service.name, "python3 -c \"import sys; f=open(sys.argv[1],'r+b'); "
               "f.seek(4096); b=f.read(1); f.seek(4096); f.write(bytes([b[0]^255]))\" " + path)
    client = mirror.gpu_nodes[-1].name
    url = f"http://{mirror.address}/firmware/{blob.file}"
    for digest_args in (f"--sha256 {blob.sha256} --size {blob.size}", ""):
        refused = mirror.ssh(client, f"kiln-mirror fetch {digest_args} {url} /tmp/bios.bin "
                             "2>&1; echo rc=$?; test -e /tmp/bios.bin && echo DEST-EXISTS",
                             check=False)
        assert f"{blob.file}: sha256 mismatch (expected {blob.sha256}" in refused, refused
        assert "rc=2" in refused and "DEST-EXISTS" not in refused
    repaired = mirror.deploy()
    assert repaired.returncode == 0, repaired.stdout[-4000:]
    assert fetched_report(repaired.stdout + repaired.stderr) == (1, blob.size)
    ok = mirror.ssh(client, f"kiln-mirror fetch --sha256 {blob.sha256} {url} /tmp/bios.bin && "
                    "sha256sum /tmp/bios.bin")
    assert blob.sha256 in ok
