"""The whole lab: `up`, `down`, and the per-node power and reset calls other parts use.

    from kiln.lab.cluster import reset_node, power_off, power_on
    reset_node("gpu-003")    # what a MAAS deploy does: blank writable layer, fresh boot

Every call takes the lab lock (`<lab>/lock`), so two kiln commands never change the lab at
once. `down` needs no state file: it finds kiln's namespaces, veths, mounts and processes
by name, so it also cleans up after a crashed `up`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln.core.paths import FIRMWARE_DIR
from kiln.lab import hostfaults, integrations, netboot, netns, ntp, rails, services, slurm
from kiln.lab.credentials import ensure_lab_secrets
from kiln.lab.host import LabError, require_root, require_tools, run
from kiln.lab.nodes import Node
from kiln.lab.rootfs import ensure_base
from kiln.lab.state import (
    LabState,
    NodeState,
    StateError,
    burnin_state_dir,
    lab_dir,
    lab_lock,
    load_state,
    mirror_state_dir,
    plan_nodes,
    remove_state,
    save_state,
)
from kiln.lab.tls import ensure_ca, issue_cert
from kiln.roles.burnin.access import init_key as init_burnin_key
from kiln.roles.mirror.signing import init_key

UP_TOOLS = ["ip", "unshare", "mount", "umount", "pivot_root", "ssh-keygen", "openssl", "chronyd"]
LAB_MANIFEST = FIRMWARE_DIR / "lab.yaml"
# kiln's own records about this lab's nodes (the lab inventory points the ledger and the
# file pool here; the ledger's write-ahead log and index beside it, the run and audit
# reports under reports/): a write-ahead log left from the last lab would be replayed into
# the new ledger.
LAB_RECORDS = ("kiln.db", "kiln.db-wal", "kiln.db-shm", "pool.yaml")
LAB_REPORTS = "reports"
SSH_TIMEOUT = 60.0

Log = Callable[[str], None]


def ensure_ssh_key(lab: Path) -> Path:
    """The lab's own key pair, made once per lab directory."""
    key = lab / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-lab", "-f", str(key)])
    return key


def _running_state(lab: Path) -> LabState | None:
    try:
        state = load_state(lab)
    except StateError:
        return None
    return state if any(Node(lab, n).running() for n in state.nodes) else None


def lab_image() -> dict[str, str]:
    """The image a deployed lab node runs: what the lab SKU's manifest pins."""
    from kiln.core.manifest import load_manifest

    image = load_manifest(LAB_MANIFEST).os
    return {
        "osystem": image.osystem,
        "distro_series": image.distro_series,
        "hwe_kernel": image.hwe_kernel,
    }


def up(
    gpu_nodes: int,
    service_nodes: int,
    faults_file: Path | None = None,
    log: Log = print,
    deployed: bool = False,
) -> LabState:
    """Start the lab: nodes, vendor repository, BMCs, MAAS and UFM simulators.

    By default the nodes are what a new rack is: known to MAAS as New, disks blank, powered
    off. `deployed=True` starts them already imaged and running, for tests that do not
    exercise provisioning.
    """
    require_root()
    require_tools(UP_TOOLS)
    lab = lab_dir()
    nodes = plan_nodes(gpu_nodes, service_nodes)
    if faults_file is not None and not faults_file.is_file():
        raise LabError(f"--faults {faults_file}: no such file")
    with lab_lock(lab):
        if _running_state(lab) is not None or services.running_any(lab):
            raise LabError(f"the lab in {lab} is already up (kiln lab status); kiln lab down first")
        _teardown(lab)  # leftovers of a crashed run
        # A new lab is a new rack: kiln's record of the last one's nodes does not apply.
        for record in LAB_RECORDS:
            (lab / record).unlink(missing_ok=True)
        shutil.rmtree(lab / LAB_REPORTS, ignore_errors=True)
        base = ensure_base(lab, log)
        key = ensure_ssh_key(lab)
        state = LabState(
            lab_dir=str(lab),
            ssh_key=str(key),
            nodes=nodes,
            faults_file=str(faults_file.resolve()) if faults_file else None,
            secrets_file=str(ensure_lab_secrets(lab)),
            tls_ca=str(ensure_ca(lab)),
        )
        # One munge key per lab (never printed); imaging copies it into each node.
        slurm.new_munge_key(lab)
        controller = slurm.controller(nodes)
        if controller is not None:
            state.endpoints["slurm"] = controller
        started = time.monotonic()
        for node in nodes:
            if node.role == "service":
                # The local file mirror's HTTPS certificate (roles/mirror), once per lab.
                issue_cert(lab, f"mirror-{node.name}", [node.address])
        # A site's one-time step (`kiln mirror init-key`), done for the lab's mirror state:
        # bring-up never makes a key while it plans.
        init_key(mirror_state_dir(lab))
        # The same for the burn-in's SSH key (`kiln burnin init-key`).
        init_burnin_key(burnin_state_dir(lab))
        netns.ensure_bridge()
        # Time before the nodes: their chrony finds its server answering at first boot.
        log(f"kiln lab: {ntp.start(lab, log)}")
        rails.ensure_bridges()
        netns.add_bmc_addresses([n.bmc["address"] for n in nodes])
        public_key = key.with_suffix(".pub").read_text()
        machines = [Node(lab, n) for n in nodes]
        for machine in machines:
            machine.wipe()
            machine.prepare_hardware(faults_file)
            netns.create_node_network(machine.name, machine.state.address)
            rails.create_node_rails(machine.name, machine.state.index, machine.state.netns,
                                    machine.hw)
            netboot.cancel(lab, machine.name)
            netboot.clear_result(lab, machine.name)
            machine.state.disk = "blank"
            machine.state.state = "off"
        log(f"kiln lab: {integrations.start_vendor_repo(lab, log)} "
            f"({state.endpoints['vendor_repo']})")
        if deployed:
            image = lab_image()
            for machine in machines:
                _install(machine, state, [public_key], image)
                _boot_from_disk(machine, log)
        # Saved before waiting: a node that fails to come up is still there to look at.
        save_state(state, lab)
        booted = [m for m in machines if m.state.disk == "installed" and m.running()]
        _wait_all_ssh([m for m in booted if not _boot_failed(m)])
        integrations.start_simulators(lab, state, deployed=deployed, log=log)
        elapsed = time.monotonic() - started
        shape = "deployed and running" if deployed else "New in MAAS, powered off"
        log(f"kiln lab: {len(nodes)} nodes up in {elapsed:.1f} s, {shape} (base {base})")
        return state


