"""A preview (pyinfra without -y) of the pinning stages on the example production inventory:
every operation is listed for the nodes it applies to, and nothing is read from nodes that
may have no OS yet (the @metal connector would have to open SSH, and there is nothing there).
"""

import subprocess
import sys
from pathlib import Path

from kiln.roles.mirror.signing import init_key

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = Path(sys.executable).with_name("pyinfra")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else b"/"
            for path in sorted(directory.rglob("*"))}


def test_preview_lists_base_and_nvidia_without_reading_the_nodes(tmp_path: Path):
    state = tmp_path / "state"
    init_key(state / "mirror")  # the site's one-time `kiln mirror init-key`
    before = snapshot(state)
    checkout_state = (ROOT / "state").exists()
    result = subprocess.run(
        [str(PYINFRA), "--dry", "inventory/prod.py", "tests/lab/pin_stack_deploy.py",
         "--data", f"kiln_mirror_state={state / 'mirror'}",
         "--data", f"kiln_ledger={state / 'kiln.db'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for operation in ("apt installs from the mirror only", "Kernel exact and held",
                      "memlock for RDMA", "sysctl", "Time sync (chrony)",
                      "Hostname from the inventory"):
        line = next(line for line in output.splitlines() if f"| {operation} " in line)
        assert "6 (gpu-001, gpu-002, gpu-017, gpu-018, svc-001, ...)" in line
    for operation in ("NVIDIA packages exact and held", "The pinned driver is the running one",
                      "nvidia-smi reports the pinned driver"):
        line = next(line for line in output.splitlines() if f"| {operation} " in line)
        assert "4 (gpu-001, gpu-002, gpu-017, gpu-018)" in line
    # The cluster mirror is the apt source (no kiln_apt_mirror in prod's group data): resolved
    # without error, so no host was refused.
    assert "Base settings and manifest" not in output
    assert "Loaded fact" not in output and "Could not connect" not in output
    # A preview writes nothing: not the controller's state, not the checkout.
    assert snapshot(state) == before
    assert (ROOT / "state").exists() == checkout_state
