"""The drift audit's wall time on N lab nodes, beside Ansible and beside the floor.

    sudo .venv/bin/python bench/audit_speed.py [--nodes 8 32] [--repeat 3] [--json]

For each N: `kiln lab up --deployed --nodes N --service-nodes 1` (the lab lock is `kiln lab
up`'s; never run this while the lab tests run), then, in one run on the same lab, each best
of `--repeat`:

- kiln: `pyinfra -y inventory/lab.py deploy/audit.py` (the whole process: inventory, SSH,
  the one combined read per node, each node's BMC read over Redfish beside it, parsing,
  the fleet's comparison, the ledger record and the JSON report);
- ansible: ansible-playbook (ansible-core from PyPI, in a venv of its own under the lab
  directory) running the same combined read command on every node with the `shell`
  module: forks = N, pipelining on, fact gathering off, host keys not checked;
- floor: one `ssh` process per node, all at once, each running the same combined read
  command; the wall time until the last one returns.

The read command is the audit's own (kiln.roles.audit.read.sections over the lab manifest,
framed by kiln.core.sections). The nodes have no pinned stack installed (the benchmark
measures reading, not what is read): each tool's part answers "command not found" or its
simulated output alike for all three. Prints the seconds and the ratios kiln/ansible and
kiln/floor; asserts nothing. The issue's target: kiln at least 5x faster than Ansible and
within 2x of the floor at N = 32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o",
               "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR"]


def run(*argv: str, timeout: int = 1800, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)


def read_command() -> str:
    from kiln.core.manifest import load_manifest
    from kiln.core.paths import FIRMWARE_DIR
    from kiln.core.sections import script
    from kiln.roles.audit.read import sections

    return script(sections(load_manifest(FIRMWARE_DIR / "lab.yaml")))


def ansible_bin(lab_dir: Path) -> Path:
    """ansible-playbook in a venv of its own (installed once, from PyPI)."""
    venv = lab_dir / "bench-ansible"
    playbook = venv / "bin" / "ansible-playbook"
    if not playbook.exists():
        made = run(sys.executable, "-m", "venv", str(venv))
        if made.returncode:
            raise SystemExit(made.stdout)
        installed = run(str(venv / "bin" / "pip"), "install", "--quiet", "ansible-core")
        if installed.returncode:
            raise SystemExit(installed.stdout)
    return playbook


def ansible_files(work: Path, state: Any, nodes: list, command: str) -> tuple[Path, Path, Path]:
    inventory = work / "hosts.ini"
    inventory.write_text("[gpu]\n" + "".join(
        f"{node.name} ansible_host={node.address} ansible_user=root "
        f"ansible_ssh_private_key_file={state.ssh_key}\n" for node in nodes))
    config = work / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        f"forks = {len(nodes)}\n"
        "host_key_checking = False\n"
        "gathering = explicit\n"
        "interpreter_python = /usr/bin/python3\n"
        "stdout_callback = default\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o "
        "UserKnownHostsFile=/dev/null -o LogLevel=ERROR\n")
    playbook = work / "audit.yml"
    playbook.write_text(json.dumps([{
        "hosts": "gpu", "gather_facts": False,
        "tasks": [{"name": "the audit's read", "ansible.builtin.shell": command,
                   "register": "audit_read", "changed_when": False}],
    }], indent=2))
    return inventory, config, playbook


def time_kiln(data: list[str]) -> float:
    started = time.monotonic()
    out = run(str(BIN / "pyinfra"), "-y", "inventory/lab.py", "deploy/audit.py", *data)
    took = time.monotonic() - started
    if "audit: " not in out.stdout:
        raise SystemExit("kiln's audit printed no audit:\n" + out.stdout[-3000:])
    return took


def time_ansible(playbook_bin: Path, inventory: Path, config: Path, playbook: Path) -> float:
    env = {**os.environ, "ANSIBLE_CONFIG": str(config)}
    started = time.monotonic()
    out = run(str(playbook_bin), "-i", str(inventory), str(playbook), env=env,
              cwd=config.parent)
    took = time.monotonic() - started
    if out.returncode:
        raise SystemExit("ansible-playbook failed:\n" + out.stdout[-3000:])
    return took


def time_floor(state: Any, nodes: list, command: str) -> float:
    started = time.monotonic()
    processes = [subprocess.Popen(["ssh", "-i", state.ssh_key, *SSH_OPTIONS,
                                   f"root@{node.address}", command],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for node in nodes]
    for process in processes:
        process.communicate(timeout=600)
    took = time.monotonic() - started
    failed = [n.name for n, p in zip(nodes, processes, strict=True) if p.returncode]
    if failed:
        raise SystemExit(f"ssh failed on {failed}")
    return took


def measure(count: int, repeat: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from lab_data import lab_apt_data

    from kiln.lab.state import load_state

    kiln = str(BIN / "kiln")
    run(kiln, "lab", "down")
    up = run(kiln, "lab", "up", "--deployed", "--nodes", str(count), "--service-nodes", "1")
    if up.returncode:
        raise SystemExit(up.stdout[-3000:])
    state = load_state()
    nodes = [node for node in state.nodes if node.role == "gpu"]
    command = read_command()
    data = lab_apt_data(state)
    playbook_bin = ansible_bin(Path(state.lab_dir))
    with tempfile.TemporaryDirectory() as work:
        files = ansible_files(Path(work), state, nodes, command)
        times: dict[str, list[float]] = {"kiln": [], "ansible": [], "floor": []}
        # Interleaved, so a slow minute of the machine lands on all three alike.
        for _ in range(repeat):
            times["floor"].append(time_floor(state, nodes, command))
            times["ansible"].append(time_ansible(playbook_bin, *files))
            times["kiln"].append(time_kiln(data))
    return {"nodes": count, "seconds": times,
            "best": {name: round(min(s), 2) for name, s in times.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("the lab needs root")
    results = []
    try:
        for count in args.nodes:
            result = measure(count, args.repeat)
            best_of = result["best"]
            result["kiln_over_ansible"] = round(best_of["kiln"] / best_of["ansible"], 3)
            result["kiln_over_floor"] = round(best_of["kiln"] / best_of["floor"], 3)
            results.append(result)
            if not args.json:
                print(f"N={count}: kiln {best_of['kiln']:.2f} s, ansible "
                      f"{best_of['ansible']:.2f} s, floor {best_of['floor']:.2f} s (best of "
                      f"{args.repeat}); kiln/ansible {result['kiln_over_ansible']:.2f} "
                      f"(ansible/kiln {1 / result['kiln_over_ansible']:.1f}x), kiln/floor "
                      f"{result['kiln_over_floor']:.2f}", flush=True)
    finally:
        run(str(BIN / "kiln"), "lab", "down")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
