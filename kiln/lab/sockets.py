"""Who holds a UDP port on this machine: read from /proc (the lab's UDP services, ipmi_sim
and chronyd, bind with SO_REUSEADDR or may lose the port to a host daemon, so "something is
bound there" is not enough: the lab asks whether its own process holds it)."""

from __future__ import annotations

import os
import shlex
import socket
from pathlib import Path


def udp_socket_inodes(address: str, port: int) -> set[int]:
    """The inodes of the UDP sockets bound to address:port (from /proc/net/udp)."""
    wanted = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except FileNotFoundError:
        return set()
    return {int(fields[9]) for fields in (line.split() for line in lines)
            if len(fields) > 9 and fields[1] == wanted}


def socket_holders(inodes: set[int]) -> dict[int, str]:
    """pid -> command line of every process holding one of these socket inodes."""
    links = {f"socket:[{inode}]" for inode in inodes}
    holders = {}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            held = any(os.readlink(fd) in links for fd in fd_dir.iterdir())
            if held:
                argv = (fd_dir.parent / "cmdline").read_bytes().split(b"\0")
                holders[int(fd_dir.parent.name)] = shlex.join(
                    arg.decode(errors="replace") for arg in argv if arg)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return holders


def bound_by(pid: int, address: str, port: int) -> bool:
    """Whether process `pid` itself has a UDP socket bound to address:port.

    ipmi_sim sets SO_REUSEADDR: a second one binds the same address without complaint, so
    "some socket is bound there" would take another process's socket for this one's.
    """
    return pid in socket_holders(udp_socket_inodes(address, port))


def udp_bound(address: str, port: int) -> bool:
    """Whether some process has a UDP socket bound to address:port."""
    return bool(udp_socket_inodes(address, port))
