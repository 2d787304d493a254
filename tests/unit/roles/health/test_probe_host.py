"""The health read's framing (run for real in a local shell: timeouts, missing tools, a
section that fails) and the host checks' parsers and judges."""

from __future__ import annotations

import subprocess

import pytest

from kiln.core.checks import Status
from kiln.core.manifest import HostHealth
from kiln.core.parsing import ParseError
from kiln.roles.health import system
from kiln.roles.health.probe import Section, script, split_sections


def run(parts: list[Section]) -> dict:
    out = subprocess.run(["sh", "-c", script(parts)], capture_output=True, text=True,
                         timeout=60, check=True)
    return split_sections(out.stdout, {p.name: p.timeout_s for p in parts})


def test_a_section_that_hangs_is_cut_at_its_timeout_and_the_others_still_report():
    got = run([Section("before", "echo one; printf 'two'", 5),
               Section("hangs", "echo started; sleep 30", 1),
               Section("fails", "echo oops >&2; exit 3", 5),
               Section("missing", "no-such-tool-kiln --version", 5),
               Section("after", "echo three", 5)])
    assert got["before"].text == "one\ntwo" and got["before"].rc == 0
    assert got["hangs"].timed_out and got["hangs"].text == "started"
    assert "within 1 s" in got["hangs"].why_unreadable()
    assert got["fails"].rc == 3 and got["fails"].text == "oops"
    assert got["fails"].why_unreadable() is None  # it ran: its checks judge the text
    assert got["missing"].missing_tool and "not found" in got["missing"].why_unreadable()
    assert got["after"].text == "three"


def test_a_read_cut_short_keeps_what_came_and_says_so():
    text = "@@kiln-read begin a\nx\n\n@@kiln-read end a rc=0\n@@kiln-read begin b\npart"
    got = split_sections(text)
    assert got["a"].text == "x" and got["b"].rc is None
    assert "cut short" in got["b"].why_unreadable()
    with pytest.raises(ParseError, match="line 1: output outside"):
        split_sections("stray\n@@kiln-read begin a\n@@kiln-read end a rc=0")


CPUINFO = "\n".join(
    f"processor\t: {i}\nphysical id\t: {i // 112}\nmodel name\t: Intel(R) Xeon(R) Platinum "
    "8480C" for i in range(224))


def test_cpu_sockets_threads_and_model():
    cpu = system.parse_cpuinfo(CPUINFO)
    assert cpu == {"threads": 224, "sockets": 2,
                   "models": ["Intel(R) Xeon(R) Platinum 8480C"]}
    want = HostHealth(cpu_model="Xeon", cpu_sockets=2, cpu_threads=224)
    assert system.check_cpu("n", cpu, want).ok
    half = system.parse_cpuinfo("\n".join(CPUINFO.splitlines()[: 112 * 3]))
    bad = system.check_cpu("n", half, want)
    assert bad.status == Status.CRITICAL and "1 CPU socket(s), not 2" in bad.problems


def test_memory_within_tolerance_and_a_lost_dimm():
    want = HostHealth(memory_gib=2048, memory_tolerance_pct=3)
    full = system.parse_meminfo("MemTotal:       2113396892 kB\nSwapTotal:             0 kB\n")
    assert system.check_memory("n", full, want).ok
    one_dimm_less = {"MemTotal": 2113396892 - 64 * 1024 * 1024}
    bad = system.check_memory("n", one_dimm_less, want)
    assert bad.status == Status.CRITICAL and "GiB of memory, not 2048" in bad.problems[0]
    assert system.check_memory("n", full, HostHealth()).ok  # not pinned: not checked


def test_swap_disks_and_free_space():
    swaps = system.parse_swaps("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
                             "/swap.img                               file\t\t8388604\t\t0"
                             "\t\t-2\n")
    assert swaps == [{"device": "/swap.img", "type": "file", "size_kib": 8388604}]
    assert system.check_swap("n", swaps, HostHealth()).status == Status.CRITICAL
    assert system.check_swap("n", [], HostHealth()).ok
    nvme = system.parse_nvme("nvme0\tSAMSUNG MZQL23T8HCLS-00A07\tlive\n"
                           "nvme1\tSAMSUNG MZQL23T8HCLS-00A07\tdead\n")
    df = system.parse_df("Filesystem     1-blocks      Used  Available Capacity Mounted on\n"
                       "/dev/nvme0n1p2 1006450147328 996450147328 5000000000 99% /\n")
    results = system.check_disks("n", nvme, df, HostHealth(nvme_count=2, min_free_gib={"/": 20}))
    assert [r.status for r in results] == [Status.CRITICAL, Status.CRITICAL]
    assert "1 of 2 NVMe drives live (nvme1 not live)" in results[0].problems[0]
    assert results[1].subject.name == "/" and "4.7 GiB free" in results[1].problems[0]


@pytest.mark.parametrize("text, synced", [
    ("Reference ID    : 0AE70001 (10.231.0.1)\nStratum         : 9\nLeap status     : Normal\n",
     True),
    ("Reference ID    : 00000000 ()\nStratum         : 0\n"
     "Leap status     : Not synchronised\n", False),
    ("NTPSynchronized=yes\n", True),
    ("NTPSynchronized=no\n", False),
])
def test_time_sync_from_chrony_or_timedated(text, synced):
    sync = system.parse_time_sync(text)
    assert sync["synchronised"] is synced
    assert system.check_time("n", sync, HostHealth()).ok is synced


def test_time_sync_unreadable_is_an_error_naming_what_came():
    with pytest.raises(ParseError, match="506 Cannot talk to daemon"):
        system.parse_time_sync("506 Cannot talk to daemon\n")


def test_container_sees_every_gpu():
    listing = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})" for i in range(8))
    assert system.check_container("n", listing, 0, 8).ok
    bad = system.check_container("n", "docker: Error response from daemon: could not select "
                               "device driver \"\" with capabilities: [[gpu]].", 125, 8)
    assert bad.status == Status.CRITICAL and "0 of 8 GPUs" in bad.problems[0]
