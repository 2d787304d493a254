"""The systems driver behind a lab node's Redfish BMC: sushy-tools' fake driver, made real.

sushy-tools' `FakeDriver` keeps a system's power state and boot device in a small database
and moves the power state by itself after a random delay. `LabSystemsDriver` keeps its
bookkeeping (names, UUID, NICs, boot override) and puts the lab node behind the rest:

- power is the node's: `PowerState` is what `lab.cluster.power_state` says, and
  ComputerSystem.Reset powers the node on, off or through a cycle (`On`/`ForceOn`;
  `ForceOff`/`GracefulShutdown`; `ForceRestart`/`GracefulRestart`/`PowerCycle`);
- a boot that starts while a Pxe boot override is set boots from the network
  (`boot="pxe"`, what MAAS reimages a node with); a `Once` override is used up by that
  boot, as a real BMC clears it, a `Continuous` one stays;
- firmware versions are the node's hardware profile (BIOS and BMC), and `set_versions`
  stages the released image of a version into the node's flash spool, active at the next
  reset (lab/bmc/firmware.py);
- the BIOS setup (`get_bios`, the Redfish Bios resource) is the profile's
  `bios_attributes`; `set_bios` (a PATCH of Bios/Settings) and `reset_bios`
  (Bios.ResetBios) only stage settings, which the node's next boot applies, as a BIOS
  does at POST; until then `get_bios_settings` shows them (lab/bmc/bios.py).

The lab is reached only through `power` (`lab.cluster` in the lab; tests pass a recorder).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any, Protocol

from sushy_tools import error
from sushy_tools.emulator.resources.systems.fakedriver import FakeDriver

from kiln.lab.bmc import bios, firmware

POWER_ON = ("On", "ForceOn")
POWER_OFF = ("ForceOff", "GracefulShutdown")
RESTART = ("ForceRestart", "GracefulRestart", "PowerCycle")
# "PushPowerButton" toggles; "Nmi" has nothing to interrupt in a lab node.
RESET_TYPES = POWER_ON + POWER_OFF + RESTART + ("PushPowerButton",)

OVERRIDE_ENABLED = ("Disabled", "Once", "Continuous")
# Boot sources sushy-tools' system resource offers (UefiHttp arrives here as Pxe or Cd).
BOOT_TARGETS = ("None", "Pxe", "Hdd", "Cd", "UefiHttp")


class LabPower(Protocol):
    """The lab's power calls the BMC makes (lab/cluster.py)."""

    def power_state(self, name: str) -> str: ...

    def power_on(self, name: str, boot: str = "disk", wait: bool = False) -> None: ...

    def power_off(self, name: str) -> None: ...

    def power_cycle(self, name: str, boot: str = "disk", wait: bool = False) -> None: ...


