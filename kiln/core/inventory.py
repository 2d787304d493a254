"""The cluster inventory: a human-edited YAML file of racks and nodes, validated whole.

`inventory/prod.py` (a pyinfra inventory file) calls `pyinfra_groups()` on this model. The
file holds no credentials: those come from the environment or a 0600 secrets file
(roles/secrets.py), named in group data.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kiln.core.errors import ValidationFailed, pydantic_problems
from kiln.core.manifest import known_skus
from kiln.core.models import Strict
from kiln.core.yamlfile import read_yaml_mapping

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_GROUP = re.compile(r"^[A-Za-z0-9_]+$")



def _address(value: str) -> str:
    """An IP address or a DNS name; what a BMC or node is reached at."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value) and not value.replace(
        ".", ""
    ).isdigit():
        return value.lower()
    raise ValueError(f"{value!r} is neither an IP address nor a host name")


class BMC(Strict):
    address: str
    protocol: Literal["redfish", "ipmi"] = "redfish"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Turning certificate checks off is explicit, per BMC, and every run reports it.
    verify_tls: bool = True
    ca_bundle: str | None = None
    # Which credential entry to use (secrets file key / env var prefix); default "bmc".
    credentials: str = "bmc"
    # IPMI only: the RMCP+ cipher suite (ipmitool -C). Some BMCs do not answer ipmitool's
    # cipher-suite query, and each call then waits for it to time out.
    cipher_suite: Annotated[int, Field(ge=0, le=17)] | None = None

    @field_validator("address")
    @classmethod
    def _reachable_address(cls, value: str) -> str:
        return _address(value)


class MAASIdentity(Strict):
    system_id: str | None = None
    hostname: str | None = None

    @model_validator(mode="after")
    def _one_identity(self) -> MAASIdentity:
        if not self.system_id and not self.hostname:
            raise ValueError("give system_id or hostname")
        return self


class Node(Strict):
    hostname: str
    sku: str
    role: Literal["gpu", "service", "ufm"]
    address: str  # management network address kiln reaches the OS at
    bmc: BMC
    maas: MAASIdentity | None = None
    ssh_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # The node's host number on every IPoIB rail; default: its management address's last octet.
    ipoib_host: Annotated[int, Field(ge=1)] | None = None

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not _HOSTNAME.match(value):
            raise ValueError(f"{value!r} is not a valid host name (lowercase letters, digits, -)")
        return value

    @field_validator("address")
    @classmethod
    def _reachable_address(cls, value: str) -> str:
        return _address(value)

    def maas_identity(self) -> MAASIdentity:
        """MAAS knows a node by system id when given, else by its hostname."""
        return self.maas or MAASIdentity(hostname=self.hostname)


class Rack(Strict):
    name: str
    nodes: list[Node]

    @field_validator("name")
    @classmethod
    def _group_name(cls, value: str) -> str:
        if not _GROUP.match(value):
            raise ValueError(f"{value!r}: rack names become pyinfra groups; use [A-Za-z0-9_]")
        return value


class APIEndpoint(Strict):
    """A cluster service kiln talks to over HTTP(S): MAAS, UFM."""

    url: str
    verify_tls: bool = True
    ca_bundle: str | None = None
    # Which credential entry to use (secrets file key / env var prefix).
    credentials: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value if value.endswith("/") else value + "/"


class MAASServer(APIEndpoint):
    credentials: str = "maas"


class UFMServer(APIEndpoint):
    credentials: str = "ufm"
    # UFM dates its events in the UFM server's local time, with no zone: the IANA zone it
    # runs in (e.g. "Europe/Berlin"); unset means the controller's own local time.
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. 'UTC')") from None
        return value


