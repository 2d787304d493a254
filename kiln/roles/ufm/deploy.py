"""opensm on a service node, for a fabric without UFM (`kiln_fabric_manager: opensm`).

Installing opensm (pinned, from the mirror) is the base/infiniband roles' business; this
writes its configuration and its partitions file from the same PKey declaration UFM's
partitions are made from, and restarts opensm only when either file changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import StringIO

from pydantic import ValidationError
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from kiln.core.context import node_context
from kiln.core.errors import KilnError, pydantic_problems
from kiln.core.outcomes import refuse
from kiln.roles.ufm.opensm import OpenSMSettings, render_conf, render_partitions
from kiln.roles.ufm.settings import fabric_manager, pkey_declarations


def opensm_settings(ctx: object) -> OpenSMSettings:
    context = node_context(ctx)
    value = context.get("kiln_opensm") or {}
    if isinstance(value, OpenSMSettings):
        return value
    try:
        return OpenSMSettings.model_validate(dict(value))
    except (ValidationError, TypeError, ValueError) as exc:
        where = f"node {context.label}: host data kiln_opensm"
        if isinstance(exc, ValidationError):
            raise KilnError("\n".join(pydantic_problems(where, exc))) from None
        raise KilnError(f"{where}: {exc}") from None


@deploy("opensm: configuration and partitions")
def opensm(members: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """`members`: PKey ("0x0a12") -> port GUID -> membership (the caller resolves them
    with PKeyDeclaration.resolve from the nodes' HCA port GUIDs)."""
    try:
        ctx = node_context(host)
        settings = opensm_settings(ctx)
        partitions = render_partitions(pkey_declarations(ctx), members or {})
        conf = render_conf(settings)
    except KilnError as exc:
        refuse(name="opensm settings", message=str(exc))
        return
    written = [
        files.put(name="opensm.conf", src=StringIO(conf), dest=settings.conf_path,
                  mode="644", _sudo=ctx.sudo),
        files.put(name="opensm partitions", src=StringIO(partitions),
                  dest=settings.partitions_path, mode="644", _sudo=ctx.sudo),
    ]
    systemd.service(name="opensm running and enabled", service=settings.service,
                    running=True, enabled=True, _sudo=ctx.sudo)
    systemd.service(name="opensm restarted for its new configuration",
                    service=settings.service, restarted=True, _sudo=ctx.sudo,
                    _if=any_changed(*written))


def opensm_declared(ctx: object) -> bool:
    """Whether this node runs the fabric's opensm: a service node of a cluster declaring
    `kiln_fabric_manager: opensm` and at least one PKey (kiln_ufm_pkeys). Raises KilnError
    for a bad declaration."""
    context = node_context(ctx)
    return (context.role == "service" and fabric_manager(context) == "opensm"
            and bool(pkey_declarations(context)))


@deploy("Subnet manager: opensm where the cluster declares it")
def subnet_manager(members: Mapping[str, Mapping[str, str]] | None = None) -> None:
    """opensm() on a service node when opensm_declared(); elsewhere nothing. Until the gate
    passes `members` (its pooled nodes' port GUIDs), the declared tenant PKeys are written
    with no members (the management partition holds every port)."""
    try:
        declared = opensm_declared(host)
    except KilnError as exc:
        refuse(name="opensm declaration", message=str(exc))
        return
    if declared:
        opensm(members=members)
