"""The @metal connector's SFTP session follows its SSH client across a reboot mid-run.

Seen in `make demo`: the NVIDIA stage rebooted the GPU nodes through their BMCs, the next
file upload of the same run went to the SFTP session of the SSH connection that died with
the old boot ("Socket is closed"). paramiko's SFTP opening is replaced by a recorder: what
is under test is which SSH client the connector's file transfers use.
"""

from __future__ import annotations

from types import SimpleNamespace

import pyinfra.connectors.ssh as pyinfra_ssh

from kiln.connectors.metal import MetalConnector


class Client:
    def __init__(self, name: str):
        self.transport = SimpleNamespace(of=name)

    def get_transport(self) -> SimpleNamespace:
        return self.transport


def connector() -> MetalConnector:
    node = MetalConnector.__new__(MetalConnector)  # no inventory: only the transfer logic
    node.data = {"ssh_file_transfer_protocol": "sftp"}
    return node


def test_a_new_ssh_client_gets_a_new_sftp_session(monkeypatch):
    opened = []
    monkeypatch.setattr(pyinfra_ssh.SFTPClient, "from_transport",
                        lambda transport: opened.append(transport.of) or f"sftp on {transport.of}")
    node = connector()
    node.client = Client("first boot")
    assert node.get_file_transfer_connection() == "sftp on first boot"
    assert node.get_file_transfer_connection() == "sftp on first boot"
    node.client = Client("after the reboot")  # what roles.bmc's reboot leads to
    assert node.get_file_transfer_connection() == "sftp on after the reboot"
    assert opened == ["first boot", "after the reboot"]


def test_disconnect_forgets_the_session(monkeypatch):
    monkeypatch.setattr(pyinfra_ssh.SFTPClient, "from_transport",
                        lambda transport: f"sftp on {transport.of}")
    node = connector()
    node.client = Client("first boot")
    node.get_file_transfer_connection()
    node.disconnect()  # what pyinfra calls at the end of a run
    assert node._transfer is None