class IPoIB(Strict):
    """The IPoIB address scheme: rail r (a node's r-th InfiniBand HCA, mlx5_N in name order)
    is in one subnet per rail, the same host number on every rail.

        ipoib: {subnet_pattern: "10.200.{rail}.0/24", rails: 8}
        ipoib: {subnets: [10.200.0.0/24, 10.201.0.0/24, ...]}     (one per rail)
    """

    rails: Annotated[int, Field(ge=1, le=64)] = 8
    subnet_pattern: str | None = None
    subnets: list[ipaddress.IPv4Network] | None = None
    mtu: Annotated[int, Field(ge=256, le=65520)] | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> IPoIB:
        if (self.subnet_pattern is None) == (self.subnets is None):
            raise ValueError("give subnet_pattern (e.g. \"10.200.{rail}.0/24\") or subnets "
                             "(one per rail), not both")
        if self.subnets is not None and len(self.subnets) != self.rails:
            raise ValueError(f"subnets: {len(self.subnets)} given for {self.rails} rails")
        networks = self.networks()
        for i, one in enumerate(networks):
            if one.num_addresses < 4:
                raise ValueError(f"rail {i}: {one} has no room for hosts")
            for j in range(i):
                if one.overlaps(networks[j]):
                    raise ValueError(f"rail {i}'s subnet {one} overlaps rail {j}'s "
                                     f"{networks[j]}")
        return self

    def networks(self) -> list[ipaddress.IPv4Network]:
        if self.subnets is not None:
            return list(self.subnets)
        pattern = self.subnet_pattern or ""
        if "{rail}" not in pattern:
            raise ValueError(f"subnet_pattern {pattern!r} has no {{rail}}")
        found = []
        for rail in range(self.rails):
            text = pattern.replace("{rail}", str(rail))
            try:
                found.append(ipaddress.IPv4Network(text))
            except ValueError as exc:
                raise ValueError(f"subnet_pattern gives {text!r} for rail {rail}: {exc}") \
                    from None
        return found

    def max_host(self) -> int:
        return min(network.num_addresses for network in self.networks()) - 2

    def addresses(self, host_number: int) -> list[ipaddress.IPv4Interface]:
        """One address per rail, rail order."""
        return [ipaddress.IPv4Interface(f"{network.network_address + host_number}/"
                                        f"{network.prefixlen}") for network in self.networks()]


def ipoib_host_number(node: Node) -> int | None:
    """The node's IPoIB host number: ipoib_host, else its IPv4 management address's last
    octet; None when neither is there (the address is a host name)."""
    if node.ipoib_host is not None:
        return node.ipoib_host
    try:
        address = ipaddress.ip_address(node.address)
    except ValueError:
        return None
    return int(str(address).rsplit(".", 1)[1]) if address.version == 4 else None


class NodeDefaults(Strict):
    ssh_user: str = "ubuntu"
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    ssh_key: str | None = None


class Cluster(Strict):
    cluster: str
    defaults: NodeDefaults = NodeDefaults()
    # The region controller's API root, e.g. http://maas.example:5240/MAAS/
    maas: MAASServer | None = None
    ufm: UFMServer | None = None
    ipoib: IPoIB | None = None
    racks: list[Rack]

    def nodes(self) -> list[tuple[Rack, Node]]:
        return [(rack, node) for rack in self.racks for node in rack.nodes]


def _duplicates(values: list[str]) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)


