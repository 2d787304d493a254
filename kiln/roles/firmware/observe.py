"""Which firmware a node runs, per manifest component, from every source that reports it.

Pure functions over what the sources said (no I/O): the BMC's Redfish FirmwareInventory
(roles.bmc facts: [{id, name, version, updateable}]), `mlxfwmanager --query`
(roles.firmware.parsers) and `nvidia-smi -q` (roles.nvidia.parsers). A component is recognised
by the manifest's rules (roles.manifest.Recognition):

- `redfish`: every inventory member whose Id matches `id_pattern` and whose Name matches
  `name_pattern` (each a regular expression, searched; a pattern not given matches all). A
  BMC that reports GPUs and NICs (an iLO lists "NVIDIA H100 NVL", "ConnectX-7 …") is read the
  same way: every member recognised is one reading of the component.
- `psid`: every ConnectX device `mlxfwmanager` lists with that PSID; its running FW version.
- `nvidia_smi_field`: that field of every GPU block of `nvidia-smi -q` ("VBIOS Version", or
  a nested one as "Inforom Version/Image Version").

Every reading must show the pinned version. A source that was not read (None) contributes
nothing; a component no source shows is `missing`, which is drift too: kiln cannot say it
runs the pinned firmware.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kiln.core.manifest import FirmwareComponent


@dataclass(frozen=True)
class Reading:
    """One place a component's running version was read."""

    source: str  # "redfish" | "mlxfwmanager" | "nvidia-smi"
    where: str  # "FirmwareInventory/BIOS", "/dev/mst/mt4129_pciconf0", "GPU 00000000:19:00.0 …"
    version: str | None
    device: str | None = None  # what a flashing tool takes (mlxfwmanager -d), when it has one

    def describe(self) -> str:
        return f"{self.where} ({self.source}) runs {self.version or 'no version'}"


@dataclass(frozen=True)
class ComponentStatus:
    """A manifest component as the node runs it."""

    key: str  # the manifest's name: "bios", "connectx7" …
    pinned: str
    readings: list[Reading] = field(default_factory=list)
    sources_read: tuple[str, ...] = ()  # which of its recognition sources were read

    @property
    def drifted(self) -> list[Reading]:
        return [r for r in self.readings if not version_matches(self.pinned, r.version)]

    @property
    def missing(self) -> bool:
        return not self.readings

    @property
    def ok(self) -> bool:
        return not self.missing and not self.drifted

    def describe(self) -> str:
        if self.missing:
            looked = ", ".join(self.sources_read) or "no source was read"
            return f"{self.key}: pinned {self.pinned}, not found ({looked})"
        if not self.drifted:
            return f"{self.key}: {self.pinned} on {len(self.readings)} reading(s)"
        wrong = "; ".join(r.describe() for r in self.drifted)
        return f"{self.key}: pinned {self.pinned}; {wrong}"


def version_matches(pinned: str, reported: str | None) -> bool:
    """The reported version is the pinned one. Exact, except that a BMC may append a build
    stamp after a space ("1.66 Dec 13 2024" is iLO 6 version 1.66)."""
    if reported is None:
        return False
    reported = reported.strip()
    return reported == pinned or reported.startswith(pinned + " ")


def _searched(pattern: str | None, text: str | None) -> bool:
    return pattern is None or re.search(pattern, text or "") is not None


def redfish_readings(component: FirmwareComponent,
                     inventory: list[dict[str, Any]]) -> list[Reading]:
    rule = component.match.redfish
    if rule is None:
        return []
    return [
        Reading("redfish", f"FirmwareInventory/{item['id']}", item.get("version"))
        for item in inventory
        if _searched(rule.id_pattern, item.get("id")) and _searched(rule.name_pattern,
                                                                    item.get("name"))
    ]


def mlx_readings(component: FirmwareComponent, devices: list[dict[str, Any]]) -> list[Reading]:
    psid = component.match.psid
    if psid is None:
        return []
    readings = []
    for device in devices:
        if device.get("psid") != psid:
            continue
        fw = device.get("versions", {}).get("fw") or {}
        name = device.get("pci_device_name") or f"Device #{device.get('index')}"
        readings.append(Reading("mlxfwmanager", name, fw.get("current"), device=name))
    return readings


def _field(raw: dict[str, Any], path: str) -> Any:
    value: Any = raw
    for part in path.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(part.strip())
    return value


def gpu_readings(component: FirmwareComponent, smi: dict[str, Any]) -> list[Reading]:
    name = component.match.nvidia_smi_field
    if name is None:
        return []
    readings = []
    for gpu in smi.get("gpus", []):
        value = _field(gpu.get("raw") or {}, name)
        version = value.strip() if isinstance(value, str) else None
        readings.append(Reading("nvidia-smi", f"GPU {gpu['pci_bus_id']} {name}", version))
    return readings


def observe(
    components: dict[str, FirmwareComponent],
    redfish: list[dict[str, Any]] | None = None,
    mlxfwmanager: list[dict[str, Any]] | None = None,
    nvidia_smi: dict[str, Any] | None = None,
) -> dict[str, ComponentStatus]:
    """Each manifest component with every reading of it, from the sources that were read."""
    statuses = {}
    for key, component in components.items():
        readings: list[Reading] = []
        read: list[str] = []
        if component.match.redfish is not None and redfish is not None:
            readings += redfish_readings(component, redfish)
            read.append("Redfish FirmwareInventory")
        if component.match.psid is not None and mlxfwmanager is not None:
            readings += mlx_readings(component, mlxfwmanager)
            read.append(f"mlxfwmanager PSID {component.match.psid}")
        if component.match.nvidia_smi_field is not None and nvidia_smi is not None:
            readings += gpu_readings(component, nvidia_smi)
            read.append(f"nvidia-smi -q {component.match.nvidia_smi_field!r}")
        statuses[key] = ComponentStatus(key, component.version, readings, tuple(read))
    return statuses


def sources_needed(components: dict[str, FirmwareComponent]) -> set[str]:
    """Which sources the manifest's rules name: "redfish", "mlxfwmanager", "nvidia-smi"."""
    needed = set()
    for component in components.values():
        if component.match.redfish is not None:
            needed.add("redfish")
        if component.match.psid is not None:
            needed.add("mlxfwmanager")
        if component.match.nvidia_smi_field is not None:
            needed.add("nvidia-smi")
    return needed
