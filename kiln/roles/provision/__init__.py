"""Provision: image bare metal through MAAS and the BMC (bring-up stage 1), and reprovision.

    pyinfra -y inventory/prod.py deploy/bringup.py                       # stage 1 first
    pyinfra -y inventory/prod.py deploy/reprovision.py --limit gpu-017

Everything here runs on the controller: a node with no OS has nothing to SSH to. Each node
is one `FunctionCommand` that talks to its BMC and to MAAS and waits for MAAS with gevent's
sleep, so pyinfra's per-host greenlets image every node at once.

- `provision()`: check the node's BMC answers (a dead BMC or a rejected password is named
  at once, not after MAAS's power driver times out), make sure MAAS knows the machine and
  has commissioned it, then deploy the SKU manifest's image with user_data carrying kiln's
  SSH key. A machine already Deployed with that image is left alone: the operation yields
  nothing and pyinfra reports no change. A machine MAAS left in Failed deployment (an
  earlier run) is released and deployed again: a rerun finishes what a run began.
- `reprovision()`: drain the node from the pool, release with erase, commission again,
  deploy; the later bring-up stages follow (deploy/reprovision.py).

Every MAAS status change kiln sees is recorded in the ledger with its timestamp; a failure
moves the node to quarantined with the cause (MAAS's own status message, or the BMC's
error) and fails that host alone: pyinfra goes on with the others and exits non-zero.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from pyinfra import host as current_host
from pyinfra import state as current_state
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

from kiln.core.context import node_context
from kiln.core.errors import KilnError
from kiln.core.ledger import InvalidTransition, Ledger, recorded_state
from kiln.core.ledger import NodeState as L
from kiln.core.manifest import OSImage
from kiln.core.outcomes import fail, fail_host, preview_line
from kiln.roles.maas import Waiter, commissioned, deployed, released
from kiln.roles.maas.lifecycle import has_image, image_text
from kiln.roles.maas.machine import Machine, Status
from kiln.roles.maas.settings import client_for_host, identity_for_host
from kiln.roles.maas.userdata import cloud_config, public_key_of
from kiln.roles.pool import pool_for

logger = logging.getLogger("pyinfra")

# MAAS status (its status_name) → the ledger state that says the same thing.
LEDGER_STATE = {
    "Commissioning": L.COMMISSIONING,
    "Testing": L.COMMISSIONING,
    "Ready": L.READY,
    "Allocated": L.READY,
    "Deploying": L.DEPLOYING,
    "Deployed": L.DEPLOYED,
}
POLL_SECONDS = 2.0
COMMISSION_TIMEOUT = 1800.0
DEPLOY_TIMEOUT = 2400.0
RELEASE_TIMEOUT = 1800.0


class ProvisionError(KilnError):
    pass


# -- what a node is to be imaged with -------------------------------------------------------


def _image(image: OSImage) -> str:
    return image_text(image.osystem, image.distro_series, image.hwe_kernel)


def desired_image(data: Any) -> OSImage:
    """The image of the node's SKU manifest (<kiln_firmware_dir>/<sku>.yaml)."""
    return node_context(data).manifest.os


def kiln_public_keys(data: Any) -> list[str]:
    """The key kiln logs in with after the deploy: `kiln_ssh_public_key` in group data, or
    the public half beside the private key pyinfra uses (`ssh_key`)."""
    context = node_context(data)
    key = context.get("kiln_ssh_public_key")
    if key:
        return [str(key).strip()]
    private = context.get("ssh_key")
    if private:
        return [public_key_of(private)]
    raise ProvisionError(
        f"{context.label}: no SSH key to deploy with: set kiln_ssh_public_key in group data, or "
        "ssh_key (the private key; its .pub beside it is deployed)"
    )


def user_data_for(data: Any) -> str:
    return cloud_config(kiln_public_keys(data))


def ledger_for(data: Any) -> Ledger:
    """The ledger the node's context names (kiln_ledger, default state/kiln.db)."""
    return Ledger(node_context(data).ledger_path)


# -- the ledger follows MAAS ----------------------------------------------------------------


