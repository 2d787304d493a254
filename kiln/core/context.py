"""The node context: who a pyinfra host is, typed, read once from its host data.

The inventory (kiln.core.inventory `host_data`) and group data give every host its name,
role, rack, SKU, BMC, MAAS identity and server, and where kiln keeps its records. Roles read
them here, never by walking host data: one place knows each key, its default and its model,
and a bad value is a KilnError that names the node and the host-data key.

    ctx = node_context(host)          # a pyinfra Host, its host data, or a mapping (tests)
    ctx.node, ctx.sku, ctx.manifest   # the SKU's manifest from kiln_firmware_dir, loaded once
    ctx.bmc, ctx.maas_server, ctx.maas_identity, ctx.ledger_path, ctx.pool_file, ctx.pool_backend

Each field is validated when first read, so a node without a BMC can still run a stage
that never talks to one; its error comes from the stage that needs the BMC. A context is
built once per pyinfra host and built again only if the keys it reads change (a deploy's
data_defaults, a test setting data): it never answers from stale data.

A site's own firmware directory (group data `kiln_firmware_dir`) replaces kiln's shipped
one (kiln.core.paths.FIRMWARE_DIR) for every role.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pyinfra.api.host import Host, HostData

from kiln.core.errors import KilnError, ValidationFailed, pydantic_problems
from kiln.core.inventory import BMC, MAASIdentity, MAASServer, PoolBackend, UFMServer
from kiln.core.manifest import Manifest, load_manifest, manifest_path
from kiln.core.paths import FIRMWARE_DIR
from kiln.core.secrets import Secret, lookup

DEFAULT_LEDGER = "state/kiln.db"
DEFAULT_POOL_FILE = "state/pool.yaml"
DEFAULT_ENV_PREFIX = "KILN_"

# Every host-data key the context reads; a change to one of them rebuilds the context.
KEYS = (
    "kiln_node", "kiln_cluster", "kiln_role", "kiln_rack", "kiln_sku", "kiln_firmware_dir",
    "kiln_bmc", "kiln_maas", "kiln_maas_server", "kiln_ufm_server", "kiln_secrets_file",
    "kiln_secrets_env_prefix", "kiln_ledger", "kiln_pool_file", "kiln_pool", "ssh_hostname",
    "ssh_user", "ssh_port",
)

Model = TypeVar("Model", bound=BaseModel)


class NodeContext:
    """One node as kiln's roles see it. Build it with `node_context()`."""

    def __init__(self, data: Any, name: str | None = None):
        self._data = data
        self._name = name

    def __repr__(self) -> str:
        return f"NodeContext({self.node!r})"

    # -- reading host data --------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The raw value of a host-data key, None when unset: for a role's own settings
        (kiln_bmc_retry, kiln_nvidia_*), which that role validates."""
        getter = getattr(self._data, "get", None)
        return getter(key) if callable(getter) else None

    def error(self, key: str, message: str) -> KilnError:
        """A KilnError naming this node and the host-data key."""
        return KilnError(f"{self._where(key)}: {message}")

    def _where(self, key: str) -> str:
        return f"node {self.node}: host data {key}" if self.node else f"host data {key}"

    def _text(self, key: str) -> str | None:
        value = self.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__} {value!r}")
        return value

    def _model(self, model: type[Model], key: str) -> Model | None:
        value = self.get(key)
        if value is None or isinstance(value, model):
            return value
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping of {model.__name__} fields, got "
                                  f"{type(value).__name__} {value!r}")
        try:
            return model.model_validate(dict(value))
        except ValidationError as exc:
            raise KilnError("\n".join(pydantic_problems(self._where(key), exc))) from None

    # -- who the node is ----------------------------------------------------------------------

    @cached_property
    def node(self) -> str | None:
        """The inventory's name for the node (kiln_node), else the pyinfra host's name;
        None only for bare host data of neither (a test's mapping)."""
        name = self.get("kiln_node")
        if name is not None and not isinstance(name, str):
            raise KilnError(f"host data kiln_node: expected the node's name, got {name!r}")
        return name or self._name

    @property
    def label(self) -> str:
        """The node's name for a message: its name, or "this host"."""
        return self.node or "this host"

    @cached_property
    def cluster(self) -> str | None:
        return self._text("kiln_cluster")

    @cached_property
    def role(self) -> str | None:
        """gpu, service or ufm (the inventory's node role)."""
        return self._text("kiln_role")

    @cached_property
    def rack(self) -> str | None:
        return self._text("kiln_rack")

    @cached_property
    def sku(self) -> str | None:
        return self._text("kiln_sku")

    # -- reaching the node's OS (pyinfra's own keys) -------------------------------------------

    @cached_property
    def address(self) -> str | None:
        """Where the node's OS is reached: ssh_hostname, else its name."""
        return self._text("ssh_hostname") or self._name or self.node

    @cached_property
    def ssh_user(self) -> str:
        return self._text("ssh_user") or "root"

    @cached_property
    def ssh_port(self) -> int:
        value = self.get("ssh_port")
        if value is None or value == "":
            return 22
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = 0
        if isinstance(value, bool) or not 1 <= port <= 65535:
            raise self.error("ssh_port", f"{value!r} is not a TCP port")
        return port

    @property
    def sudo(self) -> bool:
        """Whether commands that need root go through sudo (the login is not root)."""
        return self.ssh_user != "root"

    # -- the desired state: the SKU's manifest -------------------------------------------------

    @cached_property
    def firmware_dir(self) -> Path:
        """Where the SKU manifests are: group data kiln_firmware_dir, else kiln's own."""
        configured = self._text("kiln_firmware_dir")
        return Path(configured).expanduser() if configured else FIRMWARE_DIR

    @cached_property
    def manifest_path(self) -> Path:
        """firmware_dir/<kiln_sku>.yaml"""
        if not self.sku:
            raise ValidationFailed([f"{self._where('kiln_sku')} is not set: which manifest "
                                    "applies?"])
        return manifest_path(self.firmware_dir, self.sku)

    @cached_property
    def manifest(self) -> Manifest:
        """The SKU's manifest, read and validated on first use; errors name the file."""
        return load_manifest(self.manifest_path)

    # -- the node's BMC, MAAS and UFM ----------------------------------------------------------

    @cached_property
    def bmc(self) -> BMC:
        """The node's BMC: endpoint, protocol, TLS, credentials entry."""
        model = self._model(BMC, "kiln_bmc")
        if model is None:
            raise KilnError(f"node {self.node or '?'}: host data has no kiln_bmc (the "
                            "inventory gives every node a bmc: address, protocol, ...)")
        return model

    @cached_property
    def has_bmc(self) -> bool:
        return bool(self.get("kiln_bmc"))

    @cached_property
    def maas_server(self) -> MAASServer | None:
        """The MAAS region the node is imaged by; None when the inventory names none."""
        return self._model(MAASServer, "kiln_maas_server")

    @cached_property
    def maas_identity(self) -> MAASIdentity:
        """How MAAS knows the node: its system_id, else its hostname (default: its name)."""
        value = self.get("kiln_maas")
        if isinstance(value, MAASIdentity):
            return value
        if value is not None and not isinstance(value, Mapping):
            raise self.error("kiln_maas", f"expected a mapping of system_id, hostname, got "
                                          f"{value!r}")
        fields = dict(value or {})
        if not fields.get("hostname") and self.node:
            fields["hostname"] = self.node
        if not fields.get("system_id") and not fields.get("hostname"):
            raise KilnError("host data has neither kiln_maas.system_id nor a node name")
        try:
            return MAASIdentity.model_validate(fields)
        except ValidationError as exc:
            raise KilnError("\n".join(pydantic_problems(self._where("kiln_maas"), exc))) \
                from None

    @cached_property
    def ufm_server(self) -> UFMServer | None:
        return self._model(UFMServer, "kiln_ufm_server")

    # -- credentials ----------------------------------------------------------------------------

    @cached_property
    def secrets_file(self) -> str | None:
        """The 0600 secrets file group data names, if any."""
        return self._text("kiln_secrets_file")

    @cached_property
    def secrets_env_prefix(self) -> str:
        return self._text("kiln_secrets_env_prefix") or DEFAULT_ENV_PREFIX

    def credentials(self, entry: str, fields: tuple[str, ...],
                    env: Mapping[str, str] | None = None) -> dict[str, Secret]:
        """One credentials entry, from the environment first, then the secrets file."""
        return lookup(entry, fields, env=env, secrets_file=self.secrets_file,
                      env_prefix=self.secrets_env_prefix)

    # -- kiln's records ----------------------------------------------------------------------

    @cached_property
    def ledger_path(self) -> Path:
        """The ledger (SQLite): kiln_ledger, default state/kiln.db."""
        return Path(self._text("kiln_ledger") or DEFAULT_LEDGER).expanduser()

    @cached_property
    def pool_file(self) -> Path:
        """The file pool backend: kiln_pool_file, default state/pool.yaml."""
        return Path(self._text("kiln_pool_file") or DEFAULT_POOL_FILE).expanduser()

    @cached_property
    def pool_backend(self) -> PoolBackend:
        """Where the training pool lives: group data kiln_pool, default the file pool."""
        return self._model(PoolBackend, "kiln_pool") or PoolBackend()


# pyinfra host -> (the keys' values the context was built from, the context)
_CONTEXTS: weakref.WeakKeyDictionary[Host, tuple[str, NodeContext]] = (
    weakref.WeakKeyDictionary()
)


def _snapshot(data: Any) -> str:
    getter = getattr(data, "get", None)
    return repr([getter(key) for key in KEYS]) if callable(getter) else ""


def node_context(target: Any, name: str | None = None) -> NodeContext:
    """The context of a pyinfra host (built once per host), of its HostData, or of a
    mapping of host data (a test's, a lab tool's; built each call). `name` is the node's
    name where the data has no kiln_node (the pyinfra host's name by default)."""
    if isinstance(target, NodeContext):
        return target
    host: Host | None = None
    if isinstance(target, Host):
        host = target
    elif isinstance(target, HostData):
        host = target.__dict__["host"]
    if host is None:
        data = target if isinstance(target, Mapping) or hasattr(target, "get") else \
            getattr(target, "data", target)
        if data is not target:
            name = name or getattr(target, "name", None)
        return NodeContext(data, name)
    name = name or host.name
    snapshot = _snapshot(host.data)
    cached = _CONTEXTS.get(host)
    if cached is not None and cached[0] == snapshot and cached[1]._name == name:
        return cached[1]
    context = NodeContext(host.data, name)
    _CONTEXTS[host] = (snapshot, context)
    return context
