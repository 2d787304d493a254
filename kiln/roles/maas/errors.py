"""What can go wrong talking to MAAS, one class per thing a caller handles differently.

Every message names the MAAS server (its URL, never the API key) and, where there is one,
the machine; a refusal carries MAAS's own response text, a failure state MAAS's own
status_message.
"""

from __future__ import annotations

from kiln.core.errors import KilnError


class MAASError(KilnError):
    """Anything the MAAS client reports; the message says where and what."""


class MAASAuthError(MAASError):
    """401: the API key is wrong or revoked. Never retried: retrying cannot fix a key."""


class MAASRequestError(MAASError):
    """MAAS refused the request (400, 403, 404, 409 …); `text` is what MAAS answered."""

    def __init__(self, message: str, status: int, text: str):
        super().__init__(message)
        self.status = status
        self.text = text


class MAASNotFound(MAASRequestError):
    """404, or no machine with the hostname asked for."""


class MAASUnavailable(MAASError):
    """MAAS did not answer usably (502/503/504, connection errors) within the retry bound."""


class MachineFailed(MAASError):
    """MAAS put the machine in a failure state (Failed deployment, Broken …)."""

    def __init__(self, message: str, hostname: str, status_name: str, status_message: str):
        super().__init__(message)
        self.hostname = hostname
        self.status_name = status_name
        self.status_message = status_message


class MachineStateError(MAASError):
    """The machine is in a state the operation cannot start from, or left the expected path."""


class MAASTimeout(MAASError):
    """MAAS did not finish within the operation's bound: its own failure class."""


class ImageMismatch(MAASError):
    """Deployed, but with another image than the manifest's; kiln does not reimage silently."""
