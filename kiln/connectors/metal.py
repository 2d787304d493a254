"""`@metal/<name>`: a bare-metal node known by its BMC and MAAS identity.

A node kiln is bringing up has no OS at the start of the run, so this connector does not
open SSH when pyinfra connects: API operations (MAAS, Redfish, IPMI) run on the controller
as FunctionCommands and need no connection to the node. SSH is opened on first use, by the
first operation or fact that runs a command on the node, and only once MAAS reports the
machine Deployed (when the inventory names a MAAS server): before that there is no OS to
log in to, and whatever answers on the address is not the node kiln means. Everything about
the SSH session itself is pyinfra's own SSH connector.
"""

from __future__ import annotations

import logging
from typing import Any

from pyinfra.api import QuoteString, StringCommand
from pyinfra.api.exceptions import ConnectError
from pyinfra.connectors.ssh import SSHConnector

from kiln.core.context import node_context
from kiln.core.errors import KilnError

logger = logging.getLogger("pyinfra")

# $1 the complete upload, $2 the target: the target's owner and mode carried over, then an
# atomic rename; a symlink is written through (its target file, not the link, changes).
_REPLACE = (
    'if [ -L "$2" ]; then cat "$1" > "$2" && rm -f "$1"; exit; fi; '
    'if [ -e "$2" ]; then chown --reference="$2" "$1" && chmod --reference="$2" "$1"; fi; '
    'mv -f "$1" "$2"'
)


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
            self._require_deployed()
            super().connect()

    def _require_deployed(self) -> None:
        context = node_context(self.host)
        try:
            if context.maas_server is None:
                return  # no MAAS in this inventory: the node is installed some other way
        except KilnError as exc:
            raise ConnectError(str(exc)) from None
        from kiln.roles.maas.machine import Status
        from kiln.roles.maas.settings import client_for_host, identity_for_host

        node = context.label
        try:
            machine = client_for_host(context).find(identity_for_host(context))
        except (KilnError, OSError) as exc:
            raise ConnectError(f"{node}: cannot tell whether it is deployed: {exc}") from None
        if machine.status != Status.DEPLOYED:
            raise ConnectError(
                f"{node}: MAAS reports {machine.describe_status()}; kiln opens SSH only "
                "once MAAS reports it Deployed"
            )

    def get_file_transfer_connection(self) -> Any:
        # pyinfra keeps one SFTP session per connector for the whole run. A node rebooted
        # through its BMC mid-run (a driver change, firmware) gets a new SSH client, and its
        # file transfers need a session on that client, not the dead one.
        if getattr(self, "_transfer_client", None) is not self.client:
            open_transfer = SSHConnector.get_file_transfer_connection.__wrapped__
            self._transfer = open_transfer(self)
            self._transfer_client = self.client
        return self._transfer

    def disconnect(self) -> None:
        # pyinfra's own clears its memoized session, which this connector does not use.
        self._transfer = self._transfer_client = None

    def run_shell_command(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_ssh()
        return super().run_shell_command(*args, **kwargs)

    def put_file(self, filename_or_io: Any, remote_filename: str,
                 remote_temp_filename: str | None = None, print_output: bool = False,
                 print_input: bool = False, **arguments: Any) -> bool:
        """Upload beside the target, then rename it into place.

        As root, pyinfra's SSH connector writes the target through SFTP directly: a run
        killed mid-upload (or a dropped link) leaves half a file that services then read.
        The upload goes to `<target>.kiln-upload` in the same directory (one filesystem, so
        `mv` is an atomic rename) and replaces the target only once complete, keeping the
        old file's owner and mode. A symlinked target is written through, as before."""
        self._ensure_ssh()
        upload = f"{remote_filename}.kiln-upload"
        if not super().put_file(filename_or_io, upload, remote_temp_filename,
                                print_output=print_output, print_input=print_input,
                                **arguments):
            return False
        status, output = self.run_shell_command(
            StringCommand("sh", "-c", QuoteString(_REPLACE), "kiln-put", QuoteString(upload),
                          QuoteString(remote_filename)),
            print_output=print_output, print_input=print_input, **arguments)
        if status is False:
            logger.error(f"{self.host.print_prefix}replacing {remote_filename} with the "
                         f"upload failed: {output.stderr}")
        return bool(status)

    def get_file(self, *args: Any, **kwargs: Any) -> bool:
        self._ensure_ssh()
        return super().get_file(*args, **kwargs)

    def rsync(self, *args: Any, **kwargs: Any) -> bool:
        self._ensure_ssh()
        return super().rsync(*args, **kwargs)
