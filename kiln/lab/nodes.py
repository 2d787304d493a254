"""One lab node's life: its overlay, its boot into its own namespaces, power off, reset.

A node is (under the lab directory):
- `nodes/<name>/{upper,work}` + the shared `base/`, mounted on the host at
  `nodes/<name>/merged` while the node is on (so the hardware simulator can look at what is
  installed at boot); `nodes/<name>/console.log` is its console; `nodes/<name>/pid` the
  host PID of the `unshare` process holding its namespaces;
- `hw/<name>/`: its hardware, bound read-only at /run/kiln-hw (and `hw/<name>/flash/`
  read-write at /run/kiln-hw-flash);
- netns `kiln-<name>` (lab/netns.py), with one rail interface per HCA (lab/rails.py):
  their links are up while the node is powered on (unless a fault holds a port down) and
  down while it is off, when they also lose what the node's OS set on them.

Booting: `ip netns exec kiln-<name> unshare --pid --mount --uts --fork --time` runs the
launcher below, which mounts /proc, a minimal /dev, /sys, /run, /tmp and the hardware binds
into the overlay, pivots into it and execs the node's init (lab/node_init.py) as PID 1.
Each boot has its own boot_id (a fresh UUID in `/proc/sys/kernel/random/boot_id`, recorded
on the host in `nodes/<name>/boot_id`) and clocks that start at it (`/proc/uptime` and
CLOCK_MONOTONIC count from the node's boot: a time namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from kiln.lab import integrations, rails, slurm
from kiln.lab.host import LabError, run
from kiln.lab.netns import kill_netns_processes
from kiln.lab.state import VENDOR_REPO_URL, NodeState

INIT_SOURCE = Path(__file__).with_name("node_init.py")
HWSIM_SOURCE = Path(__file__).with_name("hwsim")
STARTUP_GRACE = 5.0  # seconds a just-started node may not look running yet

# Runs in the node's fresh namespaces, still seeing the host's filesystem.
LAUNCHER = r"""
set -eu
root=$KILN_ROOT
echo "$KILN_NODE" > /proc/sys/kernel/hostname
mount --make-rprivate /
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=755,nosuid,size=16m tmpfs "$root/dev"
for dev in null zero full random urandom tty; do
    touch "$root/dev/$dev"
    mount --bind "/dev/$dev" "$root/dev/$dev"
done
mkdir "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mkdir -p "$root/run/kiln" "$root/run/kiln-hw" "$root/run/kiln-hw-flash" "$root/run/lock"
# This boot's boot_id: the kernel's is the host's (every node shares it, and it never changes
# when a node reboots), so the node's /proc shows a file of its own in its place, as lxcfs
# does for /proc files. In the node's /run (tmpfs): gone at power off.
echo "$KILN_BOOT_ID" > "$root/run/kiln/boot_id"
chmod 444 "$root/run/kiln/boot_id"
mount --bind "$root/run/kiln/boot_id" "$root/proc/sys/kernel/random/boot_id"
mount -o remount,bind,ro "$root/proc/sys/kernel/random/boot_id"
mount --bind "$KILN_HW" "$root/run/kiln-hw"
mount -o remount,bind,ro "$root/run/kiln-hw"
mount --bind "$KILN_HW/flash" "$root/run/kiln-hw-flash"
# Simulated HCAs (hwsim/sysfs.py): the kernel's /sys/class and /sys/devices cannot gain
# entries, so each becomes a read-only tmpfs holding binds of every real entry plus the
# generated ones (links between them are relative, as the kernel's are).
if [ -d "$KILN_HW/sysfs/class/infiniband" ]; then
    real="$root/run/kiln/sysfs"
    mkdir -p "$real"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$real"
    for top in class devices module; do
        mount -t tmpfs -o mode=755,nosuid,nodev,noexec,size=1m tmpfs "$root/sys/$top"
        for entry in "$real/$top"/* "$KILN_HW/sysfs/$top"/*; do
            target="$root/sys/$top/${entry##*/}"
            # A simulated module's entry: a link into the node's /run (dangling until the
            # module is loaded), copied as a link.
            if [ -L "$entry" ] && [ "$top" = module ] && [ ! -e "$target" ]; then
                ln -s "$(readlink "$entry")" "$target"
                continue
            fi
            [ -e "$entry" ] || continue
            if [ -e "$target" ]; then echo "sysfs: $top/${entry##*/} is the kernel's"; continue; fi
            if [ -d "$entry" ]; then mkdir "$target"; else touch "$target"; fi
            mount --bind "$entry" "$target"
            mount -o remount,bind,ro "$target"
        done
        mount -o remount,ro "$root/sys/$top"
    done
    umount "$real"
    rmdir "$real"
