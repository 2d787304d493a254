"""roles/kraken on the lab, and the pull path a node uses, exercised with stand-ins.

Kraken's binaries and a container engine cannot run in the lab (no Kraken image, no dockerd
or containerd in a network-namespace node), so the lab inventory does not activate Kraken:
the role writes every component's configs and units and the engines' registry-mirror
settings, and starts nothing. What is run for real is the pull path: a registry v2 client
(skopeo) on each GPU node pulls an image through the address the agent has on that node.

Stand-ins, named as such: on each GPU node Debian's `docker-registry` (CNCF distribution)
listens at 127.0.0.1:16000, the agent's address, as a pull-through cache (`proxy:
remoteurl:`) of the backend registry, as the agent fetches from the P2P network on the
node's behalf. The backend registry Kraken's origin and build-index read from is itself a
`docker-registry` on the service node (port 5000; lab/inventory.py names it). The image is
built with umoci on the service node (one file layer) and pushed there with skopeo. skopeo
on the GPU nodes finds the agent through the registries.conf.d drop-in the role wrote.

    pyinfra -y inventory/lab.py <tmp>/kraken_deploy.py
"""

from __future__ import annotations

import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kiln.lab.inventory import LAB_REGISTRY_PORT
from kiln.lab.tls import issue_cert
from kiln.lab.vendor import build_repository, server
from kiln.roles.kraken.configs import load_config
from kiln.roles.kraken.settings import SERVICE_COMPONENTS
from kiln.roles.kraken.structure import differences

pytestmark = pytest.mark.lab

SPECS = Path(__file__).resolve().parents[1] / "fixtures/specs/kraken"

APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"
PACKAGES = "docker-registry skopeo"
IMAGE = "kiln/standin:1"
PAYLOAD = "kiln stand-in layer: pulled through the agent's address\n"
# The file out of the layer, read as a stream up to that member: GNU tar and Python's
# tarfile both list the member of the layer umoci 0.4.7's `insert` writes, then report an
# unexpected end of the archive after it.
READ_LAYER_FILE = """import sys, tarfile
with open(sys.argv[1], "rb") as blob:
    layer = tarfile.open(fileobj=blob, mode="r|gz")
    for member in layer:
        if member.name.lstrip("./") == "kiln/standin.txt":
            sys.stdout.write(layer.extractfile(member).read().decode())
            break
"""
STANDIN_CACHE = "/var/lib/docker-registry/docker/registry/v2/repositories/kiln/standin"


def registry_config(listen: str, remote: str | None) -> str:
    """docker-registry's config.yml; with `remote`, a pull-through cache of it."""
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": "/var/lib/docker-registry"},
                    "delete": {"enabled": True}},
        "http": {"addr": listen},
    }
    if remote:
        config["proxy"] = {"remoteurl": remote}
    return yaml.safe_dump(config)


class Kraken:
    def __init__(self, lab, labtools, work: Path):
        self.lab = lab
        self.labtools = labtools
        self.work = work
        self.service = next(node for node in lab.nodes if node.role == "service")
        self.gpu_nodes = [node for node in lab.nodes if node.role == "gpu"]
        self.registry = f"{self.service.address}:{LAB_REGISTRY_PORT}"

    def ssh(self, node: str, command: str, check: bool = True) -> str:
        return self.labtools.ssh(self.lab, node, command, check=check)

    def on_gpu_nodes(self, command: str) -> dict[str, str]:
        with ThreadPoolExecutor(max_workers=len(self.gpu_nodes)) as pool:
            results = pool.map(lambda node: (node.name, self.ssh(node.name, command)),
                               self.gpu_nodes)
            return dict(results)

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        deploy = self.work / "kraken_deploy.py"
        deploy.write_text("from kiln.roles.kraken import kraken\n\nkraken()\n")
        return subprocess.run(
            [str(self.labtools.bin / "pyinfra"), "-y", "inventory/lab.py", str(deploy), *args],
            cwd=self.labtools.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=600)


