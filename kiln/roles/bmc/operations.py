"""pyinfra operations on a node's BMC, run on the controller.

Each reads the BMC in its body (roles/bmc/facts.py) and yields a `FunctionCommand` only when
something must change, so a second run reports no change and `--dry` shows what would be
done without doing it:

    from kiln.roles.bmc import operations as bmc
    bmc.power(name="Power on", state="on")
    bmc.boot_once(name="Network boot next", device="pxe")
    bmc.firmware_update(name="BIOS", component="BIOS", image_uri=..., sha256=..., version=...)
    bmc.reboot(name="Reboot through the BMC")      # or `yield from reboot_commands()`

A BMC that cannot be read or refuses a change fails that host alone, with the error naming
the node's BMC; pyinfra goes on with the other hosts and exits non-zero.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import closing

import requests
from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.exceptions import ConnectError, OperationValueError
from pyinfra.api.host import Host
from pyinfra.api.state import State

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.outcomes import fail, fail_host
from kiln.roles.bmc import facts
from kiln.roles.bmc.interface import BOOT_DEVICES, POWER_WAIT_SECONDS

logger = logging.getLogger("pyinfra")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -- power ----------------------------------------------------------------------------------


def _set_power(state: State, host: Host, wanted: str, graceful: bool, wait: float) -> bool:
    try:
        with closing(facts.bmc_for(host)) as bmc:
            if wanted == "on":
                changed = bmc.power_on(wait)
            else:
                changed = bmc.power_off(graceful=graceful, wait=wait)
    except KilnError as exc:
        return fail_host(host, str(exc))
    if changed:
        host.log(f"BMC: powered {wanted}", log_func=logger.info)
    return True


@operation()
def power(state: str = "on", graceful: bool = False,  # noqa: ANN201 - pyinfra generator
          wait: float = POWER_WAIT_SECONDS):
    """The node's power, through its BMC: "on" or "off" (a power cut unless `graceful`,
    which asks the OS to shut down). Waits up to `wait` seconds for the BMC to show it."""
    if state not in ("on", "off"):
        raise OperationValueError(f"power: state must be 'on' or 'off', not {state!r}")
    try:
        current = facts.power_state(host)
    except KilnError as exc:
        yield fail(str(exc))
        return
    if current in (state, f"powering {state}"):
        host.noop(f"power is already {state}")
        return
    yield FunctionCommand(_set_power, (state, graceful, wait), {})


# -- boot -----------------------------------------------------------------------------------


def _set_boot_once(state: State, host: Host, device: str) -> bool:
    try:
        with closing(facts.bmc_for(host)) as bmc:
            bmc.set_boot_once(device)
    except KilnError as exc:
        return fail_host(host, str(exc))
    host.log(f"BMC: next boot from {device} (once)", log_func=logger.info)
    return True


@operation()
def boot_once(device: str = "pxe"):  # noqa: ANN201 - pyinfra operation generator
    """The next boot (only) from `device`: "pxe" (the network: MAAS) or "disk"."""
    if device not in BOOT_DEVICES:
        raise OperationValueError(f"boot_once: device must be one of {', '.join(BOOT_DEVICES)}, "
                                  f"not {device!r}")
    try:
        current = facts.boot_override(host)
    except KilnError as exc:
        yield fail(str(exc))
        return
    if current["device"] == device and not current["persistent"]:
        host.noop(f"next boot is from {device} already")
        return
    yield FunctionCommand(_set_boot_once, (device,), {})


# -- firmware -------------------------------------------------------------------------------


def image_sha256(image_uri: str, verify: bool | str = True, timeout: float = 60.0) -> str:
    """The sha256 of what `image_uri` serves now (streamed; the image is not kept)."""
    digest = hashlib.sha256()
    try:
        with requests.get(image_uri, stream=True, timeout=timeout, verify=verify) as response:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                digest.update(chunk)
    except requests.RequestException as exc:
        raise KilnError(f"firmware image {image_uri}: cannot download it to check its "
                        f"sha256: {exc}") from None
    return digest.hexdigest()


def _update_firmware(state: State, host: Host, component: str, image_uri: str, sha256: str,
                     timeout: float, image_verify: bool | str) -> bool:
    node = node_context(host).label
    try:
        served = image_sha256(image_uri, verify=image_verify)
    except KilnError as exc:
        return fail_host(host, f"node {node}: {exc}; {component} not flashed")
    if served != sha256:
        return fail_host(host, f"node {node}: firmware image {image_uri} has sha256 "
                         f"{served}, the manifest pins {sha256}; {component} not flashed")
    try:
        with closing(facts.bmc_for(host)) as bmc:
            result = bmc.update_firmware(component, image_uri, timeout=timeout)
    except KilnError as exc:
        return fail_host(host, str(exc))
    host.log(f"BMC: {component} updated from {image_uri} (task {result.task}: "
             f"{result.state})", log_func=logger.info)
    for message in result.messages:
        host.log(f"  {message}", log_func=logger.info)
    return True


@operation()
def firmware_update(component: str, image_uri: str, sha256: str,  # noqa: ANN201
                    version: str | None = None, timeout: float = 1800.0,
                    image_verify: bool | str = True):
    """Flash firmware inventory item `component` (its Redfish Id, e.g. BIOS) from
    `image_uri` with SimpleUpdate, after checking the image's sha256 on the controller.

    With `version`, a component already reporting it is left alone. Most components run a
    new image only after a reset; activation is the caller's (roles/firmware), so until then
    the inventory still shows the old version.
    """
    sha256 = sha256.lower()
    if not _SHA256.match(sha256):
        raise OperationValueError(f"firmware_update: sha256 {sha256!r} is not 64 hex digits")
    if version is not None:
        try:
            inventory = facts.firmware_inventory(host)
        except KilnError as exc:
            yield fail(str(exc))
            return
        found = [item for item in inventory if item["id"] == component]
        if not found:
            ids = ", ".join(item["id"] for item in inventory) or "none"
            yield fail(f"node {node_context(host).label}: the BMC's firmware inventory has no "
                       f"{component!r} (items: {ids})")
            return
        if found[0]["version"] == version:
            host.noop(f"{component} is at {version} already")
            return
    yield FunctionCommand(_update_firmware,
                          (component, image_uri, sha256, timeout, image_verify), {})



# -- reboot through the BMC -------------------------------------------------------------------

# On /run, a tmpfs: present until the node boots again.
REBOOT_MARKER = "/run/kiln-reboot-pending"
REBOOT_WAIT_SECONDS = 900.0


def _drop_ssh(host: Host) -> None:
    """Forget pyinfra's SSH session to a node that reboots; the @metal connector opens a
    fresh one when a later operation needs it."""
    client = getattr(host.connector, "client", None)
    if client is not None:
        try:
            client.close()
        except (OSError, EOFError):
            pass  # the session died with the node
        host.connector.client = None


def ssh_answers(address: str, port: int) -> bool:
    """An sshd greets on `address:port` (its SSH- banner): the node's OS is up."""
    try:
        with socket.create_connection((address, port), timeout=2) as sock:
            sock.settimeout(5)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _as_root(host: Host) -> dict[str, bool]:
    """/run is root's: sudo unless pyinfra logs in as root."""
    return {"_sudo": node_context(host).sudo}


