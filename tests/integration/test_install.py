"""kiln as a user installs it: `pip install .` (not editable) into a fresh virtual
environment, from a copy of the checkout, then used from other directories.

- site-packages holds `kiln` (with its manifests, templates and the lab's data files) and
  nothing named `roles` or `lab`; the lab's simulators' dependencies are not installed;
- `kiln check` passes on the shipped manifests, from a directory that is not the checkout;
- `pyinfra --dry inventory/lab.py deploy/bringup.py` loads in a directory holding only the
  checkout's inventory/ and deploy/, so every import comes from the installed package. The
  lab it reads is a stand-in state file whose MAAS answers 503 (Retry-After: 0) to
  everything, so the preview cannot ask it and says so after its retries, without waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install <copy of the checkout>`; returns the venv."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    listed = run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    venv = work / "venv"
    made = run(sys.executable, "-m", "venv", venv, cwd=work)
    assert made.returncode == 0, made.stderr
    pip = run(venv / "bin/python", "-m", "pip", "install", "--quiet", str(source), cwd=work)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv


def site_packages(venv: Path) -> Path:
    [found] = venv.glob("lib/python3*/site-packages")
    return found


def test_site_packages_holds_kiln_and_its_data_only(installed: Path):
    site = site_packages(installed)
    assert (site / "kiln/__init__.py").is_file()
    assert not (site / "roles").exists() and not (site / "lab").exists()
    assert {p.name for p in (site / "kiln/firmware").glob("*.yaml")} >= {
        "hgx-h100-sxm.yaml", "lab.yaml"}
    assert (site / "kiln/templates/base/apt-pins.pref.j2").is_file()
    assert (site / "kiln/templates/kraken/agent/base.yaml.j2").is_file()
    assert (site / "kiln/lab/host-packages.txt").is_file()
    # The simulators' HTTP layer and the Redfish emulator come with kiln[lab] only.
    for module in ("flask", "sushy_tools"):
        probe = run(installed / "bin/python", "-c", f"import {module}", cwd=installed)
        assert probe.returncode != 0, f"{module} is installed without kiln[lab]"


def test_kiln_check_passes_on_the_shipped_manifests_from_anywhere(installed: Path,
                                                                  tmp_path: Path):
    manifests = sorted((site_packages(installed) / "kiln/firmware").glob("*.yaml"))
    result = run(installed / "bin/kiln", "check", *manifests,
                 ROOT / "inventory/prod.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == len(manifests) + 1
    where = run(installed / "bin/python", "-c", "import kiln; print(kiln.__file__)",
                cwd=tmp_path)
    assert where.stdout.startswith(str(site_packages(installed))), where.stdout


class Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(503)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_maas() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/MAAS/"
    server.shutdown()
    server.server_close()


def test_a_bringup_preview_loads_from_the_installed_package(installed: Path, tmp_path: Path,
                                                            unavailable_maas: str):
    deploys = tmp_path / "site"
    shutil.copytree(ROOT / "inventory", deploys / "inventory")
    shutil.copytree(ROOT / "deploy", deploys / "deploy")
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "state.json").write_text(json.dumps({
        "schema": 1, "lab_dir": str(lab), "ssh_key": str(lab / "id_ed25519"),
        "ssh_user": "root", "faults_file": None, "secrets_file": None, "tls_ca": None,
        "endpoints": {"maas": unavailable_maas},
        "network": {"bridge": "kilnbr0", "gateway": "127.0.0.1", "prefix": 24},
        "nodes": [{"name": "gpu-001", "role": "gpu", "index": 1, "address": "127.0.0.11",
                   "ssh_port": 22, "netns": "kiln-gpu-001", "state": "off",
                   "disk": "blank", "bmc": None}],
    }))
    env = {**os.environ, "KILN_LAB_DIR": str(lab), "KILN_MAAS_API_KEY": "a:b:c",
           "PATH": f"{installed / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = run(installed / "bin/pyinfra", "--dry", "inventory/lab.py", "deploy/bringup.py",
                 cwd=deploys, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert "Loading: deploy/bringup.py" in output, output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output, output
    assert "cannot ask MAAS whether it is deployed" in output, output
