"""The lab's stand-in for loading a simulated kernel module: `modprobe MODULE` runs this.

The lab's nodes share the host's kernel, which has none of the NVIDIA or Mellanox modules; so
the simulated driver package ships a modprobe configuration (/etc/modprobe.d, a real kmod
feature: `install MODULE COMMAND` runs COMMAND instead of inserting the module) that runs
this program, `kmod-install MODULE`. It loads the module as far as the lab can tell:

- the module's prerequisites must be loaded (nvidia_peermem needs the NVIDIA module of the
  node's boot, boot.json `driver`); otherwise it fails as modprobe does on missing symbols;
- the load is recorded as a /proc/modules line in the node's /run/kiln/proc-modules (tmpfs:
  gone at power off, as a loaded module is), which the node's launcher binds over
  /proc/modules when the host kernel has a /proc/modules to stand in for (lab/nodes.py).
  A second load is a no-op, as modprobe of a loaded module is.
- with the `peermem-unloaded` fault the load fails as it does when the running ib_core
  exports another version of the peer-memory API than nvidia_peermem was built against
  (after an OFED or kernel change): "modprobe: ERROR: could not insert 'nvidia_peermem':
  Invalid argument" (gpu-operator issue 2868; the kernel's symbol lines are the fault's
  dmesg lines).

`unload(name)` is the other direction (what `rmmod` does to the node's state): the in-node
simulated daemons (tools/sim_daemon.py) call it when the fault appears while the module is
loaded.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

from ..view import load_view, run_tool

MODULES_FILE_ENV = "KILN_HWSIM_MODULES_FILE"
DEFAULT_MODULES_FILE = "/run/kiln/proc-modules"
# Where a loaded module's /sys/module/<name> lives: the node's /sys/module/<name> is a link
# here (hwsim/sysfs.py), dangling until the module is loaded.
RUN_MODULES = "/run/kiln/modules"
SYS_MODULES_ENV = "KILN_HWSIM_SYS_MODULES"

# module (as /proc/modules names it) -> (size, the modules it uses, as /proc/modules lists them)
MODULES = {"nvidia_peermem": (16384, "nvidia,ib_core,")}


def modules_file() -> Path:
    return Path(os.environ.get(MODULES_FILE_ENV, DEFAULT_MODULES_FILE))


def loaded(path: Path) -> set[str]:
    try:
        return {line.split(" ", 1)[0] for line in path.read_text().splitlines() if line}
    except FileNotFoundError:
        return set()


def _main(argv: list[str]) -> int:
    if len(argv) < 1:
        sys.stderr.write("usage: kmod-install MODULE [OPTIONS]\n")
        return 2
    name = argv[0].replace("-", "_")
    if name not in MODULES:
        sys.stderr.write(f"modprobe: FATAL: Module {argv[0]} not found (kiln lab: not "
                         "simulated)\n")
        return 1
    view = load_view()
    if name == "nvidia_peermem" and view.loaded_driver is None:
        sys.stderr.write(f"modprobe: ERROR: could not insert '{name}': Unknown symbol in "
                         "module, or unknown parameter (see dmesg)\n")
        return 1
    if name == "nvidia_peermem" and view.profile["sim"]["peermem_unloaded"]:
        sys.stderr.write(f"modprobe: ERROR: could not insert '{name}': Invalid argument\n")
        return 1
    path = modules_file()
    state = sys_module_dir(name)
    state.mkdir(parents=True, exist_ok=True)
    (state / "initstate").write_text("live\n")
    if name in loaded(path):
        return 0
    size, uses = MODULES[name]
    # Appended in place: the launcher's bind of this file over /proc/modules holds its inode.
    with open(path, "a", encoding="utf-8") as modules:
        modules.write(f"{name} {size} 0 {uses} Live 0x0000000000000000 (OE)\n")
    return 0


def sys_module_dir(name: str) -> Path:
    return Path(os.environ.get(SYS_MODULES_ENV, RUN_MODULES)) / name


def unload(name: str) -> bool:
    """Unload a simulated module as rmmod would: its /proc/modules line and its
    /sys/module entry go. Returns whether it was loaded. The modules file is rewritten in
    place (the launcher's bind over /proc/modules holds its inode), under a lock (several
    daemons may do this at once)."""
    path = modules_file()
    was_loaded = False
    try:
        with open(path, "r+", encoding="utf-8") as modules:
            fcntl.flock(modules, fcntl.LOCK_EX)
            lines = modules.read().splitlines(keepends=True)
            keep = [line for line in lines if line.split(" ", 1)[0] != name]
            if len(keep) != len(lines):
                was_loaded = True
                modules.seek(0)
                modules.write("".join(keep))
                modules.truncate()
    except FileNotFoundError:
        pass
    state = sys_module_dir(name)
    if state.exists():
        was_loaded = True
        shutil.rmtree(state, ignore_errors=True)
    return was_loaded


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)
