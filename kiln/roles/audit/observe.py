"""One node's audit: every value the audit read, each beside what the manifest pins.

Pure functions over what the node and its BMC printed (no I/O). Every value has an `item`
that names the same thing on every node of a SKU ("firmware bios", "mlxconfig SRIOV_EN",
"hold libnccl2") and a `where` on the node ("mlx5_3", "GPU 00000000:19:00.0", "" for the node
itself), so the fleet can be compared item by item (kiln.roles.audit.fleet).

A value the manifest pins is `ok` when the node shows it (the same matching rules as the
stages that set it: firmware.observe for firmware, infiniband.mlxsettings for mlxconfig). A
value pinned nowhere has `expected` None: it is only compared with the other nodes of the SKU.
A source that could not be read (a part that timed out, a tool not installed, a BMC that
refused) gives no values, only a line in `unread`: the audit never calls unread values clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiln.core.manifest import Manifest
from kiln.core.parsing import ParseError
from kiln.core.sections import SectionOutput
from kiln.roles.audit.read import not_installed
from kiln.roles.base.parsers import parse_dpkg_query
from kiln.roles.firmware.observe import observe as observe_firmware
from kiln.roles.firmware.observe import version_matches
from kiln.roles.firmware.parsers import parse_mlxfwmanager
from kiln.roles.infiniband.mlxsettings import matches as mlx_matches
from kiln.roles.infiniband.parsers import parse_hca_report
from kiln.roles.nvidia.parsers import parse_nvidia_smi_q
from kiln.roles.nvidia.pinsets import driver_version

ABSENT = "absent"  # a pinned package, component or part the node does not have


class Fix(StrEnum):
    """What brings a drifted value back (kiln.roles.audit.report says it in words)."""

    BRINGUP = "bringup"  # kernel, packages, holds, driver, mlxconfig: bring-up pins them
    FIRMWARE = "firmware"  # firmware kiln flashes (update: redfish | mlxfwmanager)
    VENDOR = "vendor"  # firmware kiln only reports (update: none)
    BIOS = "bios"  # BIOS attributes: no kiln stage sets them
    HARDWARE = "hardware"  # count, model, link rate and width: a technician's work
    PIN = "pin"  # pinned nowhere, and the fleet disagrees


@dataclass(frozen=True)
class Value:
    item: str
    where: str
    found: str
    expected: str | None  # None: pinned nowhere
    fix: Fix
    ok: bool = True


@dataclass
class NodeAudit:
    node: str
    sku: str
    values: list[Value] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)  # "nvidia-smi -q: timed out after 60 s"
    unsupported: list[str] = field(default_factory=list)  # what the BMC does not offer

    @property
    def drifts(self) -> list[Value]:
        return [value for value in self.values if not value.ok]

    def pinned(self, item: str, where: str, found: str | None, expected: str, fix: Fix,
               ok: bool | None = None) -> None:
        shown = ABSENT if found is None else found
        if ok is None:
            ok = found is not None and found == expected
        self.values.append(Value(item, where, shown, expected, fix, ok))

    def seen(self, item: str, where: str, found: str | None, fix: Fix = Fix.PIN) -> None:
        """A value pinned nowhere: compared with the fleet only."""
        self.values.append(Value(item, where, ABSENT if found is None else found, None, fix))


@dataclass(frozen=True)
class BmcRead:
    """What the node's BMC answered: None where it was not read (and why, in `errors`)."""

    firmware: list[dict[str, Any]] | None = None
    bios: dict[str, Any] | None = None
    errors: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _section(audit: NodeAudit, found: dict[str, SectionOutput], name: str, what: str,
             ) -> str | None:
    """A section's text, or None (and a line in `unread`) when it says nothing to judge."""
    part = found.get(name)
    if part is None:
        audit.unread.append(f"{what}: not in the read")
        return None
    why = part.why_unreadable()
    if why is not None:
        why = why.replace(name, what, 1)  # the tool's own name, not the section's
    elif part.rc not in (0, None):
        last = (part.text.strip().splitlines() or [""])[-1]
        why = f"{what} exited {part.rc}: {last}"[:300]
    if why is not None:
        audit.unread.append(why)
        return None
    return part.text


