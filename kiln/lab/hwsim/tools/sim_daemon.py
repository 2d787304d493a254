"""A simulated vendor daemon: `sim-daemon NAME [ARGS]` runs as nv-fabricmanager,
nvidia-persistenced or nv-hostengine (their /usr/bin scripts exec it, lab/vendor).

The real daemons talk to the GPU driver; the lab's GPUs are simulated, so this one does what
a service manager and the node can observe: it starts, says it is simulated, writes its pid
file (/run/kiln-hwsim/NAME.pid), runs in the foreground until SIGTERM, and reads the node's
faults (hw dir, faults.json) every POLL seconds:

- `fabric-manager-down`: as nv-fabricmanager it does not start (it prints what the real one
  prints when it cannot reach the NVSwitches and exits 1; systemd's Restart=on-failure
  tries again and gives up, so `systemctl is-active nvidia-fabricmanager` says failed), and
  a running one exits 1 at its next poll. Clearing the fault lets it start again; as on a
  real node nothing restarts it by itself (`systemctl restart`, or kiln's converge, does).
- `peermem-unloaded`: every simulated daemon (they run in the node, where the simulated
  kernel module state lives) unloads nvidia_peermem if it is loaded, as `rmmod` would
  (tools/kmod_install.py). Clearing the fault lets `modprobe nvidia_peermem` load it again.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from ..profile import read_json
from ..view import hw_dir
from . import kmod_install

FABRIC_MANAGER = "nv-fabricmanager"
RUN_DIR_ENV = "KILN_HWSIM_RUN_DIR"
DEFAULT_RUN_DIR = "/run/kiln-hwsim"
POLL_ENV = "KILN_HWSIM_DAEMON_POLL"
DEFAULT_POLL_SECONDS = 1.0

# What nv-fabricmanager prints (to its journal) when the NVSwitch driver gives it nothing to
# manage, just before it exits 1 (NVIDIA/gpu-operator issue 610, data-infra/cube-studio
# issue 29: "nv-fabricmanager[4177]: request to query …" then systemd's "Control process
# exited, code=exited, status=1/FAILURE").
FM_START_FAILURE = ("request to query NVSwitch device information from NVSwitch driver failed "
                    "with error:WARNING Nothing to do [NV_WARN_NOTHING_TO_DO]")


def active_kinds() -> set[str]:
    """The kinds of the node's active faults (faults.json is small and written atomically;
    an unreadable one counts as none, and the next poll reads it again)."""
    try:
        return {f.get("kind") for f in read_json(hw_dir() / "faults.json").get("faults", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def reconcile(kinds: set[str]) -> None:
    """Make the node's simulated kernel state agree with its faults."""
    if "peermem-unloaded" in kinds:
        kmod_install.unload("nvidia_peermem")


def serve(name: str, poll: float, rounds: int | None = None) -> int | None:
    """Poll the node's faults; the exit status when the daemon must stop, or None after
    `rounds` polls (tests)."""
    done = 0
    while rounds is None or done < rounds:
        kinds = active_kinds()
        reconcile(kinds)
        if name == FABRIC_MANAGER and "fabric-manager-down" in kinds:
            print(f"{name}: kiln lab: fault fabric-manager-down: exiting", file=sys.stderr,
                  flush=True)
            return 1
        done += 1
        time.sleep(poll)
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else "sim-daemon"
    kinds = active_kinds()
    reconcile(kinds)
    if name == FABRIC_MANAGER and "fabric-manager-down" in kinds:
        print(FM_START_FAILURE, file=sys.stderr, flush=True)
        return 1
    run_dir = Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / f"{name}.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    print(f"{name}: kiln lab simulated daemon started, args: {' '.join(args[1:])}", flush=True)

    def stop(signum: int, frame: object) -> None:
        pid_file.unlink(missing_ok=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = serve(name, float(os.environ.get(POLL_ENV, DEFAULT_POLL_SECONDS)))
    pid_file.unlink(missing_ok=True)
    return status or 0
