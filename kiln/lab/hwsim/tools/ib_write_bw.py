"""Simulated perftest `ib_write_bw`: server (no host argument) and client, over real TCP.

As the real tool does, the two sides meet on TCP port 18515 (-p) to exchange their queue
pair details; here they also exchange their port's simulated rate, and both print the
bandwidth the slower side allows. A port that is not Active fails before connecting.

The report is perftest 4.x's, line for line as a real capture prints it (checked against
tests/fixtures/perftest/ib_write_bw.loopback-8M.hdr.superbench.txt): the server announces
"Waiting for client to connect" and leaves TX depth out of its banner; banner fields are
tab-separated; each side's "remote address" is the other's "local address"; both sides
print the same result row, in perftest's REPORT_FMT columns.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from typing import Any

from ..view import load_view, run_tool
from ._hca import find_hca
from ._perf import hca_gbps

RULE = "-" * 87
DEFAULT_PORT = 18515


def _options(argv: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {"d": None, "p": DEFAULT_PORT, "s": 65536, "n": 5000, "gbits": False,
                            "a": False, "host": None, "q": 1, "D": None}
    i = 0
    takes = {"-d": "d", "--ib-dev": "d", "-p": "p", "--port": "p", "-s": "s", "--size": "s",
             "-n": "n", "--iters": "n", "-q": "q", "--qp": "q", "-D": "D", "--duration": "D",
             "-i": "ib_port", "--ib-port": "ib_port", "-x": "gid", "--gid-index": "gid",
             "-m": "mtu", "--mtu": "mtu"}
    while i < len(argv):
        arg = argv[i]
        if arg in takes and i + 1 < len(argv):
            opts[takes[arg]] = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] in takes:
            name, value = arg.split("=", 1)
            opts[takes[name]] = value
        elif arg in ("--report_gbits", "--report-gbits"):
            opts["gbits"] = True
        elif arg in ("-a", "--all"):
            opts["a"] = True
        elif not arg.startswith("-"):
            opts["host"] = arg
        i += 1
    return opts


WAITING = ["************************************",
           "* Waiting for client to connect... *",
           "************************************"]


def banner(dev: str, qps: int, server: bool) -> list[str]:
    """perftest's test information block; the server side prints no TX depth."""
    return [
        RULE,
        "                    RDMA_Write BW Test",
        f" Dual-port       : OFF\t\tDevice         : {dev}",
        f" Number of qps   : {qps}\t\tTransport type : IB",
        " Connection type : RC\t\tUsing SRQ      : OFF",
        " PCIe relax order: ON",
        *([] if server else [" TX depth        : 128"]),
        " CQ Moderation   : 1",
        " Mtu             : 4096[B]",
        " Link type       : IB",
        " Max inline data : 0[B]",
        " rdma_cm QPs\t : OFF",
        " Data ex. method : Ethernet",
        RULE,
    ]


def address(lid: int, rng: random.Random) -> str:
    """What follows "local address: " (C's "%#04x", "%#06x", "%#08x", "%#016llx")."""
    return (f"LID {lid:#04x} QPN {rng.randrange(0x40, 0x2000):#06x} "
            f"PSN {rng.randrange(1 << 24):#06x} RKey {rng.randrange(1 << 21):#08x} "
            f"VAddr {0x7f0000000000 + rng.randrange(1 << 20) * 4096:#016x}")


def table_header(unit: str) -> str:
    return (f" #bytes     #iterations    BW peak[{unit}]    BW average[{unit}]   "
            "MsgRate[Mpps]")


def report_row(size: int, iterations: int, peak: float, average: float, mpps: float) -> str:
    """A result row in perftest's REPORT_FMT: %-7lu, %-7lu, %-7.2lf, %-7.2lf (two tabs),
    %-7.6lf, with the spaces between as perftest 4.x prints them."""
    return (f" {size:<7}    {iterations:<7}          {peak:<7.2f}            {average:<7.2f}"
            f"\t\t   {mpps:<7.6f}")


def _exchange(opts: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any] | None:
    port = int(opts["p"])
    if opts["host"] is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("0.0.0.0", port))
            server.listen(1)
            server.settimeout(120)
            conn, _ = server.accept()
            with conn:
                peer = json.loads(conn.makefile("r").readline())
                conn.sendall((json.dumps(mine) + "\n").encode())
                return peer
    deadline = time.monotonic() + 2.0
    while True:
        try:
            with socket.create_connection((opts["host"], port), timeout=10) as conn:
                conn.sendall((json.dumps(mine) + "\n").encode())
                return json.loads(conn.makefile("r").readline())
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


def _main(argv: list[str]) -> int:
    opts = _options(argv)
    view = load_view()
    hca = find_hca(view, opts["d"]) if opts["d"] else (view.hcas[0] if view.hcas else None)
    if hca is None:
        sys.stderr.write(" Unable to find the Infiniband/RoCE device\n")
        return 1
    port = hca["ports"][0]
    if port["state"] != "Active":
        sys.stderr.write(f" Port number 1 state is {port['state']}\n"
                         " Couldn't set the link layer\n Couldn't get context for the device\n")
        return 1
    server = opts["host"] is None
    mine = {"lid": port["lid"], "gbps": hca_gbps(hca),
            "flaky": view.flaky_fails("ib_write_bw"),
            "address": address(port["lid"], random.Random(f"{hca['node_guid']}/qp"))}
    if server:
        sys.stdout.write("\n".join(WAITING) + "\n")
        sys.stdout.flush()
    peer = _exchange(opts, mine)
    if peer is None:
        sys.stderr.write(f" Couldn't connect to {opts['host']}:{opts['p']}\n"
                         "Unable to open file descriptor for socket connection Unable to init "
                         "the socket connection\n")
        return 1
    out = banner(hca["name"], int(opts["q"]), server)
    out += [f" local address: {mine['address']}", f" remote address: {peer['address']}", RULE]
    if mine["flaky"] or peer.get("flaky"):
        sys.stdout.write("\n".join(out) + "\n")
        sys.stderr.write(" Completion with error at client\n Failed status 12: wr_id 0 syndrom "
                         "0x81\nscnt=128, ccnt=0\n Failed to complete run_iter_bw function "
                         "successfully\n")
        return 1
    gbps = min(mine["gbps"], peer["gbps"])
    # Both sides print the client's measurement: seed from the pair, not from one side.
    rng = random.Random("/".join(sorted((mine["address"], peer["address"]))))
    unit = "Gb/sec" if opts["gbits"] else "MB/sec"
    out.append(table_header(unit))
    sizes = [2 ** k for k in range(1, 24)] if opts["a"] else [int(opts["s"])]
    for size in sizes:
        # small messages are bound by message rate, not the link
        eff = gbps * size / (size + 2048)
        avg = eff * (1 - rng.random() * 0.002)
        peak = eff * (1 + rng.random() * 0.001)
        mpps = avg * 1e9 / 8 / size / 1e6
        if not opts["gbits"]:
            avg, peak = avg * 1e9 / 8 / 2**20, peak * 1e9 / 8 / 2**20
        out.append(report_row(size, int(opts["n"]), peak, avg, mpps))
    out.append(RULE)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)