fi
# Simulated kernel modules (hwsim/tools/kmod_install.py) are listed in this file; it stands
# in for /proc/modules where the host kernel has one (a kernel built without module support
# has none, and a file cannot be added to procfs).
cat /proc/modules > "$root/run/kiln/proc-modules" 2>/dev/null || : > "$root/run/kiln/proc-modules"
if [ -f "$root/proc/modules" ]; then
    mount --bind "$root/run/kiln/proc-modules" "$root/proc/modules"
    mount -o remount,bind,ro "$root/proc/modules"
fi
cp "$KILN_INIT" "$root/run/kiln/init"
cd "$root"
pivot_root . mnt
exec chroot . /bin/sh -c 'umount -l /mnt && exec /usr/bin/python3 /run/kiln/init'
"""


class Node:
    """Paths and processes of one node; `lab` is the lab directory."""

    def __init__(self, lab: Path, node: NodeState) -> None:
        self.lab = lab
        self.state = node
        self.name = node.name
        self.dir = lab / "nodes" / node.name
        self.upper, self.work, self.merged = (self.dir / p for p in ("upper", "work", "merged"))
        self.hw = lab / "hw" / node.name
        self.pid_file = self.dir / "pid"
        self.console = self.dir / "console.log"
        # The boot_id of the node's current (or last) boot, as its /proc shows it.
        self.boot_id_file = self.dir / "boot_id"
        # Why the last boot of an installed disk failed (the `boot-fail` fault), if it did.
        self.boot_error: str | None = None

    # -- disk ---------------------------------------------------------------------------
    def wipe(self) -> None:
        """A blank disk: the node's writable layer goes, nothing of the old install stays."""
        self.unmount()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            raise LabError(f"node {self.name}: could not remove {self.dir}")
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True)

    def prepare_hardware(self, faults_file: Path | None) -> None:
        (self.hw / "flash").mkdir(parents=True, exist_ok=True)
        integrations.prepare_node_hardware(
            self.lab, self.name, self.state.index, self.state.role, faults_file
        )
        self._install_kernel_log()

    def _install_kernel_log(self) -> None:
        """The node's kernel ring buffer, as `dmesg` shows it.

        The node shares the host's kernel, whose log says nothing about simulated GPUs, so
        the node's init binds this script over /usr/bin/dmesg. It lives beside the hardware
        state (read-only in the node, outside its writable filesystem) because the kernel
        log belongs to the machine, not to anything a package installs.
        """
        kernel = self.hw / "kernel"
        shutil.rmtree(kernel, ignore_errors=True)
        shutil.copytree(HWSIM_SOURCE, kernel / "kiln_hwsim",
                        ignore=shutil.ignore_patterns("__pycache__"))
        dmesg = kernel / "dmesg"
        dmesg.write_text(
            "#!/usr/bin/python3\n"
            "# kiln lab: the simulated kernel ring buffer of this node's hardware.\n"
            "import sys\n"
            "sys.path.insert(0, '/run/kiln-hw/kernel')\n"
            "from kiln_hwsim.tools.dmesg import main\n"
            "sys.exit(main())\n"
        )
        dmesg.chmod(0o755)

    def mounted(self) -> bool:
        return os.path.ismount(self.merged)

    def mount(self) -> None:
        if self.mounted():
            return
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={self.lab / 'base'},upperdir={self.upper},workdir={self.work}"
        run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)])

    def unmount(self) -> None:
        if not self.mounted():
            return
        if run(["umount", str(self.merged)], check=False).returncode != 0:
            # Something on the host still has it open: detach now, freed when released.
            run(["umount", "-l", str(self.merged)])

    def install_identity(self, hosts: list[NodeState], public_key: str) -> None:
        """What the imaging step writes on a new install: hostname, hosts, root's key, and
        Slurm's configuration and munge key (kiln/lab/slurm.py)."""
        root = self.merged
        (root / "etc/hostname").write_text(f"{self.name}\n")
        lines = ["127.0.0.1\tlocalhost", f"{self.state.address}\t{self.name}"]
        lines += [f"{h.address}\t{h.name}" for h in hosts if h.name != self.name]
        lines += ["::1\tlocalhost ip6-localhost ip6-loopback"]
        (root / "etc/hosts").write_text("\n".join(lines) + "\n")
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = ssh / "authorized_keys"
        keys.write_text(public_key.strip() + "\n")
        keys.chmod(0o600)
        self._install_os_archive()
        # Slurm's configuration and the lab's munge key; the role's daemons enabled.
        slurm.install_node(self.lab, root, self.state, hosts)

    def _install_os_archive(self) -> None:
        """apt points at the lab's mirror of the distribution, as MAAS points it at its own.

        The vendor (NVIDIA/Mellanox) repository is not configured here: adding it is
        kiln's job on a real node too.
        """
        key = self.lab / "vendor" / "keys" / "lab-archive.asc"
        if not key.exists():
            return
        keyrings = self.merged / "etc/apt/keyrings"
        keyrings.mkdir(parents=True, exist_ok=True)
        (keyrings / "kiln-lab-os.asc").write_text(key.read_text())
        (self.merged / "etc/apt/sources.list.d/kiln-lab-os.list").write_text(
            "deb [signed-by=/etc/apt/keyrings/kiln-lab-os.asc] "
            f"{VENDOR_REPO_URL}os bookworm main\n"
        )

    # -- power --------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        # A recycled PID is some other process, not this node.
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        # `ip netns exec` becomes `unshare` by exec, a moment after the start.
        return pid if command.startswith((b"unshare\0", b"ip\0")) else None

    def running(self) -> bool:
        return self.pid() is not None

    def boot(self) -> None:
        """Mount the overlay and start the node's init in its namespaces (returns at once)."""
        if self.running():
            return
        self.mount()
        integrations.on_node_boot(self.lab, self.name, self.merged)
        self.set_rail_links()
        boot_id = str(uuid.uuid4())
        self.boot_id_file.write_text(f"{boot_id}\n")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "KILN_ROOT": str(self.merged),
            "KILN_NODE": self.name,
            "KILN_HW": str(self.hw),
            "KILN_INIT": str(INIT_SOURCE),
            "KILN_BOOT_ID": boot_id,
        }
        argv = [
            "ip", "netns", "exec", self.state.netns,
            "unshare", "--pid", "--mount", "--uts", "--fork", "--kill-child",
            *time_namespace_options(),
            "--", "/bin/sh", "-c", LAUNCHER,
        ]  # fmt: skip
        with open(self.console, "ab") as console:
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the kiln command that started it
            )
        self.pid_file.write_text(f"{process.pid}\n")

    def boot_without_os(self, why: str) -> None:
        """Power on with nothing to run: the firmware's "no bootable device" (or a failed
        boot). The node is on (its BMC says so) but has no OS and no sshd."""
        if self.running():
            return
        # Powered, so its ports train (the HCA's firmware does that, not the OS).
        self.set_rail_links()
        argv = [
            "ip", "netns", "exec", self.state.netns,
            "unshare", "--pid", "--mount", "--uts", "--fork", "--kill-child", "--",
            "/bin/sh", "-c", 'echo "$KILN_WHY"; exec sleep infinity',
        ]  # fmt: skip
        with open(self.console, "ab") as console:
            process = subprocess.Popen(
                argv,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KILN_WHY": why},
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")

    def write_image_record(self, image: dict[str, str]) -> None:
        """What the installer leaves on the disk about the image it wrote."""
        record = self.merged / "etc/kiln-lab/image.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(image, indent=2, sort_keys=True) + "\n")

    def power_off(self) -> None:
        """Cut the power: every process of the node dies at once, the overlay is unmounted."""
        pid = self.pid()
        if pid is not None:
            try:
                # unshare --kill-child: its child, the node's PID 1, dies with it, and with
                # PID 1 every process in the node's PID namespace.
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, timeout=10)
        kill_netns_processes(self.state.netns)
        rails.power_off(self.name, self.state.netns, self.hw)
        self.pid_file.unlink(missing_ok=True)
        self.unmount()

    def set_rail_links(self, powered: bool = True) -> dict[int, bool]:
        """The node's rail links as its power and its ports (faults applied) say now."""
        return rails.set_links(self.name, self.state.netns, self.hw, powered)

    def wait_ssh(self, timeout: float) -> None:
        """Until sshd answers with its banner; error with the console's tail if it does not."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if ssh_banner(self.state.address, self.state.ssh_port):
                return
            # Just after the start, the child may not have exec'd `ip` yet, and running()
            # (which checks the command line against a recycled PID) says no: give it time.
            if not self.running() and time.monotonic() - started > STARTUP_GRACE:
                break
            time.sleep(0.1)
        tail = ""
        if self.console.exists():
            tail = "\n    ".join(self.console.read_text(errors="replace").splitlines()[-10:])
        why = "its init exited" if not self.running() else f"no sshd after {timeout:.0f} s"
        raise LabError(f"node {self.name} did not come up: {why}; {self.console}:\n    {tail}")


def time_namespace_options() -> list[str]:
    """`unshare` options giving the node a time namespace whose clocks start at its boot.

    The node shares the host's kernel, so without its own time namespace its /proc/uptime
    (CLOCK_BOOTTIME) and CLOCK_MONOTONIC would count from the host's boot. Each offset is
    minus the host clock's whole seconds now, so the node's clocks start between 0 and 1 s
    (the kernel refuses an offset that would make a clock negative). The wall clock
    (CLOCK_REALTIME) cannot be namespaced and stays the host's.
    """
    boottime = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    monotonic = int(time.clock_gettime(time.CLOCK_MONOTONIC))
    return ["--time", f"--boottime={-boottime}", f"--monotonic={-monotonic}"]


def ssh_banner(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5) as sock:
            sock.settimeout(2)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # ProcessLookupError: the process exited while its stat file was being read.
        return False
    if state == "Z":
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    """A node started by this very process is our child: collect it, leave no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise LabError(f"process {pid} did not exit after SIGKILL")
        time.sleep(0.02)
