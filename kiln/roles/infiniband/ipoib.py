"""IPoIB: the node's address per rail (from the inventory's scheme), rendered for the OS's
network configuration, and what must change on the live interfaces.

The inventory (kiln.core.inventory `IPoIB`) gives each GPU node host data

    kiln_ipoib: {addresses: ["10.200.0.17/24", ...]  (rail order), mtu: int | None}

Rail r is the node's r-th InfiniBand HCA in device-name order (mlx5_0, mlx5_1, …, mlx5_10),
so a node whose HCAs all answer has rail r on mlx5_r. Ubuntu reads netplan (a file in
/etc/netplan), Debian ifupdown (a file in /etc/network/interfaces.d, which Debian's
/etc/network/interfaces sources). Either way the live interfaces are brought up with
iproute2 at once, so the stage does not depend on which network service the image runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.core.errors import KilnError
from kiln.roles.base.templates import render

NETPLAN_FILE = "/etc/netplan/60-kiln-ipoib.yaml"
IFUPDOWN_FILE = "/etc/network/interfaces.d/kiln-ipoib"
DATA_KEY = "kiln_ipoib"


@dataclass(frozen=True)
class IPoIBSettings:
    addresses: tuple[ipaddress.IPv4Interface, ...]
    mtu: int | None = None


def settings_from_data(value: Any, node: str) -> IPoIBSettings | None:
    """The node's IPoIB settings from host data `kiln_ipoib`; None when the inventory
    declares no scheme."""
    if value is None:
        return None
    where = f"node {node}: host data {DATA_KEY}"
    if not isinstance(value, Mapping) or not isinstance(value.get("addresses"), list | tuple):
        raise KilnError(f"{where}: expected {{addresses: [ADDRESS/PREFIX, ...], mtu}}, got "
                        f"{value!r}")
    try:
        addresses = tuple(ipaddress.IPv4Interface(a) for a in value["addresses"])
    except ValueError as exc:
        raise KilnError(f"{where}.addresses: {exc}") from None
    if not addresses:
        raise KilnError(f"{where}.addresses: empty")
    mtu = value.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)):
        raise KilnError(f"{where}.mtu: expected a number, got {mtu!r}")
    return IPoIBSettings(addresses, mtu)


@dataclass(frozen=True)
class RailPort:
    rail: int
    device: str
    netdev: str
    address: str  # "10.200.0.17/24"
    live: tuple[str, ...]  # the netdev's IPv4 addresses now
    up: bool

    @property
    def address_ok(self) -> bool:
        return self.live == (self.address,)


@dataclass
class IPoIBPlan:
    ports: list[RailPort]
    problems: list[str]


def ib_hcas(hcas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The InfiniBand HCAs, in rail order (parse_hca_report lists them in name order)."""
    return [hca for hca in hcas if hca.get("link_layer") != "Ethernet"]


def plan_ipoib(settings: IPoIBSettings, hcas: list[dict[str, Any]]) -> IPoIBPlan:
    ports, problems = [], []
    rails = ib_hcas(hcas)
    if len(rails) != len(settings.addresses):
        names = ", ".join(hca["device"] for hca in rails) or "none"
        problems.append(f"{len(rails)} InfiniBand HCA(s) ({names}) for "
                        f"{len(settings.addresses)} IPoIB rails")
    for rail, (hca, address) in enumerate(zip(rails, settings.addresses, strict=False)):
        if not hca.get("netdev"):
            problems.append(f"rail {rail}: {hca['device']} has no IPoIB netdev "
                            f"(/sys/class/infiniband/{hca['device']}/device/net is empty: "
                            "ib_ipoib not loaded?)")
            continue
        ports.append(RailPort(rail, hca["device"], hca["netdev"], str(address),
                              tuple(hca.get("ipoib") or ()), bool(hca.get("netdev_up"))))
    return IPoIBPlan(ports, problems)


def config_file(os_id: str | None) -> tuple[str, str]:
    """(path, template) of the IPoIB configuration for the OS /etc/os-release names."""
    if os_id == "ubuntu":
        return NETPLAN_FILE, "infiniband/ipoib-netplan.yaml.j2"
    if os_id == "debian":
        return IFUPDOWN_FILE, "infiniband/ipoib-ifupdown.j2"
    raise KilnError(f"IPoIB configuration for OS {os_id or '(unknown)'!r}: kiln writes netplan "
                    "(ubuntu) or ifupdown (debian)")


def render_config(os_id: str | None, ports: list[RailPort], mtu: int | None) -> tuple[str, str]:
    path, template = config_file(os_id)
    return path, render(template, ports=ports, mtu=mtu)


def live_commands(port: RailPort) -> list[str]:
    """iproute2 commands that make the live netdev what the file says; [] when it is."""
    commands = []
    if not port.address_ok:
        if port.live:
            commands.append(f"ip -4 addr flush dev {port.netdev} scope global")
        commands.append(f"ip addr add {port.address} dev {port.netdev}")
    if not port.up:
        commands.append(f"ip link set dev {port.netdev} up")
    return commands
