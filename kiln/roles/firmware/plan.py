"""What a node's firmware update is, from what it runs and what the manifest pins.

Pure: `plan_update` takes the observed components (roles.firmware.observe) and the manifest's
components and says what to flash through which path, which resets make the images run, and
what kiln refuses to touch (a component with `update: none`, one with no blob: kiln never
guesses an image; one no source shows: kiln cannot flash what it cannot see).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.core.manifest import Blob, FirmwareComponent
from kiln.roles.firmware.observe import ComponentStatus


@dataclass(frozen=True)
class Flash:
    """One component to flash: through the BMC (its inventory Ids) or mlxfwmanager (devices)."""

    key: str
    version: str
    update: str  # "redfish" | "mlxfwmanager"
    activation: str  # "system-reset" | "bmc-reset" | "none"
    blob: Blob
    targets: tuple[str, ...]  # Redfish inventory Ids, or mlxfwmanager device names
    was: str  # what runs now, for the log: "FirmwareInventory/BIOS runs 1.5.0"


@dataclass
class UpdatePlan:
    flashes: list[Flash] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    @property
    def resets(self) -> list[str]:
        """The resets the flashed images need, in the order they are done."""
        wanted = {flash.activation for flash in self.flashes} - {"none"}
        return [reset for reset in ("bmc-reset", "system-reset") if reset in wanted]

    def summary(self) -> str:
        return ", ".join(f"{f.key} -> {f.version}" for f in self.flashes)


def plan_update(statuses: dict[str, ComponentStatus],
                components: dict[str, FirmwareComponent], manifest_file: str) -> UpdatePlan:
    plan = UpdatePlan()
    for key, status in statuses.items():
        if status.ok:
            continue
        component = components[key]
        where = f"{manifest_file}: firmware.{key}"
        if status.missing:
            plan.refusals.append(f"{status.describe()}; {where} names it, the node does not "
                                 "show it: not flashed")
            continue
        if component.update == "none":
            plan.refusals.append(f"{status.describe()}; {where}.update is none: kiln does not "
                                 "flash it (flash it by the vendor's procedure, run again)")
            continue
        if component.blob is None:
            plan.refusals.append(f"{status.describe()}; {where} has no blob: kiln never guesses "
                                 "an image")
            continue
        drifted = status.drifted
        if component.update == "redfish":
            targets = tuple(sorted({r.where.split("/", 1)[1] for r in drifted
                                    if r.source == "redfish"}))
        else:
            targets = tuple(sorted({r.device for r in drifted
                                    if r.source == "mlxfwmanager" and r.device}))
        if not targets:
            sources = ", ".join(sorted({r.source for r in drifted}))
            plan.refusals.append(f"{status.describe()}; {where}.update is {component.update}, "
                                 f"but only {sources} shows it out of date: not flashed")
            continue
        plan.flashes.append(Flash(key, component.version, component.update,
                                  component.activation, component.blob, targets,
                                  "; ".join(r.describe() for r in drifted)))
    return plan
