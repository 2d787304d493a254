"""ipmi_sim's chassis-control program for a lab node: IPMI chassis commands power the node.

OpenIPMI's `ipmi_sim` runs the `chassis_control` program of its configuration (lan.conf)
for every chassis command it receives, appending what it wants (see OpenIPMI's
lanserv/bmc_chassis.c and its example `ipmi_sim_chassiscontrol`):

    <program> get power boot          prints "power:1" / "boot:pxe", one line each
    <program> set power "0"|"1"       chassis power off / on (a cycle is off, 1 s, on)
    <program> set reset "1"           hard reset
    <program> set shutdown "1"        soft off (ACPI)
    <program> set boot "pxe"|"none"|"default"|"cdrom"|"bios"    chassis bootdev
    <program> set identify "15 0"     chassis identify

It exits non-zero with a message on stdout when it cannot do what was asked (ipmi_sim answers
the IPMI request with an error then). Here `<program>` is
`python -m lab.bmc.ipmi_chassis --lab DIR --node NAME`: power goes through lab.cluster, and a
`bootdev pxe` makes the next power-on boot from the network (`boot="pxe"`), once, as a
real BMC's boot flags are valid for the next boot only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kiln.lab.bmc.redfish_driver import LabPower

BOOT_DEVICES = ("none", "pxe", "default", "cdrom", "bios")


class ChassisError(Exception):
    pass


def boot_flag_path(lab: Path, node: str) -> Path:
    return Path(lab) / "bmc" / node / "ipmi-boot-device"


class Chassis:
    """One node's chassis as ipmi_sim sees it; `power` is lab.cluster (a recorder in tests)."""

    def __init__(self, lab: Path, node: str, power: LabPower) -> None:
        self.lab, self.node, self.power = Path(lab), node, power

    def get(self, parameter: str) -> str:
        if parameter == "power":
            return "1" if self.power.power_state(self.node) == "on" else "0"
        if parameter == "boot":
            return self.boot_device()
        raise ChassisError(f"get {parameter}: not a chassis parameter (power, boot)")

    def set(self, parameter: str, value: str) -> None:
        handlers = {"power": self._set_power, "reset": self._reset, "shutdown": self._shutdown,
                    "boot": self._set_boot, "identify": self._identify}
        if parameter not in handlers:
            raise ChassisError(f"set {parameter}: not a chassis parameter "
                               f"({', '.join(handlers)})")
        handlers[parameter](value)

    # -- boot device ------------------------------------------------------------------------
    def boot_device(self) -> str:
        path = boot_flag_path(self.lab, self.node)
        return path.read_text().strip() if path.exists() else "default"

    def _set_boot(self, device: str) -> None:
        if device not in BOOT_DEVICES:
            raise ChassisError(f"set boot {device}: not one of {', '.join(BOOT_DEVICES)}")
        path = boot_flag_path(self.lab, self.node)
        if device in ("none", "default"):
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(device + "\n")

    def _next_boot(self) -> str:
        """The boot source of the boot starting now; the flag is used up by it."""
        device = self.boot_device()
        boot_flag_path(self.lab, self.node).unlink(missing_ok=True)
        return "pxe" if device == "pxe" else "disk"

    # -- power ------------------------------------------------------------------------------
    def _on(self) -> bool:
        return self.power.power_state(self.node) == "on"

    def _set_power(self, value: str) -> None:
        if value not in ("0", "1"):
            raise ChassisError(f"set power {value}: expected 0 or 1")
        if value == "1" and not self._on():
            self.power.power_on(self.node, boot=self._next_boot(), wait=False)
        elif value == "0" and self._on():
            self.power.power_off(self.node)

    def _reset(self, value: str) -> None:
        # A reset of a chassis that is off does nothing: there is nothing running to reset.
        if value == "1" and self._on():
            self.power.power_cycle(self.node, boot=self._next_boot(), wait=False)

    def _shutdown(self, value: str) -> None:
        # The lab node has no ACPI: a soft off is an off.
        if value == "1" and self._on():
            self.power.power_off(self.node)

    def _identify(self, value: str) -> None:
        print(f"{self.node}: chassis identify {value} (no LED in the lab)", file=sys.stderr)


def run(chassis: Chassis, words: list[str]) -> str:
    """Do what ipmi_sim asked (`get P...` or `set P V ...`); the text to print."""
    if not words:
        raise ChassisError("no operation given (get or set)")
    operation, arguments = words[0], words[1:]
    if operation == "get":
        return "".join(f"{p}:{chassis.get(p)}\n" for p in arguments)
    if operation == "set":
        if len(arguments) % 2:
            raise ChassisError(f"set {' '.join(arguments)}: a parameter without a value")
        for parameter, value in zip(arguments[::2], arguments[1::2], strict=True):
            chassis.set(parameter, value)
        return ""
    if operation == "check":
        raise ChassisError("check is not supported for chassis control")
    raise ChassisError(f"unknown operation {operation!r} (get, set)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bmc.ipmi_chassis")
    parser.add_argument("--lab", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("words", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    os.environ["KILN_LAB_DIR"] = str(args.lab)  # where lab.cluster finds the lab
    from kiln.lab import cluster

    try:
        print(run(Chassis(args.lab, args.node, cluster), args.words), end="")
    except Exception as exc:  # ipmi_sim shows stdout and fails the IPMI request
        print(f"{args.node}: chassis {' '.join(args.words)}: {exc}")
        return 1
    if args.words[:1] == ["set"]:
        print(f"{args.node}: chassis {' '.join(args.words)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
