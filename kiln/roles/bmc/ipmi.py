"""A BMC over IPMI 2.0 (RMCP+), driven with the real ipmitool.

    ipmitool -I lanplus -H <address> -p <port> -U <user> -E [-C <suite>] chassis power status

The password goes to ipmitool through the environment (IPMI_PASSWORD, read because of -E),
never on the command line, so it is not in `ps`, in a log line or in an error message.
ipmitool runs with a minimal environment (PATH, the password, TZ=UTC, LC_ALL=C), so its
dates are UTC in one format.

When a command fails to open a session, ipmitool says only "Unable to establish IPMI v2 /
RMCP+ session", for a wrong password as for a BMC that does not answer. Before retrying,
kiln runs one read-only `-v chassis power status` to learn which: "RAKP 2 HMAC is invalid"
or "unauthorized name" is a rejected login (never retried), no answer is transient.

`-C` (cipher suite): ipmitool's default asks the BMC which suites it has; a BMC that does not
answer that question (OpenIPMI's ipmi_sim) costs about 10 s per call, and one without suite
17 needs `-C 3`. The inventory's `cipher_suite` sets it per BMC.

Boot overrides are sent with `options=efiboot` by default: H100-class servers boot UEFI, and
several BMCs turn an override without it into a legacy PXE boot that finds nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

from kiln.core.parsing import ParseError
from kiln.core.retry import RetryPolicy
from kiln.core.secrets import MASK, Secret
from kiln.roles.bmc.errors import (
    BMCAuthError,
    BMCError,
    BMCUnsupported,
    TransientBMCError,
)
from kiln.roles.bmc.interface import (
    BMC_RESET_SETTLE_SECONDS,
    BMC_RESET_WAIT_SECONDS,
    BOOT_DEVICES,
    POLL_SECONDS,
    BiosValue,
    BootOverride,
    FirmwareComponent,
    LogEntry,
    PowerControl,
    UpdateResult,
    wait_for_bmc_restart,
)
from kiln.roles.bmc.parsers import (
    classify_failure,
    failure_lines,
    parse_boot_flags,
    parse_key_values,
    parse_power_status,
    parse_sel_list,
)
from kiln.roles.bmc.retry import call_bmc

Runner = Callable[..., subprocess.CompletedProcess]
POWER_COMMANDS = {"on": "on", "off": "off", "soft": "soft", "cycle": "cycle"}
IPMITOOL_BOOT = {"pxe": "pxe", "disk": "disk"}


class IpmiBMC(PowerControl):
    """A BMC reached with `ipmitool -I lanplus`."""

    def __init__(
        self,
        address: str,
        *,
        port: int = 623,
        username: Secret | str,
        password: Secret | str,
        label: str | None = None,
        retry: RetryPolicy | None = None,
        cipher_suite: int | None = None,
        efiboot: bool = True,
        packet_timeout: int | None = None,
        packet_retries: int | None = None,
        command_timeout: float = 120.0,
        poll_interval: float = POLL_SECONDS,
        credentials_entry: str = "bmc",
        ipmitool: str = "ipmitool",
        runner: Runner = subprocess.run,
    ):
        self.address = address
        self.port = port
        self.label = label or f"BMC {address} (ipmi)"
        self.retry = retry or RetryPolicy()
        self.cipher_suite = cipher_suite
        self.efiboot = efiboot
        self.packet_timeout = packet_timeout
        self.packet_retries = packet_retries
        self.command_timeout = command_timeout
        self.poll_interval = poll_interval
        self.credentials_entry = credentials_entry
        self.ipmitool = ipmitool
        self._runner = runner
        self._username = username.reveal() if isinstance(username, Secret) else username
        self._password = password.reveal() if isinstance(password, Secret) else password

    # -- running ipmitool ---------------------------------------------------------------

    def argv(self, *args: str, verbose: bool = False) -> list[str]:
        """The command line for `args`: never holds the password (-E reads it from env)."""
        argv = [self.ipmitool, "-I", "lanplus", "-H", self.address, "-p", str(self.port),
                "-U", self._username, "-E"]
        if verbose:
            argv.append("-v")
        if self.cipher_suite is not None:
            argv += ["-C", str(self.cipher_suite)]
        if self.packet_timeout is not None:
            argv += ["-N", str(self.packet_timeout)]
        if self.packet_retries is not None:
            argv += ["-R", str(self.packet_retries)]
        return argv + list(args)

    def _environment(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "IPMI_PASSWORD": self._password, "TZ": "UTC", "LC_ALL": "C"}

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, MASK) if self._password else text

    def _exec(self, args: tuple[str, ...], verbose: bool = False) -> subprocess.CompletedProcess:
        command = " ".join(args)
        try:
            return self._runner(self.argv(*args, verbose=verbose), env=self._environment(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=self.command_timeout, check=False)
        except FileNotFoundError:
            raise BMCError(f"{self.label}: {self.ipmitool} is not installed "
                           "(apt install ipmitool)") from None
        except subprocess.TimeoutExpired:
            raise TransientBMCError(f"ipmitool {command} ran past {self.command_timeout:.0f} s",
                                    certainly_not_applied=False) from None

    def _attempt(self, args: tuple[str, ...]) -> str:
        result = self._exec(args)
        if result.returncode == 0:
            return result.stdout
        stderr = self._scrub(result.stderr or "")
        kind = classify_failure(stderr)
        if kind == "unreachable":
            # ipmitool words a refused login and a silent BMC alike; -v tells them apart.
            probe = self._exec(("chassis", "power", "status"), verbose=True)
            if probe.returncode != 0:
                stderr = self._scrub(probe.stderr or "")
                kind = classify_failure(stderr)
        command = " ".join(args)
        if kind == "auth":
            raise BMCAuthError(
                f"{self.label}: the BMC rejected the credentials (user {self._username!r} of "
                f"entry {self.credentials_entry!r}): {failure_lines(stderr)}; not retried"
            )
        if kind == "cipher":
            suite = self.cipher_suite if self.cipher_suite is not None else "ipmitool's default"
            raise BMCUnsupported(
                f"{self.label}: the BMC does not offer cipher suite {suite} "
                f"({failure_lines(stderr)}); set cipher_suite for this BMC (3 or 17)"
            )
        if kind == "unreachable":
            # No session was opened, so the command never reached the BMC.
            raise TransientBMCError(f"ipmitool {command}: {failure_lines(stderr)}",
                                    certainly_not_applied=True)
        raise BMCError(f"{self.label}: ipmitool {command} failed (exit {result.returncode}): "
                       f"{failure_lines(stderr)}")

    def run(self, *args: str, write: bool = False) -> str:
        """ipmitool's stdout for `args`, with the retry policy and errors naming the BMC."""
        return call_bmc(self.retry, lambda: self._attempt(args), bmc=self.label,
                        what=f"ipmitool {' '.join(args)}", write=write)

    def _parsed(self, parser: Callable[[str], Any], text: str, what: str) -> Any:
        try:
            return parser(text)
        except ParseError as exc:
            raise BMCError(f"{self.label}: {what}: {exc}") from None

    # -- power ---------------------------------------------------------------------------

    def power_state(self) -> str:
        text = self.run("chassis", "power", "status")
        return self._parsed(parse_power_status, text, "chassis power status")

    def _power_action(self, action: str) -> None:
        self.run("chassis", "power", POWER_COMMANDS[action], write=True)

    # -- boot ----------------------------------------------------------------------------

    def boot_override(self) -> BootOverride:
        text = self.run("chassis", "bootparam", "get", "5")
        flags = self._parsed(parse_boot_flags, text, "chassis bootparam get 5")
        if not flags["valid"] or flags["device"] is None:
            return BootOverride(device=None)
        mode = None if flags["efi"] is None else ("UEFI" if flags["efi"] else "Legacy")
        return BootOverride(device=flags["device"], persistent=flags["persistent"], mode=mode)

    def set_boot_once(self, device: str) -> None:
        if device not in BOOT_DEVICES:
            raise BMCError(f"{self.label}: boot device {device!r} is not one of "
                           f"{', '.join(BOOT_DEVICES)}")
        args = ["chassis", "bootdev", IPMITOOL_BOOT[device]]
        if self.efiboot:
            args.append("options=efiboot")
        self.run(*args, write=True)

    # -- firmware, BIOS, log -------------------------------------------------------------

    def firmware_inventory(self) -> list[FirmwareComponent]:
        """IPMI knows one firmware: the BMC's own (`mc info`, Firmware Revision)."""
        info = self._parsed(parse_key_values, self.run("mc", "info"), "mc info")
        if "Firmware Revision" not in info:
            raise BMCError(f"{self.label}: mc info has no Firmware Revision line")
        maker = info.get("Manufacturer Name")
        name = f"BMC ({maker})" if maker and not maker.startswith("Unknown") else "BMC"
        return [FirmwareComponent(id="BMC", name=name, version=info["Firmware Revision"],
                                  updateable=False)]

    def update_firmware(self, component: str, image_uri: str,
                        timeout: float = 1800.0) -> UpdateResult:
        raise BMCUnsupported(
            f"{self.label}: IPMI has no standard firmware update; update {component} through "
            "the vendor's tool or the BMC's Redfish service"
        )

    def bios_attributes(self) -> dict[str, BiosValue]:
        raise BMCUnsupported(
            f"{self.label}: IPMI has no standard way to read BIOS attributes; read them "
            "through the BMC's Redfish service (bmc.protocol: redfish) or the vendor's tool"
        )

    def event_log(self, limit: int = 1000) -> list[LogEntry]:
        records = self._parsed(parse_sel_list, self.run("sel", "elist"), "sel elist")
        return [LogEntry(id=r["id"], created=r["created"], severity=r["severity"],
                         message=r["message"]) for r in records[-limit:]]

    # -- the BMC itself --------------------------------------------------------------------

    def reset_bmc(self, wait: float = BMC_RESET_WAIT_SECONDS,
                  settle: float = BMC_RESET_SETTLE_SECONDS) -> str:
        """Restart the BMC (`mc reset cold`), then wait until `mc info` answers again.
        Returns "cold"."""
        self.run("mc", "reset", "cold", write=True)
        wait_for_bmc_restart(self.label, self._mc_answer, wait=wait,
                             poll_interval=self.poll_interval, sleep=self.retry.sleep,
                             settle=settle)
        return "cold"

    def _mc_answer(self) -> str | None:
        """None when `mc info` answers; else why not. One attempt: the wait is the retry."""
        try:
            self._attempt(("mc", "info"))
        except TransientBMCError as exc:
            return str(exc)
        return None

    def close(self) -> None:
        """Nothing held between calls: each ipmitool run opens and closes its session."""
