"""Which MAAS a node is imaged by, and with which key: read from the node's host data.

The inventory gives the server (roles/inventory.py `MAASServer`, host data
`kiln_maas_server`: url, verify_tls, ca_bundle, credentials) and the node's identity
(`kiln_maas`: system_id or hostname). The API key is never in the inventory: it is field
`api_key` of the credentials entry (default `maas`), from the environment
(`KILN_MAAS_API_KEY`) or the 0600 secrets file group data names (`kiln_secrets_file`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiln.core.secrets import env_name, lookup
from kiln.roles.maas.client import MAASClient
from kiln.roles.maas.errors import MAASError


def _get(data: Any, key: str) -> Any:
    """Host data is a dict in tests and pyinfra's HostData in a run; both answer .get."""
    return data.get(key) if hasattr(data, "get") else getattr(data, key, None)


def client_for_host(data: Any, *, env: Mapping[str, str] | None = None,
                    **client_options: Any) -> MAASClient:
    """The MAAS client for one node; errors name the node and the missing setting."""
    node = _get(data, "kiln_node") or "this host"
    server = _get(data, "kiln_maas_server")
    if not server or not server.get("url"):
        raise MAASError(
            f"{node}: no MAAS server in the inventory (host data kiln_maas_server; set "
            "`maas: {url: http://<region>:5240/MAAS/}` at the top of the cluster inventory)"
        )
    entry = server.get("credentials") or "maas"
    prefix = _get(data, "kiln_secrets_env_prefix") or "KILN_"
    secrets_file = _get(data, "kiln_secrets_file")
    key = lookup(entry, ("api_key",), env=env, secrets_file=secrets_file,
                 env_prefix=prefix)["api_key"]
    source = env_name(prefix, entry, "api_key")
    if secrets_file:
        source += f" or entry {entry!r} of {secrets_file}"
    verify: bool | str = False
    if server.get("verify_tls", True):
        verify = server.get("ca_bundle") or True
    return MAASClient(server["url"], key, key_source=source, verify=verify, **client_options)


def identity_for_host(data: Any) -> dict[str, str | None]:
    """The node's MAAS identity from host data; hostname = the node's name by default."""
    identity = _get(data, "kiln_maas") or {}
    system_id = identity.get("system_id")
    hostname = identity.get("hostname") or _get(data, "kiln_node")
    if not system_id and not hostname:
        raise MAASError("host data has neither kiln_maas.system_id nor a node name")
    return {"system_id": system_id, "hostname": hostname}
