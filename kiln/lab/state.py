"""The lab's state file, `state.json` in the lab directory: what is running and how to reach it.

`kiln lab up` writes it, `kiln lab status --json` prints it, `inventory/lab.py` reads it.
Schema (version 1):

    {
      "schema": 1,
      "lab_dir": "/var/lib/kiln-lab",
      "network": {"bridge": "kilnbr0", "gateway": "10.231.0.1", "prefix": 24},
      "ssh_user": "root",
      "ssh_key": "/var/lib/kiln-lab/ssh/id_ed25519",   # private key; sshd in every node takes it
      "faults_file": null,                              # or the --faults FILE given to `lab up`
      "secrets_file": "/var/lib/kiln-lab/secrets.yaml", # 0600; BMC, MAAS, UFM credentials
      "tls_ca": "/var/lib/kiln-lab/tls/ca.pem",         # the lab CA: Redfish and UFM certs
      "endpoints": {"vendor_repo": "http://10.231.0.1:8081/",
                    "maas": "http://10.231.0.1:5240/MAAS/", "ufm": "https://10.231.0.1:8443/",
                    "ntp": "ntp://10.231.0.1"},
      "nodes": [
        {"name": "gpu-001", "role": "gpu", "index": 1, "address": "10.231.0.11",
         "ssh_port": 22, "netns": "kiln-gpu-001", "state": "running",   # or "off"
         "disk": "installed",                                           # or "blank"
         "bmc": {"protocol": "redfish", "address": "10.231.1.11", "port": 443}},
        ...
      ]
    }

Node *i* (1-based, GPU nodes first, then service nodes) is `10.231.0.(10+i)` and its BMC
`10.231.1.(10+i)`: the layout contract in lab/README.md. Credentials are never in this
file (it is what `kiln lab status --json` prints); they are in `secrets_file`.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA = 1
DEFAULT_LAB_DIR = Path("/var/lib/kiln-lab")
BRIDGE = "kilnbr0"
GATEWAY = "10.231.0.1"
PREFIX = 24
VENDOR_REPO_URL = f"http://{GATEWAY}:8081/"
MAAS_URL = f"http://{GATEWAY}:5240/MAAS/"
UFM_URL = f"https://{GATEWAY}:8443/"
NTP_URL = f"ntp://{GATEWAY}"  # lab/ntp.py: chronyd on UDP 123
# BMCs live on a second subnet on the same bridge: host-side addresses, one per node.
BMC_SUBNET_GATEWAY = "10.231.1.1"
REDFISH_PORT = 443
IPMI_PORT = 623
# Addresses 10.231.0.11 .. 10.231.0.254: node index 1..244.
MAX_NODES = 244

Role = Literal["gpu", "service"]
PowerState = Literal["running", "off"]
# "blank": a new machine's disk, nothing boots from it; "installed": an OS is on it.
Disk = Literal["blank", "installed"]
BmcProtocol = Literal["redfish", "ipmi"]


class StateError(Exception):
    """The state file is missing or does not say what the schema says."""


def lab_dir() -> Path:
    """Where the lab lives: $KILN_LAB_DIR, else /var/lib/kiln-lab."""
    return Path(os.environ.get("KILN_LAB_DIR") or DEFAULT_LAB_DIR)


@contextmanager
def lab_lock(lab: Path) -> Iterator[None]:
    """The lab lock (`<lab>/lock`): one kiln command changes the lab at a time."""
    lab.mkdir(parents=True, exist_ok=True)
    with open(lab / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def mirror_state_dir(lab: Path | str) -> Path:
    """The lab's kiln_mirror_state: the controller's mirror signing key and apt state."""
    return Path(lab) / "mirror-state"


def burnin_state_dir(lab: Path | str) -> Path:
    """The lab's kiln_burnin_state: the burn-in's SSH key (roles/burnin/access.py)."""
    return Path(lab) / "burnin-state"


def state_path(directory: Path | None = None) -> Path:
    return (directory or lab_dir()) / "state.json"


def node_address(index: int) -> str:
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} is outside 1..{MAX_NODES}")
    return f"10.231.0.{10 + index}"


def bmc_address(index: int) -> str:
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} is outside 1..{MAX_NODES}")
    return f"10.231.1.{10 + index}"


def bmc_for(index: int, protocol: BmcProtocol) -> dict[str, Any]:
    port = REDFISH_PORT if protocol == "redfish" else IPMI_PORT
    return {"protocol": protocol, "address": bmc_address(index), "port": port}


def default_endpoints() -> dict[str, str]:
    return {"vendor_repo": VENDOR_REPO_URL, "maas": MAAS_URL, "ufm": UFM_URL, "ntp": NTP_URL}


def netns_name(node: str) -> str:
    return f"kiln-{node}"


@dataclass
class NodeState:
    name: str
    role: Role
    index: int
    address: str
    ssh_port: int = 22
    netns: str = ""
    state: PowerState = "off"
    disk: Disk = "installed"
    bmc: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.netns:
            self.netns = netns_name(self.name)
        if not self.bmc and 1 <= self.index <= MAX_NODES:
            self.bmc = bmc_for(self.index, "ipmi" if self.role == "service" else "redfish")


@dataclass
class LabState:
    lab_dir: str
    ssh_key: str
    nodes: list[NodeState] = field(default_factory=list)
    faults_file: str | None = None
    ssh_user: str = "root"
    secrets_file: str | None = None
    tls_ca: str | None = None
    endpoints: dict[str, str] = field(default_factory=default_endpoints)
    network: dict[str, Any] = field(
        default_factory=lambda: {"bridge": BRIDGE, "gateway": GATEWAY, "prefix": PREFIX}
    )
    schema: int = SCHEMA

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes) or "none"
        raise StateError(f"no lab node named {name!r} (nodes: {known})")

    def to_json(self) -> str:
        document = asdict(self)
        # Schema first, nodes last: easier to read by eye.
        ordered = {"schema": document.pop("schema")}
        nodes = document.pop("nodes")
        ordered.update(document)
        ordered["nodes"] = nodes
        return json.dumps(ordered, indent=2) + "\n"


def plan_nodes(gpu_nodes: int, service_nodes: int) -> list[NodeState]:
    """Names and addresses of a lab of this shape: gpu-001.. first, then svc-001.."""
    if gpu_nodes < 0 or service_nodes < 0:
        raise ValueError("node counts cannot be negative")
    if gpu_nodes + service_nodes == 0:
        raise ValueError("a lab needs at least one node")
    if gpu_nodes + service_nodes > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} nodes fit the lab's /24")
    roles: list[tuple[str, Role]] = [(f"gpu-{i:03d}", "gpu") for i in range(1, gpu_nodes + 1)]
    roles += [(f"svc-{i:03d}", "service") for i in range(1, service_nodes + 1)]
    return [
        NodeState(name=name, role=role, index=i, address=node_address(i))
        for i, (name, role) in enumerate(roles, start=1)
    ]


def _require(document: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in document:
        raise StateError(f"{where}: missing field {key!r}")
    value = document[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StateError(f"{where}: field {key!r} should be {kind.__name__}, got {value!r}")
    return value


def parse_state(text: str, source: str = "state.json") -> LabState:
    """Parse and check a state document; errors name the file, node and field."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{source}: not JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(document, dict):
        raise StateError(f"{source}: expected a JSON object")
    schema = _require(document, "schema", int, source)
    if schema != SCHEMA:
        raise StateError(f"{source}: schema {schema} is not the supported {SCHEMA}")
    nodes = []
    for i, entry in enumerate(_require(document, "nodes", list, source)):
        where = f"{source}: nodes[{i}]"
        if not isinstance(entry, dict):
            raise StateError(f"{where}: expected an object")
        name = _require(entry, "name", str, where)
        where = f"{source}: node {name}"
        role = _require(entry, "role", str, where)
        if role not in ("gpu", "service"):
            raise StateError(f"{where}: role {role!r} is not gpu or service")
        power = _require(entry, "state", str, where)
        if power not in ("running", "off"):
            raise StateError(f"{where}: state {power!r} is not running or off")
        disk = entry.get("disk", "installed")
        if disk not in ("blank", "installed"):
            raise StateError(f"{where}: disk {disk!r} is not blank or installed")
        bmc = entry.get("bmc") or {}
        if not isinstance(bmc, dict) or (bmc and bmc.get("protocol") not in ("redfish", "ipmi")):
            raise StateError(f"{where}: bmc {bmc!r} is not an object with protocol redfish|ipmi")
        nodes.append(
            NodeState(
                name=name,
                role=role,
                index=_require(entry, "index", int, where),
                address=_require(entry, "address", str, where),
                ssh_port=_require(entry, "ssh_port", int, where),
                netns=entry.get("netns") or netns_name(name),
                state=power,
                disk=disk,
                bmc=dict(bmc),
            )
        )
    faults = document.get("faults_file")
    return LabState(
        lab_dir=_require(document, "lab_dir", str, source),
        ssh_key=_require(document, "ssh_key", str, source),
        nodes=nodes,
        faults_file=faults if isinstance(faults, str) else None,
        ssh_user=document.get("ssh_user", "root"),
        secrets_file=document.get("secrets_file"),
        tls_ca=document.get("tls_ca"),
        endpoints=dict(document.get("endpoints") or {}),
        network=dict(document.get("network") or {}),
        schema=schema,
    )


def load_state(directory: Path | None = None) -> LabState:
    path = state_path(directory)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StateError(f"{path}: no lab state (is the lab up? run: kiln lab up)") from None
    return parse_state(text, str(path))


def save_state(state: LabState, directory: Path | None = None) -> None:
    """Write atomically: a reader never sees half a file."""
    path = state_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state.", suffix=".json")
    with os.fdopen(fd, "w") as out:
        out.write(state.to_json())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def remove_state(directory: Path | None = None) -> None:
    state_path(directory).unlink(missing_ok=True)
