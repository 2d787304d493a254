"""`@metal/<name>`: a bare-metal node known by its BMC and MAAS identity.

A node kiln is bringing up has no OS at the start of the run, so this connector does not
open SSH when pyinfra connects: API operations (MAAS, Redfish, IPMI) run on the controller
as FunctionCommands and need no connection to the node. SSH is opened on first use, by the
first operation or fact that runs a command on the node; by then the provisioning stage has
deployed it. Everything about the SSH session itself is pyinfra's own SSH connector.
"""

from __future__ import annotations

from typing import Any

from pyinfra.connectors.ssh import SSHConnector


class MetalConnector(SSHConnector):
    """SSH to a node, opened lazily; the node's identity rides along in host data."""

    @staticmethod
    def make_names_data(name: str) -> Any:
        if not name:
            raise ValueError("@metal needs a node name: @metal/<hostname>")
        # The plain node name, so `--limit gpu-017` selects it.
        yield name, {}, ["metal"]

    def connect(self) -> None:
        # Deferred: a node with no OS yet is still a valid target for API operations.
        return None

    def _ensure_ssh(self) -> None:
        if self.client is None:
            super().connect()

    def run_shell_command(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_ssh()
        return super().run_shell_command(*args, **kwargs)

    def put_file(self, *args: Any, **kwargs: Any) -> bool:
        self._ensure_ssh()
        return super().put_file(*args, **kwargs)

    def get_file(self, *args: Any, **kwargs: Any) -> bool:
        self._ensure_ssh()
        return super().get_file(*args, **kwargs)

    def rsync(self, *args: Any, **kwargs: Any) -> bool:
        self._ensure_ssh()
        return super().rsync(*args, **kwargs)
