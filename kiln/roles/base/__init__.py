"""Base: the OS layer every node gets before anything else is installed.

    base()   apt from the mirror only (its key in /etc/apt/keyrings), unattended-upgrades
             off, the manifest's kernel exact and held, memlock unlimited for RDMA, sysctl,
             chrony against the cluster's NTP servers, the hostname from the inventory.

apt's source is the cluster mirror (roles/mirror), or host data kiln_apt_mirror where set
(roles.base.aptsources). Settings are host data (roles.base.settings); versions come from
the node's manifest (firmware/<kiln_sku>.yaml). The pinning machinery (roles.base.aptpins,
operations `apt_index_current` and `pinned_packages`) is shared with the roles that install
packages.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy, operation
from pyinfra.operations import server

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.manifest import Manifest
from kiln.core.outcomes import preview, refuse
from kiln.roles.base import operations
from kiln.roles.base.aptpins import Pin, PinSet
from kiln.roles.base.aptsources import apt_source_config
from kiln.roles.base.settings import BaseSettings, settings_from_data


def _service_node_address() -> str | None:
    """The first service node's address: where the cluster's own services run."""
    group = inventory.get_group("service", None) if inventory else None
    for member in group or []:
        return node_context(member).address
    return None


def settings_for_host() -> BaseSettings:
    defaults: dict[str, Any] = {"hostname": node_context(host).node}
    service = _service_node_address()
    if service:
        defaults["ntp_servers"] = [service]
    return settings_from_data(host.data, defaults)


def kernel_pin_set(manifest: Manifest) -> PinSet:
    pins = tuple(Pin(name, version, "os.kernel")
                 for name, version in sorted(manifest.os.kernel.packages.items()))
    # The old kernel stays installed: the node may still be running it.
    return PinSet("base", "kernel", pins, remove_replaced=False)


@operation()
def node_hostname(hostname: str):  # noqa: ANN201 - pyinfra operation generator
    """The node's hostname is its inventory name (pyinfra's server.hostname)."""
    if not operations.node_readable():
        yield preview("hostname")
        return
    yield from server.hostname._inner(hostname=hostname)


@deploy("Base: OS pins, apt sources, kernel, RDMA limits")
def base() -> None:
    try:
        settings = settings_for_host()
        context = node_context(host)
        manifest, path = context.manifest, context.manifest_path
        apt_source = apt_source_config(settings.apt_mirror, host.data)
    except KilnError as exc:
        refuse(name="Base settings and manifest", message=str(exc))
        return
    source = str(path)
    kernel = kernel_pin_set(manifest)
    # First: every later operation that installs needs a dpkg that is not mid-run.
    operations.dpkg_recovered(name="dpkg finished what an interrupted run left",
                              lock_wait=settings.dpkg_lock_wait)
    operations.apt_mirror_only(name="apt installs from the mirror only", config=apt_source)
    operations.unattended_upgrades_off(name="unattended-upgrades off")
    operations.apt_index_current(name="apt index has the pinned kernel",
                                 pins=[(pin.name, pin.version) for pin in kernel.pins])
    operations.pinned_packages(name="Kernel exact and held", scope="base", sets=[kernel],
                               manifest=source)
    operations.rdma_limits(name="memlock for RDMA", memlock=settings.memlock)
    operations.sysctl_settings(name="sysctl", settings=settings.sysctl)
    operations.time_sync(name="Time sync (chrony)", servers=settings.ntp_servers,
                         sets_clock=settings.time_sync_sets_clock)
    node_hostname(name="Hostname from the inventory", hostname=settings.hostname)