def _parsed(audit: NodeAudit, what: str, parse: Any, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return parse(text)
    except ParseError as exc:
        audit.unread.append(f"{what}: could not be parsed: {exc}")
        return None


def _kernel(audit: NodeAudit, manifest: Manifest, text: str | None) -> None:
    if text is None:
        return
    kernel = manifest.os.kernel
    audit.pinned("kernel", "", text.strip() or None, f"{kernel.abi}-{kernel.flavour}",
                 Fix.BRINGUP)


def _packages(audit: NodeAudit, manifest: Manifest, part: SectionOutput | None) -> None:
    if part is None:
        audit.unread.append("dpkg-query: not in the read")
        return
    why = part.why_unreadable()
    if why is not None:
        audit.unread.append(why.replace("packages", "dpkg-query", 1))
        return
    rows, missing = not_installed(part.text)
    try:
        installed = parse_dpkg_query(rows)
    except ParseError as exc:
        audit.unread.append(f"dpkg-query: could not be parsed: {exc}")
        return
    holds = {pin.name: pin.hold for pin in manifest.packages.values()}
    for name, version in sorted(manifest.pinned_packages().items()):
        package = installed.get(name)
        if package is None or package["status"] != "i":
            # dpkg keeps a removed package's record ("rc", "un"): it is not installed.
            audit.pinned(f"package {name}", "", None, version, Fix.BRINGUP)
            continue
        audit.pinned(f"package {name}", "", package["version"], version, Fix.BRINGUP)
        hold = holds.get(name, True)  # the kernel's packages are held too (roles/base)
        audit.pinned(f"hold {name}", "", "held" if package["want"] == "h" else "not held",
                     "held" if hold else "not held", Fix.BRINGUP)
    for name in missing:
        if name not in manifest.pinned_packages():
            audit.unread.append(f"dpkg-query: unexpected line about {name!r}")


def _gpus(audit: NodeAudit, manifest: Manifest, smi: dict[str, Any] | None,
          firmware_fields: set[str]) -> None:
    if smi is None:
        return
    topology = manifest.topology.gpu
    audit.pinned("driver", "", smi.get("driver_version"), driver_version(manifest),
                 Fix.BRINGUP)
    audit.pinned("gpu count", "", str(len(smi["gpus"])), str(topology.count), Fix.HARDWARE)
    inforom = manifest.health.gpu.inforom_image
    for gpu in smi["gpus"]:
        where = f"GPU {gpu['pci_bus_id']}"
        if topology.model:
            audit.pinned("gpu model", where, gpu.get("product_name"), topology.model,
                         Fix.HARDWARE)
        else:
            audit.seen("gpu model", where, gpu.get("product_name"), Fix.HARDWARE)
        if topology.pcie is not None:
            width = gpu["pcie"].get("width_current")
            audit.pinned("gpu PCIe width", where, f"x{width}" if width else None,
                         f"x{topology.pcie.width}", Fix.HARDWARE)
        if "VBIOS Version" not in firmware_fields:
            audit.seen("gpu VBIOS", where, gpu.get("vbios_version"), Fix.VENDOR)
        image = gpu["inforom"].get("image")
        if inforom:
            audit.pinned("gpu InfoROM image", where, image, inforom, Fix.VENDOR)
        else:
            audit.seen("gpu InfoROM image", where, image, Fix.VENDOR)
        audit.seen("gpu GSP firmware", where, gpu.get("gsp_firmware_version"), Fix.VENDOR)


def _hcas(audit: NodeAudit, manifest: Manifest, report: dict[str, Any] | None) -> None:
    if report is None:
        return
    topology = manifest.topology.hca
    wanted = manifest.settings.mlxconfig
    audit.pinned("hca count", "", str(len(report["hcas"])), str(topology.count), Fix.HARDWARE)
    for hca in report["hcas"]:
        where = hca["device"]
        if topology.ca_type:
            audit.pinned("hca model", where, hca.get("ca_type"), topology.ca_type,
                         Fix.HARDWARE)
        if topology.port_rate_gbps:
            rate = hca.get("rate")
            audit.pinned("hca rate", where, f"{rate:g} Gb/s" if rate is not None else None,
                         f"{topology.port_rate_gbps} Gb/s", Fix.HARDWARE)
        audit.pinned("hca link layer", where, hca.get("link_layer"), topology.link_layer,
                     Fix.HARDWARE)
        if topology.pcie is not None:
            width = hca.get("pcie_width")
            audit.pinned("hca PCIe width", where, f"x{width}" if width else None,
                         f"x{topology.pcie.width}", Fix.HARDWARE)
        audit.seen("hca PSID", where, hca.get("psid"), Fix.HARDWARE)
        config = hca.get("mlxconfig")
        if config is None:
            if report.get("mlxconfig", True):
                audit.unread.append(f"mlxconfig -d {where}: "
                                    f"{hca.get('mlxconfig_error') or 'no answer'}")
            continue
        for key, value in sorted(wanted.items()):
            entry = config.get(key)
            current = entry.get("current") if entry else None
            audit.pinned(f"mlxconfig {key}", where, current, str(value), Fix.BRINGUP,
                         ok=mlx_matches(value, current))
        for key, entry in sorted(config.items()):
            if key not in wanted:
                audit.seen(f"mlxconfig {key}", where, entry.get("current"))
    if not report.get("mlxconfig", True) and wanted:
        audit.unread.append("mlxconfig: not installed (the manifest pins mlxconfig settings)")


def _firmware(audit: NodeAudit, manifest: Manifest, bmc: BmcRead,
              smi: dict[str, Any] | None, mlx: list[dict[str, Any]] | None) -> None:
    statuses = observe_firmware(manifest.firmware, redfish=bmc.firmware, mlxfwmanager=mlx,
                                nvidia_smi=smi)
    for key, status in statuses.items():
        component = manifest.firmware[key]
        fix = Fix.VENDOR if component.update == "none" else Fix.FIRMWARE
        if status.missing:
            if status.sources_read:  # read, and not there; unread sources say so already
                audit.pinned(f"firmware {key}", "", None, status.pinned, fix)
            continue
        for reading in status.readings:
            audit.pinned(f"firmware {key}", reading.where, reading.version, status.pinned,
                         fix, ok=version_matches(status.pinned, reading.version))
    if bmc.firmware is not None:
        recognised = {reading.where for status in statuses.values()
                      for reading in status.readings if reading.source == "redfish"}
        for member in bmc.firmware:
            where = f"FirmwareInventory/{member['id']}"
            if where not in recognised:
                audit.seen(f"firmware {member['id']}", where, member.get("version"),
                           Fix.VENDOR)


def _bios(audit: NodeAudit, manifest: Manifest, bmc: BmcRead) -> None:
    wanted = manifest.settings.bios
    if bmc.bios is None:
        return
    for key, value in sorted(wanted.items()):
        found = bmc.bios.get(key)
        audit.pinned(f"bios {key}", "", None if found is None else _text(found), _text(value),
                     Fix.BIOS)
    for key, found in sorted(bmc.bios.items()):
        if key not in wanted:
            audit.seen(f"bios {key}", "", _text(found), Fix.BIOS)


def audit_node(node: str, manifest: Manifest, found: dict[str, SectionOutput],
               bmc: BmcRead) -> NodeAudit:
    """Every value of one node's read (sections split by kiln.core.sections, the BMC's
    answers beside them), each against the manifest."""
    audit = NodeAudit(node, manifest.sku)
    audit.unread.extend(bmc.errors)
    audit.unsupported.extend(bmc.unsupported)
    _kernel(audit, manifest, _section(audit, found, "kernel", "the running kernel"))
    _packages(audit, manifest, found.get("packages"))
    smi = _parsed(audit, "nvidia-smi -q", parse_nvidia_smi_q,
                  _section(audit, found, "nvidia_smi", "nvidia-smi -q"))
    report = _parsed(audit, "the HCA report", parse_hca_report,
                     _section(audit, found, "hca", "the HCA report"))
    mlx = _parsed(audit, "mlxfwmanager --query", parse_mlxfwmanager,
                  _section(audit, found, "mlxfwmanager", "mlxfwmanager --query"))
    firmware_fields = {c.match.nvidia_smi_field for c in manifest.firmware.values()
                       if c.match.nvidia_smi_field}
    _gpus(audit, manifest, smi, firmware_fields)
    _hcas(audit, manifest, report)
    _firmware(audit, manifest, bmc, smi, mlx)
    _bios(audit, manifest, bmc)
    return audit
