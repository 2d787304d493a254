"""How the MAAS simulator drives a machine's power: through its BMC, over the network.

MAAS's power drivers talk to the BMC the machine was enlisted with; so does the simulator,
never to the lab's node code. `redfish` machines go through the sushy client (one-time PXE
boot override, then ResetSystem) with the lab CA bundle, so the BMC's certificate is checked;
`ipmi` machines through `ipmitool -I lanplus` (chassis bootdev pxe, chassis power ...), the
password passed in the environment (`-E`), never on a command line. Credentials are the lab's
`bmc` entry, read when the driver is made.

A `PowerDriver` is the seam the unit tests use: they inject one that plays the BMC and the
lab's PXE side, since the thing under test is the MAAS simulator.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import exceptions as sushy_exceptions

COMMAND_TIMEOUT = 30  # seconds for one BMC command
# What talking to a Redfish BMC can raise besides sushy's own errors: requests' (TLS, a bad
# CA bundle path) and the OS's.
_REDFISH_ERRORS = (sushy_exceptions.SushyError, requests.RequestException, OSError)
# What ipmitool prints when the BMC answers but refuses the user or the password.
_IPMI_REFUSALS = ("unauthorized name", "hmac is invalid", "invalid user name",
                  "insufficient privilege")


class PowerError(Exception):
    """The BMC could not be reached or failed the action: MAAS tries again a few times."""


class PowerFatalError(PowerError):
    """Trying again cannot help (refused credentials, no tool, no credentials): MAAS's
    PowerFatalError, which fails the power action at once."""


class PowerDriver(Protocol):
    def power_state(self) -> str:
        """ "on" or "off"."""

    def power_on(self, pxe: bool) -> None:
        """Boot the machine, from the network once when `pxe`; a running one is reset."""

    def power_off(self) -> None: ...


@dataclass(frozen=True)
class BmcCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"BmcCredentials(username={self.username!r}, password=<hidden>)"


class RedfishPower:
    def __init__(self, address: str, port: int, credentials: BmcCredentials,
                 ca_bundle: str | None) -> None:
        host = address if port == 443 else f"{address}:{port}"
        self.where = f"Redfish BMC https://{host}"
        self._url = f"https://{host}/redfish/v1/"
        self._credentials = credentials
        self._verify: str | bool = ca_bundle or True

    def _system(self) -> sushy.resources.system.system.System:
        try:
            root = sushy.Sushy(
                self._url,
                verify=self._verify,
                auth=sushy_auth.BasicAuth(self._credentials.username,
                                          self._credentials.password),
                server_side_retries=2,
                server_side_retries_delay=1,
                read_timeout=COMMAND_TIMEOUT,
                connect_timeout=10,
            )
            members = root.get_system_collection().members_identities
            if not members:
                raise PowerError(f"{self.where}: its Systems collection is empty")
            # MAAS's redfish driver takes the first member when no node_id is configured.
            return root.get_system(sorted(members)[0])
        except sushy_exceptions.AccessError as exc:
            raise PowerFatalError(f"{self.where}: {exc}") from None
        except _REDFISH_ERRORS as exc:
            raise PowerError(f"{self.where}: {exc}") from None

    def power_state(self) -> str:
        system = self._system()
        state = system.power_state
        if state in (sushy.PowerState.ON, sushy.PowerState.POWERING_OFF):
            return "on"
        if state in (sushy.PowerState.OFF, sushy.PowerState.POWERING_ON):
            return "off"
        raise PowerError(f"{self.where}: unknown PowerState {state!r}")

    def power_on(self, pxe: bool) -> None:
        # MAAS's redfish driver: a running system is forced off first, then the one-time
        # PXE override, then On.
        system = self._system()
        try:
            if system.power_state != sushy.PowerState.OFF:
                system.reset_system(sushy.ResetType.FORCE_OFF)
            if pxe:
                system.set_system_boot_options(
                    sushy.BootSource.PXE, enabled=sushy.BootSourceOverrideEnabled.ONCE
                )
            system.reset_system(sushy.ResetType.ON)
        except _REDFISH_ERRORS as exc:
            raise PowerError(f"{self.where}: {exc}") from None

    def power_off(self) -> None:
        system = self._system()
        try:
            if system.power_state != sushy.PowerState.OFF:
                system.reset_system(sushy.ResetType.FORCE_OFF)
        except _REDFISH_ERRORS as exc:
            raise PowerError(f"{self.where}: {exc}") from None


class IpmiPower:
    def __init__(self, address: str, port: int, credentials: BmcCredentials,
                 retries: int = 3) -> None:
        self.where = f"IPMI BMC {address}:{port}"
        self._address = address
        self._port = port
        self._credentials = credentials
        self._retries = retries

    def _ipmitool(self, *command: str) -> str:
        # -C 3: MAAS's IPMI driver's default cipher suite (power_parameters cipher_suite_id).
        # -N/-R: a 1 s answer timeout, 3 retries (by default: Timing.ipmi_retries): a BMC
        # that does not answer is reported in seconds (ipmitool's defaults take 20 s), one on
        # a busy network still gets through.
        # -L OPERATOR: the privilege MAAS's IPMI driver asks for by default.
        argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-L", "OPERATOR", "-H", self._address,
                "-p", str(self._port), "-U", self._credentials.username, "-E",
                "-N", "1", "-R", str(self._retries), *command]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                env={**os.environ, "IPMI_PASSWORD": self._credentials.password},
            )
        except FileNotFoundError:
            raise PowerFatalError(f"{self.where}: ipmitool is not installed") from None
        except subprocess.TimeoutExpired:
            raise PowerError(
                f"{self.where}: ipmitool {' '.join(command)} gave no answer in "
                f"{COMMAND_TIMEOUT} s"
            ) from None
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()
            why = output.splitlines()[-1] if output else f"exit {done.returncode}"
            refused = any(text in output.lower() for text in _IPMI_REFUSALS)
            raise (PowerFatalError if refused else PowerError)(
                f"{self.where}: ipmitool {' '.join(command)} failed: {why}"
            )
        return done.stdout

    def power_state(self) -> str:
        answer = self._ipmitool("chassis", "power", "status").strip().lower()
        if answer.endswith(" on"):
            return "on"
        if answer.endswith(" off"):
            return "off"
        raise PowerError(f"{self.where}: unexpected answer to chassis power status: {answer!r}")

    def power_on(self, pxe: bool) -> None:
        # MAAS's IPMI driver: boot flags, then "cycle, or on if off".
        if pxe:
            self._ipmitool("chassis", "bootdev", "pxe")
        if self.power_state() == "on":
            self._ipmitool("chassis", "power", "cycle")
        else:
            self._ipmitool("chassis", "power", "on")

    def power_off(self) -> None:
        self._ipmitool("chassis", "power", "off")


def bmc_credentials(secrets: dict[str, dict[str, str]], source: str) -> BmcCredentials:
    entry = secrets.get("bmc") or {}
    if not entry.get("username") or not entry.get("password"):
        raise PowerFatalError(f"{source}: no bmc username/password entry")
    return BmcCredentials(entry["username"], entry["password"])


def driver_for(power_type: str, address: str, port: int, credentials: BmcCredentials,
               ca_bundle: Path | str | None, ipmi_retries: int = 3) -> PowerDriver:
    if power_type == "redfish":
        return RedfishPower(address, port, credentials, str(ca_bundle) if ca_bundle else None)
    if power_type == "ipmi":
        return IpmiPower(address, port, credentials, retries=ipmi_retries)
    raise PowerFatalError(f"power type {power_type!r} is not one the MAAS simulator drives "
                     "(redfish, ipmi)")
