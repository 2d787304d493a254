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


# --- the replace step of an upload (run here with sh, on local files) -------------------------


def _replace(upload, target):
    import subprocess

    from kiln.connectors.metal import _REPLACE

    return subprocess.run(["sh", "-c", _REPLACE, "kiln-put", str(upload), str(target)],
                          capture_output=True, text=True, timeout=10)


def test_an_upload_replaces_its_target_whole_keeping_the_old_mode(tmp_path):
    target, upload = tmp_path / "authorized_keys", tmp_path / "authorized_keys.kiln-upload"
    target.write_text("old\n")
    target.chmod(0o600)
    old_inode = target.stat().st_ino
    upload.write_text("new\n")
    upload.chmod(0o644)
    done = _replace(upload, target)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "new\n" and not upload.exists()
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.stat().st_ino != old_inode  # renamed into place, not written in place


def test_a_new_target_is_the_upload_and_a_symlink_is_written_through(tmp_path):
    new, upload = tmp_path / "new.conf", tmp_path / "new.conf.kiln-upload"
    upload.write_text("a\n")
    assert _replace(upload, new).returncode == 0 and new.read_text() == "a\n"
    real, link = tmp_path / "real.conf", tmp_path / "link.conf"
    real.write_text("old\n")
    link.symlink_to(real)
    upload = tmp_path / "link.conf.kiln-upload"
    upload.write_text("through\n")
    assert _replace(upload, link).returncode == 0
    assert link.is_symlink() and real.read_text() == "through\n" and not upload.exists()