def _install(machine: Node, state: LabState, keys: list[str], image: dict[str, str]) -> None:
    """What an image install leaves: a fresh root filesystem, the identity, the image record."""
    machine.power_off()
    machine.wipe()
    machine.mount()
    machine.install_identity(state.nodes, "\n".join(k.strip() for k in keys))
    machine.write_image_record(image)
    machine.state.disk = "installed"


def _boot_failed(machine: Node) -> bool:
    return machine.boot_error is not None


def _boot_from_disk(machine: Node, log: Log = print) -> None:
    """Power on and boot what is on the disk; a blank disk or a failed boot runs nothing."""
    machine.boot_error = None
    if machine.state.disk == "blank":
        machine.boot_without_os(f"{machine.name}: no bootable device")
    else:
        try:
            machine.boot()
        except integrations.NodeBootFailed as exc:
            # A real node that does not boot stays racked and powered: keep it, say why.
            log(f"kiln lab: {exc}")
            machine.boot_error = str(exc)
            machine.unmount()
            machine.boot_without_os(f"{machine.name}: boot failed: {exc}")
    machine.state.state = "running"


def _wait_all_ssh(machines: list[Node]) -> None:
    if not machines:
        return
    with ThreadPoolExecutor(max_workers=min(32, len(machines))) as pool:
        futures = [pool.submit(m.wait_ssh, SSH_TIMEOUT) for m in machines]
        errors = []
        for future in futures:
            try:
                future.result()
            except LabError as exc:
                errors.append(str(exc))
    if errors:
        raise LabError("\n".join(errors))


def down(log: Log = print) -> None:
    """Stop everything the lab started; safe to run any number of times."""
    require_root()
    require_tools(["ip", "umount"])
    lab = lab_dir()
    with lab_lock(lab):
        _teardown(lab)
        remove_state(lab)
    log("kiln lab: down")


def _teardown(lab: Path) -> None:
    for pid_file in sorted((lab / "nodes").glob("*/pid")):
        # Stopping needs only the node's name (its netns follows from it).
        stub = NodeState(name=pid_file.parent.name, role="gpu", index=0, address="")
        Node(lab, stub).power_off()
    integrations.stop_simulators(lab)
    ntp.stop(lab)
    hostfaults.teardown(lab)
    _kill_strays(lab)
    netns.delete_all()
    rails.delete_all()
    _unmount_under(lab)
    integrations.stop_vendor_repo(lab)


def _kill_strays(lab: Path) -> None:
    """The safety net after the services' own stop: any process whose command line names
    the lab directory (a BMC emulator or ipmi_sim left by a failed start) is the lab's."""
    marker = str(lab.resolve()).encode()
    inside = marker.rstrip(b"/") + b"/"  # the directory itself or a path in it, not a sibling
    own = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == own:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # A bare prefix would also match another lab's "/var/lib/kiln-lab2/…" (SIGKILLed
        # with nothing in its log, as an ipmi_sim of another lab would be).
        if any(arg == marker or arg.startswith(inside) for arg in argv[1:]):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def lab_mounts(lab: Path) -> list[str]:
    """Mount points on the host under the lab directory, deepest first."""
    prefix = str(lab.resolve()).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_under(lab: Path) -> None:
    for point in lab_mounts(lab):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)


# -- per node: what the BMC simulators call ---------------------------------------------


