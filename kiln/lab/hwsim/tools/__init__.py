"""The simulated tools: `/usr/bin/<tool>` on a lab node runs `TOOLS[tool]`'s `main()`
(the scripts are written by the vendor packages, lab/vendor/debs.py).

Each module prints what the real tool prints for the node's view (profile + faults +
boot), with the real exit statuses where the real tool has them.
"""

# tool name on the node -> module in this package
TOOLS = {
    "nvidia-smi": "nvidia_smi",
    "dcgmi": "dcgmi",
    "ibstat": "ibstat",
    "ibstatus": "ibstatus",
    "ibv_devinfo": "ibv_devinfo",
    "mlxconfig": "mlxconfig",
    "mlxfwmanager": "mlxfwmanager",
    "flint": "flint",
    "mlxfwreset": "mlxfwreset",
    "kmod-install": "kmod_install",  # modprobe's install rule (/usr/lib/kiln-hwsim)
    "sim-daemon": "sim_daemon",  # behind nv-fabricmanager & co. (/usr/lib/kiln-hwsim)
    "all_reduce_perf": "all_reduce_perf",
    "ib_write_bw": "ib_write_bw",
    "dmesg": "dmesg",
}