def record(ledger: Ledger, node: str, to: L, reason: str) -> None:
    """Move the node in the ledger; enrolling it first if kiln has never seen it."""
    ledger.enroll(node)
    try:
        ledger.transition(node, to, reason)
    except InvalidTransition as exc:
        raise ProvisionError(f"{node}: {exc} (MAAS says: {reason})") from None


def follow(ledger: Ledger, node: str, machine: Machine, why: str) -> None:
    state = LEDGER_STATE.get(machine.status_name)
    if state is not None:
        record(ledger, node, state, f"MAAS {machine.status_name}: {why}")


def quarantine(ledger: Ledger, node: str, reason: str) -> None:
    """Out with the cause; quarantined again keeps the newest cause."""
    ledger.enroll(node)
    ledger.transition(node, L.QUARANTINED, reason)


# -- the BMC first ----------------------------------------------------------------------------


def check_bmc(data: Any) -> str:
    """The node's power state through its own BMC: proves it answers and takes kiln's
    credentials before MAAS is asked to drive it. Raises with the node and BMC named."""
    from kiln.roles.bmc import connect

    bmc = connect(data)
    try:
        return bmc.power_state()
    finally:
        bmc.close()


# -- one node's provisioning, on the controller ---------------------------------------------


class NodeRun:
    """The provisioning of one node within a pyinfra run: its clients, ledger, progress."""

    def __init__(self, state: State, host: Host):
        self.host = host
        self.context = node_context(host)
        self.node = self.context.label
        self.client = client_for_host(self.context)
        self.identity = identity_for_host(self.context)
        self.ledger = ledger_for(self.context)
        self.waiter = Waiter(poll_interval=POLL_SECONDS, progress=self.progress,
                             sleep=gevent.sleep)

    def progress(self, line: str) -> None:
        self.host.log_styled(line, fg="cyan", log_func=logger.info)

    def fail(self, why: str) -> bool:
        quarantine(self.ledger, self.node, why)
        return fail_host(self.host, why)

    def record_changes(self, outcome: Any, why: str) -> None:
        """Every status change kiln saw, in order, then where the machine ended."""
        for change in outcome.changes:
            if change.after in LEDGER_STATE:
                record(self.ledger, self.node, LEDGER_STATE[change.after],
                       f"MAAS {change.after}: {why}")
        follow(self.ledger, self.node, outcome.machine, why)


def _start(state: State, host: Host, what: str) -> NodeRun | None:
    """The node's run, or None (the host failed, with why) when its settings are wrong."""
    try:
        return NodeRun(state, host)
    except (KilnError, OSError) as exc:
        fail_host(host, f"{what}: {exc}")
        return None


def _provision_node(state: State, host: Host, image: OSImage) -> bool:
    run = _start(state, host, "provision")
    if run is None:
        return False
    try:
        check_bmc(run.context)
        machine = run.client.find(run.identity)
        if machine.status == Status.FAILED_DEPLOYMENT:
            # An earlier deploy failed; MAAS's way back is a release, then deploy again.
            run.progress(f"{run.node}: {machine.describe_status()}; releasing to retry")
            run.record_changes(released(run.client, machine, waiter=run.waiter,
                                        timeout=RELEASE_TIMEOUT), "released to retry")
        outcome = commissioned(run.client, machine, waiter=run.waiter,
                               timeout=COMMISSION_TIMEOUT)
        run.record_changes(outcome, "commissioned")
        outcome = deployed(run.client, outcome.machine, image, user_data_for(run.context),
                           waiter=run.waiter, timeout=DEPLOY_TIMEOUT)
        run.record_changes(outcome, f"deployed {_image(image)}")
    except (KilnError, OSError) as exc:
        return run.fail(f"provision: {exc}")
    run.progress(outcome.summary)
    return True


# Ledger states a machine MAAS reports Deployed is adopted from: kiln has not yet seen it
# deployed (a node kiln configured, pooled or quarantined is past that).
ADOPTABLE = (None, L.ENROLLED, L.READY, L.DEPLOYING)


def _adopt_deployed(state: State, host: Host, machine: Machine) -> bool:
    context = node_context(host)
    ledger = ledger_for(context)
    try:
        if ledger.state(context.label) in ADOPTABLE:
            follow(ledger, context.label, machine, "found Deployed with the manifest's image")
    finally:
        ledger.close()
    return True