def install_registry(kraken: Kraken, node: str, listen: str, remote: str | None) -> None:
    config = registry_config(listen, remote)
    kraken.ssh(node, f"{APT} update >/dev/null && {APT} install {PACKAGES} >/tmp/standin.log "
                     f"2>&1 && printf %s {shlex.quote(config)} > /etc/docker/registry/config.yml"
                     " && systemctl restart docker-registry && for i in $(seq 50); do "
                     f"curl -fsS -o /dev/null http://{listen}/v2/ && exit 0; sleep 0.2; done; "
                     "exit 1")


@pytest.fixture(scope="module")
def kraken(lab, labtools, tmp_path_factory):
    lab_dir = Path(lab.lab_dir)
    build_repository(lab_dir)
    server.start(lab_dir)
    kraken = Kraken(lab, labtools, tmp_path_factory.mktemp("kraken"))
    yield kraken
    cleanup = (f"systemctl stop docker-registry; {APT} purge {PACKAGES} umoci >/dev/null 2>&1;"
               " rm -rf /etc/kraken /var/cache/kraken /var/log/kraken /var/lib/docker-registry"
               " /var/lib/kiln-kraken"
               " /etc/systemd/system/kraken-*.service /etc/docker/daemon.json /etc/docker/registry"
               " /etc/containers/registries.conf.d/50-kiln-kraken.conf /tmp/standin* /tmp/pulled*")
    for node in lab.nodes:
        kraken.ssh(node.name, cleanup, check=False)


