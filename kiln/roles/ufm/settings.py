"""The ufm role's settings, from a node's context and group data.

    kiln_ufm_server        the inventory's UFMServer (url, verify_tls, ca_bundle,
                           credentials entry, timezone): kiln.core.context `ufm_server`
    kiln_ufm_retry         {attempts, first_delay, factor, max_delay}, optional
    kiln_fabric_manager    "ufm" (default) or "opensm"
    kiln_ufm_pkeys         the tenant PKeys (kiln.core.fabric.PKeyDeclaration), a list
    kiln_opensm            opensm's settings (kiln.roles.ufm.opensm.OpenSMSettings)

Credentials: the entry the UFMServer names (default `ufm`): a token
(KILN_UFM_TOKEN, or `token` in the secrets file), else username and password
(KILN_UFM_USERNAME / KILN_UFM_PASSWORD, or the file's fields).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from kiln.core.context import NodeContext, node_context
from kiln.core.errors import KilnError, pydantic_problems
from kiln.core.fabric import FabricManager, PKeyDeclaration, unique_pkeys
from kiln.core.inventory import UFMServer
from kiln.core.retry import RetryPolicy
from kiln.core.secrets import MissingCredential, env_name
from kiln.roles.ufm.client import DEFAULT_RETRY, UFMClient
from kiln.roles.ufm.errors import UFMError

logger = logging.getLogger("kiln.ufm")
RETRY_FIELDS = ("attempts", "first_delay", "factor", "max_delay")


def ufm_server(ctx: NodeContext) -> UFMServer:
    try:
        server = ctx.ufm_server
    except KilnError as exc:
        raise UFMError(str(exc)) from None
    if server is None:
        raise UFMError(f"node {ctx.label}: host data has no kiln_ufm_server (the inventory's "
                       "`ufm:` url, ca_bundle, credentials); or set kiln_fabric_manager: "
                       "opensm for a fabric without UFM")
    return server


def verify_setting(server: UFMServer) -> bool | str:
    if not server.verify_tls:
        return False
    return str(Path(server.ca_bundle).expanduser()) if server.ca_bundle else True


def retry_policy(ctx: NodeContext) -> RetryPolicy:
    settings = ctx.get("kiln_ufm_retry")
    if settings is None:
        return DEFAULT_RETRY
    where = f"node {ctx.label}: kiln_ufm_retry"
    if not isinstance(settings, Mapping) or set(settings) - set(RETRY_FIELDS):
        raise UFMError(f"{where}: expected a mapping of {', '.join(RETRY_FIELDS)}, "
                       f"got {settings!r}")
    try:
        return RetryPolicy(**{key: type(getattr(DEFAULT_RETRY, key))(value)
                              for key, value in settings.items()})
    except (TypeError, ValueError) as exc:
        raise UFMError(f"{where}: {exc}") from None


def client_for(target: Any, *, env: Mapping[str, str] | None = None,
               warn: Callable[[str], None] | None = None) -> UFMClient:
    """The UFM client of a node (a pyinfra host, its host data or NodeContext)."""
    ctx = node_context(target)
    server = ufm_server(ctx)
    verify = verify_setting(server)
    entry = server.credentials
    source = f"secrets entry {entry!r}"
    try:
        try:
            token = ctx.credentials(entry, ("token",), env=env)["token"]
            creds: dict[str, Any] = {"token": token}
        except MissingCredential:
            creds = dict(ctx.credentials(entry, ("username", "password"), env=env))
    except KilnError as exc:
        token_env = env_name(ctx.secrets_env_prefix, entry, "token")
        raise UFMError(f"UFM {server.url}: {exc} (or {token_env} for token "
                       "authentication)") from None
    if verify is False:
        (warn or logger.warning)(
            f"UFM {server.url}: TLS certificate verification is OFF (verify_tls: false in "
            "the inventory); anyone on the path can read its credentials"
        )
    return UFMClient(server.url, **creds, credentials_source=source, verify=verify,
                     retry=retry_policy(ctx))


def fabric_manager(ctx: NodeContext) -> FabricManager:
    value = ctx.get("kiln_fabric_manager") or "ufm"
    if value not in ("ufm", "opensm"):
        raise KilnError(f"node {ctx.label}: host data kiln_fabric_manager: {value!r} is not "
                        "'ufm' or 'opensm'")
    return value


_PKEYS = TypeAdapter(list[PKeyDeclaration])


def pkey_declarations(ctx: NodeContext) -> list[PKeyDeclaration]:
    """Group data kiln_ufm_pkeys, validated whole: every problem named at once."""
    value = ctx.get("kiln_ufm_pkeys")
    if value is None:
        return []
    where = f"node {ctx.label}: host data kiln_ufm_pkeys"
    try:
        declared = _PKEYS.validate_python(
            [d.model_dump() if isinstance(d, PKeyDeclaration) else d for d in value]
            if isinstance(value, list) else value
        )
    except ValidationError as exc:
        raise KilnError("\n".join(pydantic_problems(where, exc))) from None
    problems = unique_pkeys(declared)
    if problems:
        raise KilnError("\n".join(f"{where}: {p}" for p in problems))
    return declared


def pkey_declaration(ctx: NodeContext, pkey: str) -> PKeyDeclaration:
    """The declaration of one PKey, by its value ("0x0a12", "0xa12") or its name."""
    for declared in pkey_declarations(ctx):
        if declared.name == pkey or (pkey.lower().startswith("0x")
                                     and int(pkey, 16) == declared.value):
            return declared
    raise KilnError(f"node {ctx.label}: PKey {pkey!r} is not declared in kiln_ufm_pkeys")
