"""The lab's simulated hardware: per-node profiles, faults, and the tools that print them.

Stdlib only, relative imports only: on lab nodes this package is installed as `kiln_hwsim`
(by the simulated vendor packages), on the host it imports as `lab.hwsim`.

- `profile`: the hardware of one node, generated deterministically from (seed, node name).
- `faults`: the fault kinds, the `--faults FILE` format and how each fault changes the view.
- `view`: what the tools see: profile + active faults + what was true at the last boot.
- `tools/`: one module per simulated tool, each with `main(argv=None) -> int`.
- `lab_hooks`: what the node builder and `kiln lab fault` call on the host.
"""

HW_DIR_ENV = "KILN_HW_DIR"
DEFAULT_HW_DIR = "/run/kiln-hw"
FLASH_DIR_ENV = "KILN_HW_FLASH_DIR"
DEFAULT_FLASH_DIR = "/run/kiln-hw-flash"
# Written by the simulated driver package inside the node: the driver version installed on
# disk (what a reboot would load), as opposed to boot.json's loaded module.
DRIVER_VERSION_FILE_ENV = "KILN_HWSIM_DRIVER_VERSION_FILE"
DEFAULT_DRIVER_VERSION_FILE = "/usr/share/kiln-hwsim/driver-version"