def _marker_present(host: Host) -> bool | None:
    """Whether the reboot marker is still there (True), gone (False), or unknown (None)."""
    try:
        status, _ = host.run_shell_command(StringCommand("test", "-e", REBOOT_MARKER),
                                           **_as_root(host))
    except (ConnectError, OSError, EOFError):
        _drop_ssh(host)
        return None
    return bool(status)


def _reboot(state: State, host: Host, wait: float) -> bool:
    context = node_context(host)
    address, port = context.address, context.ssh_port
    try:
        marked, _ = host.run_shell_command(StringCommand("touch", REBOOT_MARKER),
                                           **_as_root(host))
    except (ConnectError, OSError, EOFError):
        marked = False  # no OS to ask: the cycle is all there is to do
    try:
        with closing(facts.bmc_for(host)) as bmc:
            label = bmc.label
            bmc.power_cycle()
    except KilnError as exc:
        return fail_host(host, str(exc))
    _drop_ssh(host)
    deadline = time.monotonic() + wait
    seen_down = False
    while time.monotonic() < deadline:
        up = ssh_answers(address, port)
        seen_down = seen_down or not up
        if up and (seen_down or marked):
            present = _marker_present(host) if marked else False
            if present is False:
                host.log(f"BMC: rebooted ({label})", log_func=logger.info)
                return True
            if present:
                _drop_ssh(host)  # the old OS still answers: the cycle has not begun
        time.sleep(2)
    return fail_host(host, f"{label}: power cycled, but the node's SSH ({address}:{port}) "
                     f"did not come back from a new boot within {wait:g} s")


def reboot_commands(wait: float = REBOOT_WAIT_SECONDS) -> Iterator[FunctionCommand]:
    """The commands of a reboot through the BMC, for another operation to `yield from`:
    power cycle, then wait until the node's sshd answers from a new boot (a marker in /run,
    a tmpfs, is gone). Works when the OS cannot reboot itself (a hung driver unload)."""
    yield FunctionCommand(_reboot, (wait,), {})


@operation(is_idempotent=False)
def reboot(wait: float = REBOOT_WAIT_SECONDS):  # noqa: ANN201 - pyinfra operation generator
    """Power cycle the node through its BMC and wait for it to boot again (see
    `reboot_commands`)."""
    yield from reboot_commands(wait)
