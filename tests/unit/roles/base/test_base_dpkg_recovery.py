"""What an interrupted dpkg leaves, read from the node, and the script that finishes it.

The script runs here under sh with a stand-in `dpkg` first on PATH (its messages are dpkg
1.21's, as bookworm's dpkg prints them); the lab test (tests/lab/test_interrupted.py) runs
it on a node against the real dpkg.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kiln.core.errors import KilnError
from kiln.roles.base.facts import unconfigured_packages
from kiln.roles.base.parsers import parse_dpkg_journal, parse_dpkg_query
from kiln.roles.base.settings import settings_from_data
from kiln.roles.base.templates import render

LOCKED = ("dpkg: error: dpkg frontend lock was locked by another process with pid {pid}\n"
          "Note: removing the lock file is always wrong, can damage the locked area\n"
          "and the entire system. See <https://wiki.debian.org/Teams/Dpkg/FAQ#db-lock>.\n")


def test_the_journal_is_the_numbered_entries_only():
    assert parse_dpkg_journal("0000\n0001\ntmp.i\n0002\n") == ["0000", "0001", "0002"]
    assert parse_dpkg_journal("") == []


def test_unconfigured_packages_are_those_configure_a_finishes():
    packages = parse_dpkg_query(
        "cuda-toolkit-12-8\t12.8.1-1\tiU\n"
        "libnccl2\t2.26.5-1\tiF\n"
        "nvidia-kernel-common-570-server\t570.148.08-1\tiH\n"
        "chrony\t4.3-2\tii\n"
        "old-thing\t1.0\trc\n")
    # Half-installed (H) too: the finishing script reinstalls it.
    assert unconfigured_packages(packages) == {
        "cuda-toolkit-12-8": "U", "libnccl2": "F", "nvidia-kernel-common-570-server": "H"}


def test_the_lock_wait_is_host_data_with_a_bound():
    base = {"ntp_servers": ["10.0.0.1"], "hostname": "gpu-001"}
    assert settings_from_data({}, base).dpkg_lock_wait == 300
    assert settings_from_data({"kiln_dpkg_lock_wait": 5}, base).dpkg_lock_wait == 5
    with pytest.raises(KilnError, match="kiln_dpkg_lock_wait"):
        settings_from_data({"kiln_dpkg_lock_wait": -1}, base)


def run_finish(tmp_path: Path, dpkg_body: str, seconds: int,
               **tools: str) -> subprocess.CompletedProcess:
    """The script with stand-ins for dpkg (and for `tools`: dpkg_query, apt_get)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"dpkg": dpkg_body, **tools}.items():
        fake = bin_dir / name.replace("_", "-")
        fake.write_text("#!/bin/sh\n" + body)
        fake.chmod(0o755)
    script = render("base/dpkg-finish.sh.j2", seconds=seconds)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)


def test_finish_waits_while_the_old_runs_dpkg_holds_the_lock(tmp_path: Path):
    # Locked twice (the killed run's dpkg still finishing), then dpkg configures.
    body = (f'n=$(cat {tmp_path}/calls 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/calls\n'
            f'if [ "$n" -lt 2 ]; then printf "%s" "{LOCKED.format(pid=4242)}" >&2; exit 2; fi\n'
            f'echo "$*" > {tmp_path}/args; echo "Setting up cuda-toolkit-12-8 ..."\n')
    result = run_finish(tmp_path, body, seconds=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().strip() == "3"
    assert (tmp_path / "args").read_text().split() == [
        "--force-confdef", "--force-confold", "--configure", "-a"]
    assert "Setting up cuda-toolkit-12-8" in result.stdout


def test_finish_gives_up_after_the_bound_naming_the_holder(tmp_path: Path):
    holder = subprocess.Popen(["sleep", "300"])
    try:
        body = f'printf "%s" "{LOCKED.format(pid=holder.pid)}" >&2; exit 2\n'
        result = run_finish(tmp_path, body, seconds=1)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert f"pid {holder.pid} (sleep 300)" in result.stderr
    assert "still held after 1 s" in result.stderr


def test_any_other_dpkg_failure_is_reported_as_dpkg_printed_it(tmp_path: Path):
    body = 'echo "dpkg: error processing package nvidia-dkms (--configure):" >&2; exit 1\n'
    result = run_finish(tmp_path, body, seconds=30)
    assert result.returncode == 1
    assert "error processing package nvidia-dkms" in result.stderr


# What bookworm's dpkg prints for a package it was killed while unpacking.
REINSTALL = ("dpkg: error processing package linux-headers-6.1.0-28-kilnlab (--configure):\n"
             " package is in a very bad inconsistent state; you should\n"
             " reinstall it before attempting configuration\n"
             "Errors were encountered while processing:\n"
             " linux-headers-6.1.0-28-kilnlab\n")


def test_a_package_left_needing_a_reinstall_is_reinstalled_then_configured(tmp_path: Path):
    # dpkg refuses to configure until apt has reinstalled the package, then configures.
    dpkg = (f'if [ ! -e {tmp_path}/reinstalled ]; then printf "%s" "{REINSTALL}" >&2; exit 1; fi\n'
            'echo "Setting up linux-headers-6.1.0-28-kilnlab ..."\n')
    query = ("printf 'ii  chrony=4.3-2\\niUR linux-headers-6.1.0-28-kilnlab=6.1.119-1kilnlab1"
             "\\nhi  libnccl2=2.26.5-1\\niHR nvidia-dkms=570.148.08-1\\n'\n")
    apt = f'echo "$*" > {tmp_path}/apt-args; touch {tmp_path}/reinstalled\n'
    result = run_finish(tmp_path, dpkg, seconds=30, dpkg_query=query, apt_get=apt)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "apt-args").read_text().split()
    assert args[:4] == ["install", "-y", "-q", "--reinstall"]
    assert args[-2:] == ["linux-headers-6.1.0-28-kilnlab=6.1.119-1kilnlab1",
                         "nvidia-dkms=570.148.08-1"]
    assert "--allow-change-held-packages" in args
    assert "Setting up linux-headers-6.1.0-28-kilnlab" in result.stdout


def test_a_reinstall_that_fails_is_reported_as_apt_printed_it(tmp_path: Path):
    dpkg = f'printf "%s" "{REINSTALL}" >&2; exit 1\n'
    query = "printf 'iUR linux-headers-6.1.0-28-kilnlab=6.1.119-1kilnlab1\\n'\n"
    apt = ('echo "E: Version \'6.1.119-1kilnlab1\' for \'linux-headers-6.1.0-28-kilnlab\' '
           'was not found" >&2; exit 100\n')
    result = run_finish(tmp_path, dpkg, seconds=30, dpkg_query=query, apt_get=apt)
    assert result.returncode == 1
    assert "was not found" in result.stderr
