#!/usr/bin/python3
"""PID 1 of a lab node: runs inside the node, with the node's own Python (stdlib only).

The lab copies this file to the node's /run/kiln/init at every boot, so it is never part of
the node's filesystem and a reset cannot lose it. It makes the node's SSH host key on first
boot, starts sshd and the enabled units through `systemctl` (the systemctl
replacement: no systemd as PID 1 here), then reaps orphans until it is told to stop.
Powering a node off is the host killing this process: the kernel then kills every process
of the node's PID namespace, as a power cut would.
"""

import os
import signal
import subprocess
import sys
import time

os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
os.environ.setdefault("LANG", "C.UTF-8")


def log(message: str) -> None:
    print(f"[kiln-init {time.strftime('%H:%M:%S')}] {message}", flush=True)


def shutdown(signum: int, frame: object) -> None:
    log(f"signal {signum}: stopping every process")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.05)
            except ChildProcessError:
                break
    sys.exit(0)


def start_sshd() -> None:
    key = "/etc/ssh/ssh_host_ed25519_key"
    if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    # Directly, not as ssh.service: the systemctl replacement (1.4.4181 in bookworm) stops a
    # KillMode=process unit by waiting for every child of its main PID, so a
    # `systemctl restart ssh` run over SSH waits on itself; and the node must stay reachable.
    result = subprocess.run(["/usr/sbin/sshd"])
    log(f"sshd started (exit {result.returncode})")


def bind_kernel_log() -> None:
    """`dmesg` shows the simulated machine's kernel log, not the host kernel's."""
    shim = "/run/kiln-hw/kernel/dmesg"
    if os.path.exists(shim) and os.path.exists("/usr/bin/dmesg"):
        result = subprocess.run(["mount", "--bind", shim, "/usr/bin/dmesg"])
        log(f"kernel log bound (exit {result.returncode})")


def bind_kernel_release() -> None:
    """/proc/sys/kernel/osrelease names the kernel the simulated machine booted (the lab
    chose it at this boot: hw/<node>/kernel/osrelease), not the host's kernel, which every
    lab node shares. uname(2) still says the host's: the lab cannot change that."""
    release = "/run/kiln-hw/kernel/osrelease"
    if os.path.exists(release):
        result = subprocess.run(["mount", "--bind", release, "/proc/sys/kernel/osrelease"])
        log(f"kernel release bound (exit {result.returncode})")


def load_modules() -> None:
    """What systemd-modules-load does at boot: `modprobe` each module named in
    /etc/modules-load.d/*.conf (the lab's modules are simulated: hwsim kmod_install)."""
    directory = "/etc/modules-load.d"
    if not os.path.isdir(directory) or not os.path.exists("/usr/sbin/modprobe"):
        return
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".conf"):
            continue
        with open(os.path.join(directory, name)) as conf:
            for line in conf:
                module = line.split("#", 1)[0].strip()
                if module and not line.lstrip().startswith(";"):
                    result = subprocess.run(["/usr/sbin/modprobe", module])
                    log(f"modules-load {module}: exit {result.returncode}")


def main() -> None:
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    os.makedirs("/run/lock", exist_ok=True)
    log(f"booting {os.uname().nodename}")
    bind_kernel_log()
    bind_kernel_release()
    load_modules()
    try:
        start_sshd()
    except Exception as exc:  # the node stays up so a human can look at it
        log(f"sshd failed: {exc}")
    if os.path.exists("/usr/bin/systemctl"):
        # Not waited for: a slow unit must not hold up the reaping below.
        subprocess.Popen(["/usr/bin/systemctl", "default"])
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


if __name__ == "__main__":
    main()