def _node_call(name: str, action: Callable[[LabState, Node, Path], Callable[[], None] | None],
               ) -> None:
    """Run `action` under the lab lock; what it returns runs after the lock is released
    (waiting for a node to come up must not hold up every other BMC)."""
    require_root()
    lab = lab_dir()
    with lab_lock(lab):
        state = load_state(lab)
        machine = Node(lab, state.node(name))
        after = action(state, machine, lab)
        save_state(state, lab)
    if after is not None:
        after()


def power_state(name: str) -> str:
    """"on" or "off", as the node's BMC reports it."""
    lab = lab_dir()
    return "on" if Node(lab, load_state(lab).node(name)).running() else "off"


def _power_on_action(boot: str, wait: bool) -> Callable[[LabState, Node, Path], Callable | None]:
    if boot not in ("disk", "pxe"):
        raise ValueError(f"boot source {boot!r} is not disk or pxe")

    def action(state: LabState, machine: Node, lab: Path) -> Callable[[], None] | None:
        if machine.running():
            return None
        request = netboot.pending(lab, machine.name) if boot == "pxe" else None
        if request is None:
            # Disk boot, or MAAS's "boot local" answer to a PXE boot it has nothing for.
            _boot_from_disk(machine)
            return _waiter(machine, wait)
        netboot.cancel(lab, machine.name)
        if request["action"] == "commission":
            return _commission(machine, lab)
        if request["action"] == "erase":
            return _erase(machine, lab)
        return _deploy(machine, state, lab, request, wait)

    return action


def _waiter(machine: Node, wait: bool) -> Callable[[], None] | None:
    if not wait or machine.state.disk == "blank" or _boot_failed(machine):
        return None
    return lambda: machine.wait_ssh(SSH_TIMEOUT)


def _commission(machine: Node, lab: Path) -> None:
    """The ephemeral commissioning environment: inventory the hardware, then power off."""
    profile = json.loads((machine.hw / "profile.json").read_text())
    netboot.record_result(
        lab, machine.name, "commission", True, hardware=netboot.hardware_summary(profile)
    )
    machine.state.state = "off"


def _erase(machine: Node, lab: Path) -> None:
    """The ephemeral environment of a release with erase: the disk ends blank, the node off."""
    machine.wipe()
    machine.state.disk = "blank"
    netboot.record_result(lab, machine.name, "erase", True)
    machine.state.state = "off"


def _deploy(machine: Node, state: LabState, lab: Path, request: dict, wait: bool,
            ) -> Callable[[], None]:
    """The installer: a fresh root filesystem with the requested keys, then the first boot.

    Deployed is reported when the installed OS is up (sshd answering), as cloud-init's
    final phone-home tells a real MAAS.
    """
    image = {k: str(request.get(k, "")) for k in ("osystem", "distro_series", "hwe_kernel")}
    _install(machine, state, list(request.get("ssh_keys", [])), image)
    _boot_from_disk(machine)
    failure = machine.boot_error
    if failure is not None:
        netboot.record_result(lab, machine.name, "deploy", False, error=failure)

        def nothing() -> None:
            return None

        return nothing

    def report() -> None:
        try:
            machine.wait_ssh(SSH_TIMEOUT)
        except LabError as exc:
            netboot.record_result(lab, machine.name, "deploy", False, error=str(exc))
            return
        netboot.record_result(lab, machine.name, "deploy", True, image=image)

    if wait:
        return report
    return lambda: threading.Thread(target=report, name=f"deploy-{machine.name}").start()


def power_on(name: str, boot: str = "disk", wait: bool = False) -> None:
    """Power the node on; `boot="pxe"` boots from the network (what MAAS has for it)."""
    _node_call(name, _power_on_action(boot, wait))


def power_off(name: str) -> None:
    def action(state: LabState, machine: Node, lab: Path) -> None:
        machine.power_off()
        machine.state.state = "off"

    _node_call(name, action)


def power_cycle(name: str, boot: str = "disk", wait: bool = False) -> None:
    """Off, then on from `boot` (a reset, as a BMC does it)."""
    power_off(name)
    power_on(name, boot=boot, wait=wait)


def sync_rail_links(name: str) -> dict[int, bool] | None:
    """After `kiln lab fault` changed a node's faults: its rail links as its ports now are
    (an `hca-port-down` takes that rail's link down, clearing it brings the link back).
    None where there is nothing to change: the lab is not up or has no such node."""
    if os.geteuid() != 0:
        return None
    lab = lab_dir()
    with lab_lock(lab):
        try:
            node = load_state(lab).node(name)
        except StateError:
            return None
        machine = Node(lab, node)
        return machine.set_rail_links(powered=machine.running())


def reset_node(name: str, wait: bool = True) -> None:
    """Reimage with the lab image and the lab key, then boot: a deploy without MAAS."""

    def action(state: LabState, machine: Node, lab: Path) -> Callable[[], None] | None:
        public_key = Path(state.ssh_key).with_suffix(".pub").read_text()
        _install(machine, state, [public_key], lab_image())
        _boot_from_disk(machine)
        return _waiter(machine, wait)

    _node_call(name, action)