def _raw_nodes(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(field path, node mapping) for every node in the raw document, valid or not."""
    found = []
    racks = document.get("racks")
    for r, rack in enumerate(racks if isinstance(racks, list) else []):
        nodes = rack.get("nodes") if isinstance(rack, dict) else None
        for n, node in enumerate(nodes if isinstance(nodes, list) else []):
            if isinstance(node, dict):
                found.append((f"racks.{r}.nodes.{n}", node))
    return found


def _text(mapping: object, key: str) -> str | None:
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return str(value) if value is not None else None


def _consistency_problems(source: str, document: dict[str, Any], skus: list[str]) -> list[str]:
    """Rules that span nodes: unique names and addresses, SKUs that have a manifest.

    Run on the raw document, so they are reported alongside per-field errors.
    """
    problems = []
    located = _raw_nodes(document)

    def name_of(node: dict[str, Any]) -> str:
        return _text(node, "hostname") or "?"

    hostnames = [(path, _text(node, "hostname")) for path, node in located]
    for name in _duplicates([h for _, h in hostnames if h]):
        where = ", ".join(path for path, h in hostnames if h == name)
        problems.append(f"{source}: duplicate hostname {name!r} ({where})")
    bmcs = [(name_of(node), _text(node.get("bmc"), "address")) for _, node in located]
    for addr in _duplicates([a for _, a in bmcs if a]):
        names = ", ".join(name for name, a in bmcs if a == addr)
        problems.append(f"{source}: duplicate BMC address {addr} (nodes {names})")
    addresses = [(name_of(node), _text(node, "address")) for _, node in located]
    for addr in _duplicates([a for _, a in addresses if a]):
        names = ", ".join(name for name, a in addresses if a == addr)
        problems.append(f"{source}: duplicate node address {addr} (nodes {names})")
    shared = {a for _, a in addresses if a} & {a for _, a in bmcs if a}
    for addr in sorted(shared):
        problems.append(f"{source}: address {addr} is used both by a node and by a BMC")
    racks = document.get("racks") if isinstance(document.get("racks"), list) else []
    for rack in _duplicates([r for r in (_text(rack, "name") for rack in racks) if r]):
        problems.append(f"{source}: duplicate rack name {rack!r}")
    system_ids = [_text(node.get("maas"), "system_id") for _, node in located]
    for system_id in _duplicates([s for s in system_ids if s]):
        problems.append(f"{source}: duplicate MAAS system_id {system_id!r}")
    for path, node in located:
        sku = _text(node, "sku")
        if sku is not None and sku not in skus:
            known = ", ".join(skus) or "none"
            problems.append(
                f"{source}: {path}.sku: unknown SKU {sku!r} for node {name_of(node)} "
                f"(no firmware/{sku}.yaml; known: {known})"
            )
    return problems


def _missing_bmc_problems(source: str, document: dict[str, Any]) -> dict[str, str]:
    """Name the node, not just the path, when a node has no BMC: the commonest slip.

    Returns field path -> message, so the generic "field required" for it can be dropped.
    """
    problems: dict[str, str] = {}
    racks = document.get("racks")
    if not isinstance(racks, list):
        return problems
    for r, rack in enumerate(racks):
        nodes = rack.get("nodes") if isinstance(rack, dict) else None
        for n, node in enumerate(nodes if isinstance(nodes, list) else []):
            if isinstance(node, dict) and not node.get("bmc"):
                name = node.get("hostname", "?")
                path = f"racks.{r}.nodes.{n}.bmc"
                problems[path] = (
                    f"{source}: {path}: node {name} has no BMC "
                    "(every node needs one: kiln powers and images nodes through it)"
                )
    return problems


def _ipoib_problems(source: str, cluster: Cluster) -> list[str]:
    """Every GPU node's IPoIB host number: present, in range, unique; no management or BMC
    address inside an IPoIB subnet."""
    scheme = cluster.ipoib
    if scheme is None:
        return []
    problems = []
    networks, top = scheme.networks(), scheme.max_host()
    seen: dict[int, str] = {}
    for r, rack in enumerate(cluster.racks):
        for n, node in enumerate(rack.nodes):
            where = f"{source}: racks.{r}.nodes.{n}"
            for field, value in (("address", node.address), ("bmc.address", node.bmc.address)):
                try:
                    address = ipaddress.ip_address(value)
                except ValueError:
                    continue
                for rail, network in enumerate(networks):
                    if address in network:
                        problems.append(f"{where}.{field}: node {node.hostname}: {value} is "
                                        f"inside IPoIB rail {rail}'s subnet {network}")
            if node.role != "gpu":
                continue
            number = ipoib_host_number(node)
            if number is None:
                problems.append(f"{where}.ipoib_host: node {node.hostname}: not set, and its "
                                f"address {node.address} is not an IPv4 address to take the "
                                "host number from")
                continue
            field = "ipoib_host" if node.ipoib_host is not None else "address"
            if not 1 <= number <= top:
                problems.append(f"{where}.{field}: node {node.hostname}: IPoIB host number "
                                f"{number} is outside 1..{top} (the subnets of ipoib)")
            elif number in seen:
                problems.append(f"{where}.{field}: node {node.hostname}: IPoIB host number "
                                f"{number} is node {seen[number]}'s too")
            else:
                seen[number] = node.hostname
    return problems


def load_cluster(path: Path | str, firmware_dir: Path | str) -> Cluster:
    """Read and validate an inventory file; raise with every problem, or return it whole."""
    path, firmware_dir = Path(path), Path(firmware_dir)
    document = read_yaml_mapping(path)
    bmc_problems = _missing_bmc_problems(str(path), document)
    problems = list(bmc_problems.values())
    cluster = None
    try:
        cluster = Cluster.model_validate(document)
    except ValidationError as exc:
        for problem in pydantic_problems(str(path), exc):
            field_path = problem.removeprefix(f"{path}: ").split(": ", 1)[0]
            if not any(field_path.startswith(bmc_path) for bmc_path in bmc_problems):
                problems.append(problem)
    problems += _consistency_problems(str(path), document, known_skus(firmware_dir))
    if cluster is not None:
        problems += _ipoib_problems(str(path), cluster)
    if problems or cluster is None:
        raise ValidationFailed(problems)
    return cluster


def host_data(cluster: Cluster, rack: Rack, node: Node) -> dict[str, Any]:
    """The pyinfra host data of one node: SSH target plus what kiln's roles read."""
    data: dict[str, Any] = {
        "ssh_hostname": node.address,
        "ssh_user": cluster.defaults.ssh_user,
        "ssh_port": node.ssh_port or cluster.defaults.ssh_port,
        "kiln_cluster": cluster.cluster,
        "kiln_node": node.hostname,
        "kiln_sku": node.sku,
        "kiln_role": node.role,
        "kiln_rack": rack.name,
        "kiln_bmc": node.bmc.model_dump(),
        "kiln_maas": node.maas_identity().model_dump(),
    }
    if cluster.defaults.ssh_key:
        data["ssh_key"] = cluster.defaults.ssh_key
    if cluster.maas is not None:
        data["kiln_maas_server"] = cluster.maas.model_dump()
    if cluster.ufm is not None:
        data["kiln_ufm_server"] = cluster.ufm.model_dump()
    number = ipoib_host_number(node)
    if cluster.ipoib is not None and node.role == "gpu" and number is not None:
        data["kiln_ipoib"] = {
            "addresses": [str(address) for address in cluster.ipoib.addresses(number)],
            "mtu": cluster.ipoib.mtu,
        }
    return data


def pyinfra_groups(cluster: Cluster) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Groups for a pyinfra inventory: one per role (gpu, service, ufm) and one per rack."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {"gpu": [], "service": [], "ufm": []}
    for rack in cluster.racks:
        groups[f"rack_{rack.name}"] = []
    for rack, node in cluster.nodes():
        entry = (node.hostname, host_data(cluster, rack, node))
        groups[node.role].append(entry)
        groups[f"rack_{rack.name}"].append(entry)
    return {name: hosts for name, hosts in groups.items() if hosts}


def inventory_groups(yaml_path: Path | str, firmware_dir: Path | str) -> dict[str, list]:
    """What an inventory/*.py file exposes to pyinfra: `@metal/<node>` hosts by group.

    Bad input raises pyinfra's InventoryError listing every problem, so pyinfra prints the
    message (file, field, node) instead of a traceback, and no host is loaded.
    """
    from pyinfra.api.exceptions import InventoryError

    try:
        cluster = load_cluster(yaml_path, firmware_dir)
    except ValidationFailed as exc:
        raise InventoryError("invalid inventory:\n  " + "\n  ".join(exc.problems)) from None
    return {
        group: [(f"@metal/{name}", data) for name, data in hosts]
        for group, hosts in pyinfra_groups(cluster).items()
    }


class PoolBackend(Strict):
    """Where the training pool lives (group data `kiln_pool`): which nodes jobs may land on.

    file:  the YAML pool file (kiln_pool_file), kiln's embedded default.
    slurm: Slurm's own node states: kiln drains a node with `scontrol update ... State=DRAIN
           Reason="kiln: ..."` and resumes only the nodes it drained. `controller` is the
           inventory host whose `scontrol` kiln runs (over that host's own SSH login, or
           "@local" for the machine kiln runs on), usually the slurmctld host.
    kubernetes: the Node's label kiln.io/pool=pooled, and kiln's NoSchedule taint (reason in
           the kiln.io/reason annotation) when drained, through the official client.
    """

    backend: Literal["file", "slurm", "kubernetes"] = "file"
    controller: str | None = None
    # The node's name in Slurm or Kubernetes when it is not kiln's name for it.
    node_name: str | None = None
    # kubernetes: a kubeconfig file and context (None: $KUBECONFIG or ~/.kube/config and its
    # current context), or the pod's service account (in_cluster).
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    # Taint keys every pool job tolerates (e.g. nvidia.com/gpu): they hold no node out.
    tolerated_taints: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _controller_for_slurm(self) -> PoolBackend:
        if self.backend == "slurm" and not self.controller:
            raise ValueError("backend slurm needs controller: the inventory host that runs "
                             "scontrol (the slurmctld host, or @local)")
        return self
