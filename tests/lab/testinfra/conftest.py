"""Point this suite at any kiln inventory: it checks on the nodes themselves what the manifest
pins, with pytest-testinfra, never from kiln's own record.

    pytest tests/lab/testinfra --kiln-inventory inventory/lab.py --kiln-limit gpu-006,gpu-007
    pytest tests/lab/testinfra --kiln-inventory inventory/prod.py --kiln-limit rack_r01
    pytest tests/lab/testinfra --hosts ssh://root@10.0.0.5 --kiln-sku hgx-h100-sxm [--kiln-role gpu]

--kiln-inventory loads a pyinfra inventory file (with its group data) exactly as pyinfra
does, and connects to each host the way pyinfra would (ssh_hostname, ssh_user, ssh_port,
ssh_key; sudo when the user is not root). --kiln-limit takes host or group names, like
pyinfra's --limit. --kiln-data KEY=VALUE adds host data, like pyinfra's --data (values are
JSON when they parse as JSON). --kiln-firmware-dir reads the manifests from another
directory (a copy with other versions). Without --kiln-inventory or --hosts the suite is
not collected: it has nothing to point at.

Each test takes `node` (or `node_pin`, a node and one pinned package): the node's testinfra
host, its host data and its manifest.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import testinfra

from kiln.core.manifest import Manifest
from kiln.roles.base.settings import DEFAULT_SYSCTL, manifest_for
from kiln.roles.infiniband.pinsets import ofed_keys
from kiln.roles.nvidia.pinsets import nvidia_keys

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Node:
    name: str
    host: Any  # testinfra.host.Host
    data: dict[str, Any]
    groups: set[str]
    manifest: Manifest
    manifest_path: Path
    pins: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # field -> pin
    service_address: str | None = None  # the first service node's: the default NTP server

    def __repr__(self) -> str:
        return f"Node({self.name})"

    def read(self, command: str) -> str:
        """The output of a read-only command, run once per node and session."""
        cache = self.__dict__.setdefault("_outputs", {})
        if command not in cache:
            cache[command] = self.host.check_output(command)
        return cache[command]

    @property
    def has_gpus(self) -> bool:
        return "gpu" in self.groups or self.data.get("kiln_role") == "gpu"

    @property
    def sysctl(self) -> dict[str, str]:
        return self.data.get("kiln_sysctl") or DEFAULT_SYSCTL

    @property
    def apt_indexes(self) -> set[tuple[str, str]]:
        """(uri, "suite/component") of every apt source the node must use, and only those:
        host data kiln_apt_mirror, else the cluster mirror (roles/mirror's settings)."""
        mirror = self.data.get("kiln_apt_mirror")
        if mirror:
            return {(source["uri"].rstrip("/"), f"{source['suite']}/{component}")
                    for source in mirror["sources"]
                    for component in source.get("components", ["main"])}
        from kiln.roles.mirror.settings import settings_from_data

        settings = settings_from_data(self.data)
        address = settings.host or self.service_address
        assert address, f"{self.name}: no kiln_apt_mirror, and no mirror host or service node"
        return {(f"{settings.http_url(address)}apt", f"{settings.suite}/main")}

    @property
    def ntp_servers(self) -> list[str]:
        servers = self.data.get("kiln_ntp_servers")
        return servers or ([self.service_address] if self.service_address else [])


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kiln", "kiln: which nodes to check")
    group.addoption("--kiln-inventory", help="pyinfra inventory file (inventory/lab.py …)")
    group.addoption("--kiln-limit", help="comma-separated host or group names")
    group.addoption("--kiln-data", action="append", default=[], metavar="KEY=VALUE",
                    help="extra host data, as pyinfra --data")
    group.addoption("--kiln-firmware-dir", help="directory of the manifests (<sku>.yaml)")
    group.addoption("--kiln-sku", help="the manifest of --hosts given without an inventory")
    group.addoption("--kiln-role", default="gpu", choices=("gpu", "service"),
                    help="the role of --hosts given without an inventory (default gpu)")


def _option(config: pytest.Config, name: str) -> Any:
    try:
        return config.getoption(name)
    except ValueError:  # this conftest was not loaded at start-up: no option given
        return None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if _option(config, "kiln_inventory") or _option(config, "hosts"):
        return None
    return collection_path.name.startswith("test_")


def _override_data(config: pytest.Config) -> dict[str, Any]:
    from pyinfra_cli.util import parse_cli_arg

    data = {}
    for item in _option(config, "kiln_data") or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise pytest.UsageError(f"--kiln-data {item!r}: expected KEY=VALUE")
        data[key] = parse_cli_arg(value)
    if _option(config, "kiln_firmware_dir"):
        data["kiln_firmware_dir"] = _option(config, "kiln_firmware_dir")
    return data


def _inventory_hosts(
    config: pytest.Config,
) -> tuple[list[tuple[str, dict[str, Any], set[str]]], str | None]:
    from pyinfra.api import Config, State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    path = _option(config, "kiln_inventory")
    state = State()
    with ctx_state.use(state):
        inventory = make_inventory(path, override_data=_override_data(config), cwd=str(ROOT))
    state.init(inventory, Config())
    limit = [name for name in (_option(config, "kiln_limit") or "").split(",") if name]
    hosts = []
    for host in inventory:
        if limit and host.name not in limit and not set(host.groups) & set(limit):
            continue
        data = dict(host.data.dict())
        hosts.append((host.name, data, set(host.groups)))
    if not hosts:
        raise pytest.UsageError(f"--kiln-inventory {path}: no host matches --kiln-limit {limit}")
    service = next(iter(inventory.get_group("service", [])), None)
    return hosts, (service.data.get("ssh_hostname") or service.name) if service else None


def _plain_hosts(
    config: pytest.Config,
) -> tuple[list[tuple[str, dict[str, Any], set[str]]], str | None]:
    sku = _option(config, "kiln_sku")
    if not sku:
        raise pytest.UsageError("--hosts without --kiln-inventory needs --kiln-sku")
    hosts = []
    for spec in _option(config, "hosts").split(","):
        data = {"kiln_sku": sku, "kiln_role": _option(config, "kiln_role"),
                "kiln_testinfra_spec": spec, **_override_data(config)}
        hosts.append((spec.split("://")[-1].split("@")[-1].split(":")[0], data, set()))
    return hosts, None


def _testinfra_host(name: str, data: dict[str, Any], config: pytest.Config) -> Any:
    if "kiln_testinfra_spec" in data:
        return testinfra.get_host(data["kiln_testinfra_spec"],
                                  ssh_identity_file=_option(config, "ssh_identity_file"))
    user = data.get("ssh_user") or "root"
    address = data.get("ssh_hostname") or name
    port = data.get("ssh_port") or 22
    extra = ["-o BatchMode=yes", "-o LogLevel=ERROR"]
    if data.get("ssh_known_hosts_file"):
        extra.append(f"-o UserKnownHostsFile={data['ssh_known_hosts_file']}")
    if data.get("ssh_strict_host_key_checking"):
        extra.append(f"-o StrictHostKeyChecking={data['ssh_strict_host_key_checking']}")
    # One multiplexed SSH connection per node for the whole run (ssh's ControlMaster).
    sockets = Path(tempfile.gettempdir()) / "kiln-testinfra"
    sockets.mkdir(mode=0o700, exist_ok=True)
    return testinfra.get_host(
        f"ssh://{user}@{address}:{port}",
        ssh_identity_file=data.get("ssh_key"),
        ssh_extra_args=" ".join(extra),
        controlpersist=30,
        controlpath=str(sockets / f"{user}-{address}-{port}"),
        sudo=user != "root",
    )


def _pins(manifest: Manifest) -> dict[str, tuple[str, str, bool]]:
    """Manifest field -> (package, version, held) for what the pinning stages install."""
    pins = {f"os.kernel:{name}": (name, version, True)
            for name, version in manifest.os.kernel.packages.items()}
    for key in (*ofed_keys(), *nvidia_keys()):
        pin = manifest.packages.get(key)
        if pin is not None:
            pins[f"packages.{key}"] = (pin.name, pin.version, pin.hold)
    return pins


def _nodes(config: pytest.Config) -> list[Node]:
    cached = getattr(config, "_kiln_nodes", None)
    if cached is not None:
        return cached
    if _option(config, "kiln_inventory"):
        entries, service = _inventory_hosts(config)
    else:
        entries, service = _plain_hosts(config)
    nodes = []
    for name, data, groups in entries:
        manifest, path = manifest_for(data)
        node = Node(name, _testinfra_host(name, data, config), data, groups, manifest, path,
                    service_address=service)
        node.pins = _pins(manifest) if node.has_gpus else {
            key: pin for key, pin in _pins(manifest).items() if key.startswith("os.")}
        nodes.append(node)
    config._kiln_nodes = nodes  # type: ignore[attr-defined]
    return nodes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu_node: runs on the nodes that have GPUs only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" in metafunc.fixturenames:
        nodes = _nodes(metafunc.config)
        if metafunc.definition.get_closest_marker("gpu_node"):
            nodes = [node for node in nodes if node.has_gpus]
        metafunc.parametrize("node", nodes, ids=[node.name for node in nodes])
    if "node_pin" in metafunc.fixturenames:
        pairs = [(node, field) for node in _nodes(metafunc.config) for field in node.pins]
        metafunc.parametrize("node_pin", pairs,
                             ids=[f"{node.name}:{field}" for node, field in pairs])

