"""One interface to a node's BMC, whichever protocol the inventory names for it.

    from kiln.roles.bmc import connect
    bmc = connect(host)               # a pyinfra host (its node context), a BMC model, ...
    bmc.power_state()                 # "on" | "off"
    bmc.power_on(); bmc.set_boot_once("pxe"); bmc.firmware_inventory()

`connect` reads the node's BMC from its node context (kiln.core.context: `kiln_bmc`, the
inventory's kiln.core.inventory `BMC`: address, protocol
redfish|ipmi, port, verify_tls, ca_bundle, credentials) and returns a `RedfishBMC` (sushy)
or an `IpmiBMC` (ipmitool). Credentials come from roles/secrets.lookup: the entry the BMC
names (default `bmc`), environment first (KILN_BMC_USERNAME / KILN_BMC_PASSWORD), then the
0600 secrets file of group data (`kiln_secrets_file`). TLS is verified by default, against
`ca_bundle` when one is given; `verify_tls: false` is honoured and reported with a warning
naming the BMC at every connect, so a run's output always shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kiln.core.context import node_context
from kiln.core.errors import KilnError, pydantic_problems
from kiln.core.inventory import BMC
from kiln.core.retry import RetryPolicy
from kiln.core.secrets import Secret, lookup
from kiln.roles.bmc.errors import BMCError
from kiln.roles.bmc.interface import DEFAULT_PORTS, BMCClient
from kiln.roles.bmc.ipmi import IpmiBMC
from kiln.roles.bmc.redfish import RedfishBMC

logger = logging.getLogger("kiln.bmc")


# -- from the inventory to a client ------------------------------------------------------------


@dataclass(frozen=True)
class BMCTarget:
    """Where a node's BMC is and how to reach it, resolved from the inventory."""

    node: str | None
    address: str
    protocol: str
    port: int
    verify: bool | str  # True, False, or the CA bundle path
    credentials: str
    cipher_suite: int | None = None  # IPMI only: ipmitool -C

    @property
    def label(self) -> str:
        where = f"{self.address}:{self.port}" if self.port != DEFAULT_PORTS[self.protocol] \
            else self.address
        node = f", node {self.node}" if self.node else ""
        return f"BMC {where} ({self.protocol}{node})"


def _is_bmc_fields(bmc: Any) -> bool:
    """A BMC model, or a mapping of its fields (it has an address): not a node's host data."""
    return isinstance(bmc, BMC) or (isinstance(bmc, Mapping) and "address" in bmc)


def _bmc_model(value: Any, node: str | None) -> BMC:
    """The BMC model from a model or a mapping of its fields."""
    if isinstance(value, BMC):
        return value
    where = f"node {node}: kiln_bmc" if node else "kiln_bmc"
    if not isinstance(value, Mapping):
        raise BMCError(f"{where}: expected the node's BMC (address, protocol, ...), "
                       f"got {type(value).__name__}")
    try:
        return BMC.model_validate(dict(value))
    except ValidationError as exc:
        raise BMCError("\n".join(pydantic_problems(where, exc))) from None


def resolve_target(bmc: Any, node: str | None = None) -> BMCTarget:
    """A BMCTarget from a BMC model, a mapping of its fields, or a node (a pyinfra host,
    its host data, or its NodeContext: the inventory's `kiln_bmc`)."""
    if _is_bmc_fields(bmc):
        model = _bmc_model(bmc, node)
    else:
        context = node_context(bmc, node)
        node = context.node
        try:
            model = context.bmc
        except KilnError as exc:
            raise BMCError(str(exc)) from None
    verify: bool | str = True
    if not model.verify_tls:
        verify = False
    elif model.ca_bundle:
        verify = str(Path(model.ca_bundle).expanduser())
    return BMCTarget(
        node=node,
        address=model.address,
        protocol=model.protocol,
        port=model.port or DEFAULT_PORTS[model.protocol],
        verify=verify,
        credentials=model.credentials,
        cipher_suite=model.cipher_suite,
    )


def retry_from_data(settings: Any, target: BMCTarget) -> RetryPolicy | None:
    """Group data's `kiln_bmc_retry: {attempts, first_delay, factor, max_delay}`, if set."""
    if settings is None:
        return None
    fields = ("attempts", "first_delay", "factor", "max_delay")
    where = f"node {target.node}: kiln_bmc_retry" if target.node else "kiln_bmc_retry"
    if not isinstance(settings, Mapping) or set(settings) - set(fields):
        raise BMCError(f"{where}: expected a mapping of {', '.join(fields)}, got {settings!r}")
    try:
        return RetryPolicy(**{key: type(getattr(RetryPolicy, key))(value)
                              for key, value in settings.items()})
    except (TypeError, ValueError) as exc:
        raise BMCError(f"{where}: {exc}") from None


def credentials_for(target: BMCTarget, *, secrets_file: str | Path | None,
                    env: Mapping[str, str] | None, env_prefix: str) -> dict[str, Secret]:
    try:
        return lookup(target.credentials, ("username", "password"), env=env,
                      secrets_file=secrets_file, env_prefix=env_prefix)
    except KilnError as exc:
        raise BMCError(f"{target.label}: {exc}") from None


def connect(
    bmc: Any,
    *,
    node: str | None = None,
    secrets_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str | None = None,
    retry: RetryPolicy | None = None,
    warn: Callable[[str], None] | None = None,
) -> BMCClient:
    """The client for a node's BMC, by the protocol the inventory names.

    `bmc` is a node: a pyinfra host, its host data or its NodeContext (kiln.core.context:
    its BMC, name and secrets settings, and group data `kiln_bmc_retry`, are used); or a
    kiln.core.inventory.BMC, or a mapping of its fields.
    Nothing is sent to the BMC until the first call.
    """
    if _is_bmc_fields(bmc):
        target = resolve_target(bmc, node)
    else:
        context = node_context(bmc, node)
        target = resolve_target(context)
        secrets_file = secrets_file or context.secrets_file
        env_prefix = env_prefix or context.secrets_env_prefix
        if retry is None:
            retry = retry_from_data(context.get("kiln_bmc_retry"), target)
    secret = credentials_for(target, secrets_file=secrets_file, env=env,
                             env_prefix=env_prefix or "KILN_")
    retry = retry or RetryPolicy()
    if target.protocol == "ipmi":
        return IpmiBMC(target.address, port=target.port, username=secret["username"],
                       password=secret["password"], label=target.label, retry=retry,
                       cipher_suite=target.cipher_suite, credentials_entry=target.credentials)
    if target.verify is False:
        (warn or logger.warning)(
            f"{target.label}: TLS certificate verification is OFF (verify_tls: false in the "
            "inventory); anyone on the path can read its credentials"
        )
    host = f"[{target.address}]" if ":" in target.address else target.address
    return RedfishBMC(f"https://{host}:{target.port}", username=secret["username"],
                      password=secret["password"], verify=target.verify, label=target.label,
                      retry=retry, credentials_entry=target.credentials)