# What the NVIDIA container toolkit leaves in daemon.json on a GPU node: kept by kiln.
TOOLKIT_DAEMON_JSON = {"default-runtime": "nvidia",
                       "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}


@pytest.fixture(scope="module")
def deployed(kraken: Kraken) -> subprocess.CompletedProcess[str]:
    kraken.ssh(kraken.gpu_nodes[0].name, "mkdir -p /etc/docker && printf %s "
               f"{shlex.quote(json.dumps(TOOLKIT_DAEMON_JSON))} > /etc/docker/daemon.json")
    result = kraken.deploy()
    assert result.returncode == 0, result.stdout[-6000:]
    return result


def node_config(kraken: Kraken, node: str, component: str) -> dict:
    """The config as the component would read it from the node, checked against the shape
    of Kraken's reference config for that component."""
    files = {name: kraken.ssh(node, f"cat /etc/kraken/{component}/{name}")
             for name in ("base.yaml", "kiln.yaml")}
    config = load_config(files)
    reference = load_config({name: (SPECS / component / name).read_text()
                             for name in ("base.yaml", "devcluster.yaml")}, "devcluster.yaml")
    assert differences(config, reference) == [], (node, component)
    return config


def test_service_node_gets_four_components_configs_and_units_not_started(kraken, deployed):
    service = kraken.service
    assert "kiln_kraken_activate is false" in deployed.stdout
    for component in SERVICE_COMPONENTS:
        config = node_config(kraken, service.name, component)
        assert config["tls"]["server"]["disabled"] is True
        assert config["zap"]["outputPaths"][-1] == \
            f"/var/log/kraken/kraken-{component}/stdout.log"
        unit = kraken.ssh(service.name, f"cat /etc/systemd/system/kraken-{component}.service")
        assert f"kraken-{component}:lab /usr/bin/kraken-{component} " in unit
        state = kraken.ssh(service.name, f"systemctl is-active kraken-{component}", check=False)
        assert state.strip() != "active"
    origin = node_config(kraken, service.name, "origin")
    assert origin["cluster"]["static"] == [f"{service.address}:15002"]
    assert origin["backends"][0]["backend"]["registry_blob"]["address"] == kraken.registry
    tracker = node_config(kraken, service.name, "tracker")
    assert tracker["origin"]["hosts"]["static"] == [f"{service.address}:15002"]
    assert kraken.ssh(service.name, "test -e /etc/kraken/agent || echo none").strip() == "none"


def test_gpu_nodes_get_the_agent_and_their_engines_pull_through_it(kraken, deployed):
    service = kraken.service
    outputs = kraken.on_gpu_nodes(
        "cat /etc/kraken/agent/kiln.yaml; echo ---; cat /etc/docker/daemon.json; echo ---; "
        "cat /etc/containers/registries.conf.d/50-kiln-kraken.conf; echo ---; "
        "grep ^ExecStart= /etc/systemd/system/kraken-agent.service")
    for node in kraken.gpu_nodes:
        agent, daemon, registries, start = outputs[node.name].split("---\n")
        assert yaml.safe_load(agent)["tracker"]["hosts"]["static"] == \
            [f"{service.address}:15003"]
        if node == kraken.gpu_nodes[0]:
            agent_config = node_config(kraken, node.name, "agent")
            assert agent_config["allowed_cidrs"] == ["127.0.0.1", "172.17.0.1"]
        others = TOOLKIT_DAEMON_JSON if node == kraken.gpu_nodes[0] else {}
        assert json.loads(daemon) == {**others, "registry-mirrors": ["http://localhost:16000"]}
        assert f'location = "{kraken.registry}"' in registries
        assert 'location = "localhost:16000"' in registries
        assert f"--peer-ip={node.address} " in start and "--agent-registry-port=16000" in start


def test_a_second_run_changes_nothing(kraken, deployed):
    again = kraken.deploy()
    assert again.returncode == 0, again.stdout[-4000:]
    line = next(line for line in again.stdout.splitlines()
                if line.strip().startswith("Grand total"))
    assert line.split()[-3:-1] == ["-", "-"], again.stdout[-4000:]


def test_tls_files_are_installed_and_turned_on_in_the_config(kraken, deployed):
    """With kiln_kraken_tls, the agent's config turns TLS on and the files it names are on
    the node (certificate from the lab CA; the key readable by root only)."""
    node = kraken.gpu_nodes[-1]
    lab_dir = Path(kraken.lab.lab_dir)
    cert, key = issue_cert(lab_dir, f"kraken-{node.name}", [node.address])
    tls = {"ca": str(lab_dir / "tls/ca.pem"), "cert": str(cert), "key": str(key)}
    result = kraken.deploy("--limit", node.name, "--data", f"kiln_kraken_tls={json.dumps(tls)}")
    assert result.returncode == 0, result.stdout[-3000:]
    config = node_config(kraken, node.name, "agent")
    assert config["tls"]["server"]["disabled"] is False
    assert config["tls"]["client"]["disabled"] is False
    listing = kraken.ssh(node.name, "cd /etc/kraken/tls && stat -c '%n %a' ca/ca.crt "
                         "server/server.crt server/server.key client/client.key && "
                         "openssl verify -CAfile ca/ca.crt server/server.crt")
    assert listing.splitlines() == ["ca/ca.crt 644", "server/server.crt 644",
                                    "server/server.key 600", "client/client.key 600",
                                    "server/server.crt: OK"]
    unit = kraken.ssh(node.name, "grep ^ExecStart= /etc/systemd/system/kraken-agent.service")
    assert "-v /etc/kraken/tls:/etc/kraken/tls:ro" in unit


def test_activating_kraken_where_it_cannot_run_fails_the_node_and_says_why(kraken, deployed):
    """Activated, the role needs each component's image pinned, then the engine to load it
    into; a lab node has neither, and the node fails naming what is missing."""
    node = kraken.gpu_nodes[-1].name
    limit = ["--limit", node, "--data", "kiln_kraken_activate=true"]
    unpinned = kraken.deploy(*limit)
    assert unpinned.returncode != 0
    assert "host data kiln_kraken_images.agent is not set: nothing to load the agent " \
           "container from" in unpinned.stdout, unpinned.stdout[-3000:]
    image = {"agent": {"ref": "kraken-agent:lab", "file": "kraken-agent-lab.tar",
                       "url": "http://10.231.0.1:8081/images/kraken-agent-lab.tar",
                       "sha256": "0" * 64}}
    no_engine = kraken.deploy(*limit, "--data", f"kiln_kraken_images={json.dumps(image)}")
    assert no_engine.returncode != 0
    assert f"kraken: host data kiln_kraken_runtime is docker, but docker is not installed " \
           f"on {node}" in no_engine.stdout, no_engine.stdout[-3000:]
    assert kraken.ssh(node, "ls /var/lib/kiln-kraken/images 2>/dev/null | wc -l").strip() == "0"


def test_every_gpu_node_pulls_through_the_stand_in_at_the_agents_address(kraken, deployed):
    service = kraken.service.name
    # The backend registry (a real registry, as a cluster's would be) holding an image
    # built here with umoci: one file layer.
    install_registry(kraken, service, f"0.0.0.0:{LAB_REGISTRY_PORT}", None)
    kraken.ssh(service, f"{APT} install umoci >>/tmp/standin.log 2>&1")
    pushed = kraken.ssh(service, (
        "set -e; rm -rf /tmp/standin /tmp/standin-file; "
        f"printf %s {shlex.quote(PAYLOAD)} > /tmp/standin-file; "
        "umoci init --layout /tmp/standin; umoci new --image /tmp/standin:1; "
        "umoci insert --image /tmp/standin:1 /tmp/standin-file /kiln/standin.txt; "
        f"skopeo copy --quiet --dest-tls-verify=false oci:/tmp/standin:1 "
        f"docker://127.0.0.1:{LAB_REGISTRY_PORT}/{IMAGE}; "
        f"skopeo inspect --tls-verify=false docker://127.0.0.1:{LAB_REGISTRY_PORT}/{IMAGE}"))
    layers = json.loads(pushed)["Layers"]
    assert len(layers) == 1

    # The stand-in agents, then the pull every GPU node makes by the backend's name.
    with ThreadPoolExecutor(max_workers=len(kraken.gpu_nodes)) as pool:
        list(pool.map(lambda node: install_registry(
            kraken, node.name, "127.0.0.1:16000", f"http://{kraken.registry}"),
            kraken.gpu_nodes))
    outputs = kraken.on_gpu_nodes(
        "set -e; rm -rf /tmp/pulled /tmp/pulled.log; "
        f"skopeo --debug copy docker://{kraken.registry}/{IMAGE} oci:/tmp/pulled:1 "
        ">/tmp/pulled.log 2>&1; "
        "digest=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); "
        "print(m[\"manifests\"][0][\"digest\"].split(\":\")[1])' /tmp/pulled/index.json); "
        "layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); "
        "print(m[\"layers\"][0][\"digest\"])' /tmp/pulled/blobs/sha256/$digest); "
        "blob=/tmp/pulled/blobs/sha256/${layer#sha256:}; echo $layer; "
        "echo sha256:$(sha256sum < $blob | cut -d' ' -f1); "
        f"python3 -c {shlex.quote(READ_LAYER_FILE)} $blob; "
        f"test -d {STANDIN_CACHE} && echo cached-by-the-node-stand-in; "
        # skopeo's own account: it asked the agent's address, never the backend itself.
        "grep -q 'access .*localhost:16000/kiln/standin:1' /tmp/pulled.log && echo via-agent; "
        f"grep -q 'access .*{kraken.registry}/kiln/standin' /tmp/pulled.log "
        "|| echo backend-not-asked")
    for node in kraken.gpu_nodes:
        layer, digest, rest = outputs[node.name].split("\n", 2)
        assert layer == layers[0] and digest == layer, node.name
        # The file the layer carries, and the node's stand-in holding the repository it
        # fetched from the backend (the pull went through the agent's address).
        assert rest == PAYLOAD + "cached-by-the-node-stand-in\nvia-agent\nbackend-not-asked\n", \
            (node.name, rest)
