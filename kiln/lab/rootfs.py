"""The nodes' root filesystems: one Debian bookworm base, built once, and a fresh overlay each.

The base is built with debootstrap (variant minbase plus what a MAAS-deployed node has that
kiln needs) into `<lab>/base/`, and described by `<lab>/base.json`; it is rebuilt only when
that description changes (package list or the lab's tweaks). It is built into a scratch
directory and renamed into place, so an interrupted build never leaves a half base behind.

systemd cannot be PID 1 in a node, so units are run by `systemctl` from Debian's package
`systemctl` (source package docker-systemctl-replacement): `systemctl enable --now x` works.

The debootstrap mirror is the one the host's apt already uses (read from /etc/apt/sources.list
and sources.list.d at run time), or $KILN_LAB_MIRROR.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kiln.lab.host import LabError, require_tools

SUITE = "bookworm"
PACKAGES = [
    "openssh-server",
    "python3",
    "sudo",
    "apt",
    "iproute2",
    "openmpi-bin",
    "python3-mpi4py",
    "ca-certificates",
    "gnupg",
    "procps",
    "less",
    "iputils-ping",
    "curl",
    "kmod",  # modprobe: every server image has it (the simulated NVIDIA package's rule)
    "systemctl",  # docker-systemctl-replacement: runs unit files without systemd as PID 1
    # Slurm, as a site's image carries it; which daemons a node runs is its role's (the
    # install identity enables munge + slurmctld on the service node, munge + slurmd on GPU
    # nodes: kiln/lab/slurm.py).
    "munge",
    "slurm-client",
    "slurmctld",
    "slurmd",
]
# Bump when the tweaks in _customize() change: a new number rebuilds the cached base.
TWEAKS_VERSION = 3

SSHD_CONFIG = """\
# kiln lab node: key-only root login with the lab's key; no DNS lookups (no DNS in the lab).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
# pyinfra opens many sessions at once.
MaxStartups 200
MaxSessions 100
"""


def _sources_entries(apt_dir: Path) -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every `deb` source, one-line and deb822 formats."""
    entries: list[tuple[str, list[str], list[str]]] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1], [line[2]], line[3:]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                suites = fields.get("suites", "").split()
                components = fields.get("components", "").split()
                entries += [(uri, suites, components) for uri in fields.get("uris", "").split()]
    return entries


