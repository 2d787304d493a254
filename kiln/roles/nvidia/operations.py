"""Operations that make the pinned NVIDIA driver the running one, and check it.

Installing a driver changes files, not the kernel module in memory: until the module is
replaced, nvidia-smi reports "Driver/library version mismatch" (or, on a first install,
that no driver answers). The module is replaced by a reboot through the node's BMC, or, when
asked for and no process has a GPU open, by unloading and loading it.
"""

from __future__ import annotations

import logging
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.context import state as current_state

from kiln.core.context import node_context
from kiln.core.outcomes import fail, preview
from kiln.roles.base.facts import DebPackages, ServiceStates, installed_versions
from kiln.roles.base.operations import node_readable
from kiln.roles.bmc import operations as bmc_operations
from kiln.roles.nvidia.facts import LoadedNvidiaModules, NvidiaDeviceUsers, NvidiaDriverState

logger = logging.getLogger("pyinfra")

# Unload order: what uses the core module first. Loaded again in the reverse order.
MODULE_UNLOAD_ORDER = ("nvidia_peermem", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nvidia")
# Daemons that hold the GPUs open themselves and are stopped around a reload.
NVIDIA_DAEMONS = ("nvidia-persistenced", "nv-fabricmanager", "nv-hostengine")


def describe_running(driver: dict[str, Any]) -> str:
    module, smi = driver["module"], driver["nvidia_smi"]
    if module["loaded"]:
        running = f"module {module['version'] or '(version unknown)'}"
    else:
        running = "no module loaded"
    said = smi["message"] or (", ".join(sorted(set(smi["versions"]))) or smi["status"])
    said = said.rstrip(".")
    return f"{running}; nvidia-smi: {said}"


def has_bmc() -> bool:
    """The inventory names this node's BMC (host data kiln_bmc), so kiln can reboot it."""
    return node_context(host).has_bmc


def reload_commands(loaded: list[str], services: list[str]) -> list[str]:
    """Stop the GPU daemons, unload the loaded NVIDIA modules, load them again, start."""
    unload = [name for name in MODULE_UNLOAD_ORDER if name in loaded]
    load = list(reversed(unload))
    if "nvidia" not in load:
        load.insert(0, "nvidia")
    commands = []
    if services:
        commands.append("systemctl stop " + " ".join(services))
    if unload:
        commands.append("modprobe -r " + " ".join(unload))
    commands += [f"modprobe {name}" for name in load]
    if services:
        commands.append("systemctl start " + " ".join(services))
    return commands


@operation()
def driver_running(version: str, package: str, activation: str,  # noqa: ANN201
                   services: list[str]):
    """The kernel module running is the pinned driver `version` (from package `package`).

    activation "reboot": power cycle through the BMC (roles/bmc) and wait for the new boot;
    "reload": unload and load the module, refused while a process other than the NVIDIA
    daemons has a GPU open.
    """
    if not node_readable():
        yield preview(f"the running NVIDIA driver ({version})")
        return
    driver = host.get_fact(NvidiaDriverState)
    if driver["running_version"] == version:
        host.noop(f"driver {version} is running")
        return
    installed = installed_versions(host.get_fact(DebPackages)).get(package, "not installed")
    situation = (f"{package} {installed} is installed, the pinned driver is {version}; "
                 f"running: {describe_running(driver)}")
    if activation == "reload":
        users = [user for user in host.get_fact(NvidiaDeviceUsers)
                 if user["command"] not in NVIDIA_DAEMONS]
        if users:
            named = ", ".join(f"{user['command']} (pid {user['pid']})" for user in users)
            yield fail(f"{situation}. Not reloading the module while GPUs are in use by "
                          f"{named}: drain the node, or reboot it")
            return
        for command in reload_commands(host.get_fact(LoadedNvidiaModules), services):
            yield StringCommand(command)
        return
    if not has_bmc():
        yield fail(f"{situation}. The module changes at the next boot, and the inventory "
                      "names no BMC (kiln_bmc) to reboot the node with: reboot it, run again")
        return
    # Through the BMC, not `reboot`: it works when the OS cannot (a hung driver unload), and
    # the next operations read the node as it comes back from the new boot.
    if current_state.is_executing:  # a preview only lists the reboot
        logger.info(f"{host.print_prefix}{situation}: rebooting through the BMC")
    yield from bmc_operations.reboot_commands()


@operation()
def services_running(units: list[str]):  # noqa: ANN201
    """The NVIDIA daemons (persistence, fabric manager, DCGM) enabled and running."""
    if not node_readable():
        yield preview("NVIDIA services")
        return
    states = host.get_fact(ServiceStates, units=units)
    unknown = [unit for unit in units if not states.get(unit, {}).get("enabled")]
    if unknown:
        yield fail(f"no such service: {', '.join(unknown)} (the pinned packages should "
                      "install them; host data kiln_nvidia_services names them)")
        return
    for unit in units:
        if states[unit]["enabled"] != "enabled":
            yield f"systemctl enable {unit}"
        if states[unit]["active"] != "active":
            yield f"systemctl start {unit}"


@operation()
def driver_verified(version: str):  # noqa: ANN201
    """nvidia-smi answers with the pinned driver on every GPU it sees, or the host fails.

    How many GPUs it sees is the health stage's question, not this one's.
    """
    if not node_readable():
        yield preview(f"nvidia-smi reports driver {version}")
        return
    driver = host.get_fact(NvidiaDriverState)
    smi = driver["nvidia_smi"]
    problem = None
    if smi["status"] != "ok":
        problem = describe_running(driver)
    elif set(smi["versions"]) != {version}:
        problem = f"nvidia-smi reports driver {', '.join(sorted(set(smi['versions'])))}"
    if problem:
        yield fail(f"the running driver is not the pinned {version}: {problem}")
    else:
        host.noop(f"nvidia-smi: driver {version} on {len(smi['versions'])} GPUs")