@operation(is_idempotent=True)
def machine_deployed():  # noqa: ANN201 - pyinfra operation generator
    """The node is Deployed in MAAS with its SKU's image (commissioned first if needed)."""
    context = node_context(current_host)
    node = context.label
    try:
        image = desired_image(context)
    except KilnError as exc:
        yield fail(f"provision: {exc}")
        return
    try:
        client = client_for_host(context)
        machine = client.find(identity_for_host(context))
    except (KilnError, OSError) as exc:
        # The command reports it (and fails the host) when it runs. A preview says so now,
        # and plans nothing after it: a node MAAS cannot vouch for cannot be read.
        if current_state.check_for_changes:
            _PREVIEW_UNDEPLOYED.add(node)
            preview_line(current_host, f"provision: cannot ask MAAS whether it is deployed "
                                       f"({exc}); its later stages are planned once it can be "
                                       "read", warn=True)
        yield FunctionCommand(_provision_node, (image,), {})
        return
    if machine.status == Status.DEPLOYED and has_image(machine, image):
        if recorded_state(context.ledger_path, node) in ADOPTABLE:
            # Deployed before kiln recorded it: the ledger catches up, as a change of its
            # own (a preview lists it and writes nothing).
            preview_line(current_host, f"{node}: Deployed with {_image(image)}; the ledger "
                                       "will record it")
            yield FunctionCommand(_adopt_deployed, (machine,), {})
            return
        current_host.noop(f"{node}: already Deployed with {_image(image)}")
        return
    if current_state.check_for_changes:
        _PREVIEW_UNDEPLOYED.add(node)
        preview_line(current_host, f"{node}: will be imaged (MAAS: {machine.status_name})")
    yield FunctionCommand(_provision_node, (image,), {})


# Nodes that a change preview found not yet deployed: the later stages cannot read their
# facts (there is no OS to read them from), so bring-up lists them as "will be imaged".
_PREVIEW_UNDEPLOYED: set[str] = set()


def will_be_imaged(host: Host) -> bool:
    """True in a change preview (no -y) for a node MAAS has not deployed yet."""
    return node_context(host).label in _PREVIEW_UNDEPLOYED


@deploy("Provision: image bare metal through MAAS and the BMC")
def provision() -> None:
    machine_deployed()


# -- reprovisioning -------------------------------------------------------------------------


def _reprovision_node(state: State, host: Host, image: OSImage) -> bool:
    run = _start(state, host, "reprovision")
    if run is None:
        return False
    try:
        pool = pool_for(host)
        if pool.drain(run.node, "reprovisioning"):
            run.progress(f"{run.node}: drained from the {pool.where} (reprovisioning)")
        record(run.ledger, run.node, L.REPROVISIONING, "reprovision requested")
        check_bmc(run.context)
        machine = run.client.find(run.identity)
        outcome = released(run.client, machine, erase=True, waiter=run.waiter,
                           timeout=RELEASE_TIMEOUT)
        run.progress(outcome.summary)
        outcome = commissioned(run.client, outcome.machine, recommission=True,
                               waiter=run.waiter, timeout=COMMISSION_TIMEOUT)
        run.record_changes(outcome, "recommissioned")
        outcome = deployed(run.client, outcome.machine, image, user_data_for(run.context),
                           waiter=run.waiter, timeout=DEPLOY_TIMEOUT)
        run.record_changes(outcome, "redeployed")
    except (KilnError, OSError) as exc:
        return run.fail(f"reprovision: {exc}")
    run.progress(outcome.summary)
    return True


@operation(is_idempotent=False)
def machine_reprovisioned():  # noqa: ANN201 - pyinfra operation generator
    """Drained, released with erase, commissioned, deployed: a fresh install."""
    context = node_context(current_host)
    node = context.label
    try:
        image = desired_image(context)
    except KilnError as exc:
        yield fail(f"reprovision: {exc}")
        return
    if current_state.check_for_changes:
        _PREVIEW_UNDEPLOYED.add(node)
        preview_line(current_host, f"{node}: will be released, erased and imaged again")
    yield FunctionCommand(_reprovision_node, (image,), {})


@deploy("Reprovision: drain, release with erase, commission, deploy")
def reprovision() -> None:
    machine_reprovisioned()