def find_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the host uses for bookworm main (or $KILN_LAB_MIRROR)."""
    override = os.environ.get("KILN_LAB_MIRROR")
    if override:
        return override
    for uri, suites, components in _sources_entries(apt_dir):
        if SUITE in suites and "main" in components:
            return uri
    raise LabError(
        f"no apt source for Debian {SUITE} main in {apt_dir}/sources.list*; "
        "set KILN_LAB_MIRROR=http://<debian mirror>/debian"
    )


def base_description(mirror: str) -> dict[str, object]:
    return {"suite": SUITE, "packages": PACKAGES, "tweaks": TWEAKS_VERSION, "mirror": mirror}


def _fingerprint(description: dict[str, object]) -> str:
    stable = {k: v for k, v in description.items() if k != "mirror"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def base_is_current(lab: Path) -> bool:
    try:
        recorded = json.loads((lab / "base.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    expected = _fingerprint(base_description(""))
    return recorded.get("fingerprint") == expected and (lab / "base" / "usr/sbin/sshd").exists()


def ensure_base(lab: Path, log: Callable[[str], None] = print) -> Path:
    """Return `<lab>/base`, building it first if it is missing or out of date."""
    base = lab / "base"
    if base_is_current(lab):
        return base
    require_tools(["debootstrap", "unshare"])
    mirror = find_mirror()
    description = base_description(mirror)
    scratch = lab / "base.building"
    _remove_tree(scratch)
    cache = lab / "cache" / "debootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    log(f"kiln lab: building the Debian {SUITE} base with debootstrap from {mirror} (once)")
    started = time.monotonic()
    # In its own mount namespace: the proc/sys mounts debootstrap makes in the target die
    # with it, even when it is interrupted.
    argv = [
        "unshare", "--mount", "--propagation", "private", "--",
        "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        f"--cache-dir={cache}", "--components=main", SUITE, str(scratch), mirror,
    ]  # fmt: skip
    build_log = lab / "base-build.log"
    with open(build_log, "w") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            # Once more, for a mirror hiccup: what was downloaded is in the cache by now.
            out.write("\nkiln lab: debootstrap failed; retrying once\n")
            out.flush()
            _remove_tree(scratch)
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(build_log.read_text().splitlines()[-15:])
        raise LabError(f"debootstrap failed ({result.returncode}); see {build_log}:\n{tail}")
    _customize(scratch)
    _remove_tree(base)
    scratch.rename(base)
    description["fingerprint"] = _fingerprint(description)
    description["built_seconds"] = round(time.monotonic() - started, 1)
    (lab / "base.json").write_text(json.dumps(description, indent=2) + "\n")
    log(f"kiln lab: base built in {description['built_seconds']} s")
    return base


def _customize(root: Path) -> None:
    """What makes the plain Debian base a lab node image (same for every node)."""
    # Each node gets its own host key at first boot (the node's init makes it).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/kiln-lab.conf").write_text(SSHD_CONFIG)
    # Nodes have no route out of the lab: the lab's own repositories are configured by the
    # deploys (and the lab's vendor repository), never the Internet mirror used to build.
    (root / "etc/apt/sources.list").write_text(
        "# kiln lab node: no Internet; repositories are configured by kiln's deploys.\n"
    )
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    lists = root / "var/lib/apt/lists"
    for entry in lists.iterdir() if lists.is_dir() else []:
        if entry.is_file():
            entry.unlink()
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("# kiln lab: no DNS; lab names are in /etc/hosts\n")
    (root / "etc/hostname").write_text("localhost\n")
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    # The node's init starts sshd itself (before any unit), so the ssh unit is not also
    # started by `systemctl default`; `systemctl restart ssh` still works on a node.
    (root / "etc/systemd/system/multi-user.target.wants/ssh.service").unlink(missing_ok=True)
    # The unit manager here (docker-systemctl-replacement) does not take chrony.service's
    # `ExecStart=!...` (systemd's run-with-full-privileges prefix) nor its User= handover:
    # run chronyd as Debian's own init script does, once it is installed.
    dropin = root / "etc/systemd/system/chrony.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "kiln-lab.conf").write_text(
        "# kiln lab: the node's unit manager is not systemd (lab/README.md)\n"
        "[Service]\nUser=\nExecStart=\nExecStart=/usr/sbin/chronyd $DAEMON_OPTS\n"
    )


    # munge.service's RuntimeDirectory= and User= are systemd's, which the replacement does
    # not do: make /run/munge and drop to munge as Debian's init script does.
    dropin = root / "etc/systemd/system/munge.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "kiln-lab.conf").write_text(
        "# kiln lab: the node's unit manager is not systemd (lab/README.md)\n"
        "[Service]\nUser=\nGroup=\n"
        "ExecStartPre=/usr/bin/install -d -o munge -g munge -m 0755 /run/munge\n"
        "ExecStart=\nExecStart=/usr/bin/setpriv --reuid=munge --regid=munge --init-groups "
        "/usr/sbin/munged $OPTIONS\n"
    )
    # Slurm's daemons are the role's, enabled at install (kiln/lab/slurm.py), never the
    # image's; and no munge key in the image: each lab has its own, written at install.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in SLURM_UNITS:
        (wants / unit).unlink(missing_ok=True)
    (root / "etc/munge/munge.key").unlink(missing_ok=True)


# The units the Debian packages enable at install; none runs unless the role enables it.
SLURM_UNITS = ("munge.service", "slurmctld.service", "slurmd.service")


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