def system_uuid(node: str, serial: str) -> str:
    """A stable UUID for the node's system: the same lab node always has the same one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kiln-lab:{node}:{serial}"))


def lab_system(lab: Path, node: str, address: str) -> dict[str, Any]:
    """The one system a node's BMC serves, in sushy-tools' SUSHY_EMULATOR_FAKE_SYSTEMS shape
    (`address`: the node's management NIC's, beside its MAC)."""
    path = firmware.profile_path(lab, node)
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
        serial = profile["system"]["serial"]
        mac = profile["mgmt_nic"]["mac"]
    except FileNotFoundError:
        raise firmware.FirmwareError(f"node {node}: no hardware profile at {path}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise firmware.FirmwareError(f"{path}: no system.serial/mgmt_nic.mac ({exc})") from None
    return {
        "uuid": system_uuid(node, serial),
        "name": node,
        "power_state": "Off",  # unused: the node's real power is asked each time
        "external_notifier": False,
        "nics": [{"mac": mac, "ip": address}],
        "boot_device": "None",
        "boot_override": "Disabled",
    }


class LabSystemsDriver(FakeDriver):
    """sushy-tools' fake driver with one lab node behind it (see the module docstring)."""

    def __init__(
        self,
        config: dict[str, Any],
        logger: logging.Logger,
        lab: Path,
        node: str,
        power: LabPower,
    ) -> None:
        # FakeDriver reads its configuration from the instance (set by `initialize` on the
        # class otherwise); one driver per node, so per instance.
        self._config = config
        self._logger = logger
        self.lab = Path(lab)
        self.node = node
        self.power = power
        super().__init__()

    @property
    def driver(self) -> str:
        return f"<kiln lab node {self.node}>"

    # -- power ---------------------------------------------------------------------------
    def get_power_state(self, identity: str) -> str:
        self._get(identity)  # unknown identity: NotFound, as sushy-tools answers
        return "On" if self.power.power_state(self.node) == "on" else "Off"

    def set_power_state(self, identity: str, state: str) -> None:
        system = self._get(identity)
        if state not in RESET_TYPES:
            raise error.BadRequest(
                f"ResetType {state!r} is not supported by this system "
                f"(supported: {', '.join(RESET_TYPES)})"
            )
        on = self.power.power_state(self.node) == "on"
        if state == "PushPowerButton":
            state = "ForceOff" if on else "On"
        if state in POWER_OFF:
            if on:
                self.power.power_off(self.node)
            return
        if state in POWER_ON and on:
            return
        boot = self._boot_source(system)
        if state in POWER_ON:
            self.power.power_on(self.node, boot=boot, wait=False)
        else:
            self.power.power_cycle(self.node, boot=boot, wait=False)
        self._boot_started(system)

    # -- boot override ------------------------------------------------------------------
    def get_boot_device(self, identity: str) -> str:
        system = self._get(identity)
        if system.get("boot_override", "Disabled") == "Disabled":
            return "None"
        return system.get("boot_device", "None")

    def set_boot_device(self, identity: str, boot_source: str) -> None:
        system = self._get(identity)
        if boot_source not in BOOT_TARGETS:
            raise error.BadRequest(
                f"BootSourceOverrideTarget {boot_source!r} is not one of {', '.join(BOOT_TARGETS)}"
            )
        if boot_source == "None":
            self._update(system, boot_device="None", boot_override="Disabled")
            return
        enabled = system.get("boot_override", "Disabled")
        # A target set without saying for how long means the next boot (what sushy and
        # Ironic send; real BMCs default the same way).
        self._update(system, boot_device=boot_source,
                     boot_override="Once" if enabled == "Disabled" else enabled)

    def get_boot_override(self, identity: str) -> str:
        return self._get(identity).get("boot_override", "Disabled")

    def set_boot_override(self, identity: str, enabled: str) -> None:
        """BootSourceOverrideEnabled: Disabled, Once or Continuous."""
        if enabled not in OVERRIDE_ENABLED:
            raise error.BadRequest(
                f"BootSourceOverrideEnabled {enabled!r} is not one of {', '.join(OVERRIDE_ENABLED)}"
            )
        system = self._get(identity)
        if enabled == "Disabled":
            self._update(system, boot_override="Disabled", boot_device="None")
        else:
            self._update(system, boot_override=enabled)

    def _boot_source(self, system: dict[str, Any]) -> str:
        """What the next boot boots: the lab knows "pxe" (MAAS's network boot) and "disk"."""
        override = system.get("boot_override", "Disabled")
        if override != "Disabled" and system.get("boot_device") == "Pxe":
            return "pxe"
        return "disk"

    def _boot_started(self, system: dict[str, Any]) -> None:
        if system.get("boot_override") == "Once":
            self._update(system, boot_override="Disabled", boot_device="None")

    # -- firmware -----------------------------------------------------------------------
    def get_versions(self, identity: str) -> dict[str, str]:
        self._get(identity)
        try:
            running = firmware.running_versions(self.lab, self.node)
        except firmware.FirmwareError as exc:
            raise error.FishyError(str(exc)) from None
        return {firmware.VERSION_KEYS[c]: version for c, version in running.items()}

    def set_versions(self, identity: str, firmware_versions: dict[str, str]) -> None:
        """Stage the released image of each version; it is running after the next reset."""
        self._get(identity)
        components = {key: c for c, key in firmware.VERSION_KEYS.items()}
        for key in firmware_versions:
            if key not in components:
                raise error.BadRequest(
                    f"firmware {key!r} is not updatable here (updatable: {', '.join(components)})"
                )
        for key, version in firmware_versions.items():
            try:
                firmware.stage_version(self.lab, self.node, components[key], version)
            except firmware.FirmwareError as exc:
                raise error.BadRequest(str(exc)) from None

    def stage_image(self, identity: str, component: str, data: bytes) -> None:
        """Stage an image already checked by `firmware.identify_image` (SimpleUpdate)."""
        self._get(identity)
        firmware.stage_image(self.lab, self.node, component, data)

    def restart_bmc(self, identity: str) -> str | None:
        """The BMC restarts: a staged BMC image becomes the running one (its new version,
        or None when none was staged)."""
        self._get(identity)
        try:
            return firmware.activate_staged_bmc(self.lab, self.node)
        except firmware.FirmwareError as exc:
            raise error.FishyError(str(exc)) from None

    # -- BIOS setup ---------------------------------------------------------------------
    def get_bios(self, identity: str) -> dict[str, Any]:
        """The attributes in effect (the Bios resource)."""
        self._get(identity)
        try:
            return bios.current_attributes(self.lab, self.node)
        except bios.BiosError as exc:
            raise error.FishyError(str(exc)) from None

    def get_bios_settings(self, identity: str) -> dict[str, Any]:
        """The attributes the next boot will have (the Bios/Settings resource)."""
        self._get(identity)
        try:
            return bios.next_boot_attributes(self.lab, self.node)
        except bios.BiosError as exc:
            raise error.FishyError(str(exc)) from None

    def set_bios(self, identity: str, attributes: dict[str, Any]) -> None:
        """Stage attributes for the next boot; a wrong name or value refuses them all."""
        self._get(identity)
        try:
            bios.stage(self.lab, self.node, attributes)
        except bios.AttributeRejected as exc:
            raise error.BadRequest(f"BIOS attributes refused: {exc}") from None
        except bios.BiosError as exc:
            raise error.FishyError(str(exc)) from None

    def reset_bios(self, identity: str) -> None:
        """Stage every attribute's default for the next boot."""
        self._get(identity)
        try:
            bios.stage_defaults(self.lab, self.node)
        except bios.BiosError as exc:
            raise error.FishyError(str(exc)) from None
