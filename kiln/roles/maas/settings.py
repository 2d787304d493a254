"""Which MAAS a node is imaged by, and with which key: read from the node's context.

The inventory gives the server (kiln.core.inventory `MAASServer`, host data
`kiln_maas_server`: url, verify_tls, ca_bundle, credentials) and the node's identity
(`kiln_maas`: system_id or hostname). The API key is never in the inventory: it is field
`api_key` of the credentials entry (default `maas`), from the environment
(`KILN_MAAS_API_KEY`) or the 0600 secrets file group data names (`kiln_secrets_file`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.secrets import env_name
from kiln.roles.maas.client import MAASClient
from kiln.roles.maas.errors import MAASError


def client_for_host(data: Any, *, env: Mapping[str, str] | None = None,
                    **client_options: Any) -> MAASClient:
    """The MAAS client for one node (a pyinfra host, its host data, or its NodeContext);
    errors name the node and the missing setting."""
    context = node_context(data)
    server = context.maas_server
    if server is None:
        raise MAASError(
            f"{context.label}: no MAAS server in the inventory (host data kiln_maas_server; "
            "set `maas: {url: http://<region>:5240/MAAS/}` at the top of the cluster inventory)"
        )
    entry = server.credentials
    key = context.credentials(entry, ("api_key",), env=env)["api_key"]
    source = env_name(context.secrets_env_prefix, entry, "api_key")
    if context.secrets_file:
        source += f" or entry {entry!r} of {context.secrets_file}"
    verify: bool | str = False
    if server.verify_tls:
        verify = server.ca_bundle or True
    return MAASClient(server.url, key, key_source=source, verify=verify, **client_options)


def identity_for_host(data: Any) -> dict[str, str | None]:
    """The node's MAAS identity (system_id, else hostname: by default the node's name)."""
    try:
        identity = node_context(data).maas_identity
    except KilnError as exc:
        raise MAASError(str(exc)) from None
    return {"system_id": identity.system_id, "hostname": identity.hostname}
