"""The lab's "upstream" apt repositories, declared: what packages exist, at which versions.

The vendor repository (`apt/`) stands in for NVIDIA's CUDA/datacenter repository and
Mellanox's DOCA repository. Its packages are **simulated**: real .deb files with real
dependency relations, whose tools are the lab's hardware simulator (lab/hwsim, shipped as
the lab-internal package `kiln-hwsim-common`). Every version string ends in `kilnlab1`, so a
lab package can never be mistaken for a real vendor build.

Version choices worth knowing:
- Debian bookworm has its own `infiniband-diags`, `ibverbs-utils` (44.0-2) and `perftest`
  (4.5+0.17-1). The vendor ones use Mellanox's own version scheme (`2410mlnx54-…` for
  rdma-core tools, `24.10.0-…` for perftest), which dpkg orders above Debian's, exactly as the
  real DOCA-OFED packages do; so pinning the vendor version, or just having both repositories
  configured, installs the vendor build.
- Mutually exclusive branches (driver 550 vs 570, fabric manager 550 vs 570 …) ship the same
  files; like Ubuntu's driver packages they Provide/Conflict/Replace one virtual name, so apt
  switches branch instead of failing on a file conflict.
- firmware/lab.yaml pins the newest version of each package here. apt (bookworm's 2.6)
  takes a dependency at its candidate version, so `apt-get install name=version` of the
  newest works as is, while moving to an older release needs an apt preferences pin on the
  dependencies too (as on real mirrors holding several releases); tests move both ways.
- The OS list (`OS_PACKAGES`) names Debian packages kiln's roles install that the node base
  image lacks; they are fetched from Debian with apt itself (lab/vendor/os_mirror.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VENDOR_SUITE = "kilnlab"
OS_SUITE = "bookworm"
COMPONENT = "main"
MAINTAINER = "kiln lab <lab@kiln.invalid>"

# Architecture placeholder resolved at build time to the host's dpkg architecture: the lab's
# nodes share the host's kernel and CPU, so their packages are built for it.
NATIVE = "native"


@dataclass(frozen=True)
class Package:
    """One binary package of the vendor repository, as a .deb's control file plus payload."""

    name: str
    version: str
    description: str
    section: str = "misc"
    architecture: str = NATIVE
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    # (path of /usr/bin/<tool>, kiln_hwsim.tools module) — simulated tool entry points.
    tools: tuple[tuple[str, str], ...] = ()
    # (path, contents, mode) — plain files the package installs.
    files: tuple[tuple[str, str, int], ...] = ()
    # Lab-internal packages carry lab/hwsim itself; see build.py.
    ships_hwsim: bool = False
    source: str = ""
    homepage: str = ""
    maintainer_scripts: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def upstream_version(self) -> str:
        """Version without epoch and Debian revision: 1:4.2.3-1kilnlab1 -> 4.2.3."""
        version = self.version.split(":", 1)[-1]
        return version.rsplit("-", 1)[0] if "-" in version else version

    def relation_names(self) -> list[str]:
        """Package names referenced by Depends (alternatives included), without versions."""
        names = []
        for relation in self.depends:
            for alternative in relation.split("|"):
                names.append(alternative.strip().split(" ", 1)[0].split(":", 1)[0])
        return names


def _exact(name: str, version: str) -> str:
    return f"{name} (= {version})"


def _unit(description: str, exec_start: str) -> str:
    # Type=simple: the simulated daemons stay in the foreground, which both systemd and the
    # lab's systemctl replacement supervise directly.
    return (
        "[Unit]\n"
        f"Description={description}\n"
        "After=network.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        "Restart=on-failure\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _sim_daemon(name: str) -> tuple[str, str, int]:
    script = f'#!/bin/sh\nexec /usr/lib/kiln-hwsim/sim-daemon {name} "$@"\n'
    return (f"/usr/bin/{name}", script, 0o755)


HWSIM_PACKAGE = "kiln-hwsim-common"
HWSIM_VERSION = "1.0.0-1kilnlab1"
HWSIM_DEP = f"{HWSIM_PACKAGE} (>= 1.0.0)"


def _hwsim_common() -> list[Package]:
    return [
        Package(
            name=HWSIM_PACKAGE,
            version=HWSIM_VERSION,
            architecture="all",
            section="python",
            description="kiln lab hardware simulator (lab artifact, not a vendor package)\n"
            "The stdlib-only Python package kiln_hwsim behind every simulated tool of the\n"
            "kiln lab (nvidia-smi, dcgmi, ibstat, mlxconfig ...). It exists only in the lab.",
            depends=("python3 (>= 3.11)",),
            ships_hwsim=True,
            maintainer_scripts={
                # What py3clean does for Debian's Python packages: the interpreter writes
                # __pycache__ at run time, dpkg would otherwise leave it behind.
                "prerm": "#!/bin/sh\nset -e\n"
                "rm -rf /usr/lib/python3/dist-packages/kiln_hwsim/__pycache__ "
                "/usr/lib/python3/dist-packages/kiln_hwsim/*/__pycache__\n",
            },
        )
    ]


# Driver branches and their releases (upstream versions as NVIDIA numbers them).
DRIVER_RELEASES: dict[str, tuple[str, ...]] = {
    "550": ("550.127.05", "550.144.03"),
    "570": ("570.124.06", "570.148.08"),
}


PEERMEM_INSTALL = "/usr/lib/kiln-hwsim/kmod-install"


def _driver_branch(branch: str, upstream: str) -> list[Package]:
    version = f"{upstream}-1kilnlab1"
    driver = f"nvidia-driver-{branch}-server-open"
    utils = f"nvidia-utils-{branch}-server"
    compute_utils = f"nvidia-compute-utils-{branch}-server"
    libcompute = f"libnvidia-compute-{branch}-server"
    kernel_common = f"nvidia-kernel-common-{branch}-server"
    fabricmanager = f"nvidia-fabricmanager-{branch}"
    homepage = "https://www.nvidia.com/en-us/drivers/"

    def exclusive(virtual: str) -> dict[str, tuple[str, ...]]:
        return {"provides": (virtual,), "conflicts": (virtual,), "replaces": (virtual,)}

    return [
        Package(
            name=driver,
            version=version,
            section="non-free/libs",
            description=f"NVIDIA driver (open kernel module) metapackage, {branch} server branch"
            " (simulated)\nInstalls the simulated driver: the lab's node loads this version at"
            " its next boot.",
            depends=(
                _exact(libcompute, version),
                _exact(kernel_common, version),
                _exact(utils, version),
                _exact(compute_utils, version),
            ),
            # The "kernel module" the lab loads at boot is this version: the lab reads the
            # file when it (re)boots a node, as a real kernel loads the installed module.
            files=(("/usr/share/kiln-hwsim/driver-version", f"{upstream}\n", 0o644),),
            homepage=homepage,
            **exclusive("nvidia-driver-binary"),
        ),
        Package(
            name=libcompute,
            version=version,
            section="non-free/libs",
            description=f"NVIDIA libcompute package, {branch} server branch (simulated)",
            depends=(HWSIM_DEP,),
            files=(
                (f"/usr/share/doc/{libcompute}/simulated", "libcuda stand-in\n", 0o644),
            ),
            homepage=homepage,
            **exclusive("libnvidia-compute"),
        ),
        Package(
            name=kernel_common,
            version=version,
            section="non-free/kernel",
            description=f"Shared files used with the kernel module, {branch} server branch"
            " (simulated)",
            # modprobe (kmod, in every server image and the lab's base) runs the lab's
            # stand-in for inserting nvidia-peermem (hwsim tools/kmod_install.py): the
            # node shares the host's kernel.
            depends=(HWSIM_DEP,),
            tools=((PEERMEM_INSTALL, "kmod_install"),),
            files=(
                (
                    "/lib/udev/rules.d/60-nvidia.rules",
                    "# simulated: the lab's GPUs have no device nodes\n",
                    0o644,
                ),
                (
                    "/etc/modprobe.d/kiln-lab-nvidia-peermem.conf",
                    "# kiln lab (simulated): the node runs the host's kernel, which has no\n"
                    "# nvidia-peermem; loading it records the load (/proc/modules as the node\n"
                    "# sees it) instead.\n"
                    f"install nvidia_peermem {PEERMEM_INSTALL} nvidia_peermem $CMDLINE_OPTS\n",
                    0o644,
                ),
            ),
            homepage=homepage,
            **exclusive("nvidia-kernel-common"),
        ),
        Package(
            name=utils,
            version=version,
            section="non-free/utils",
            description=f"NVIDIA driver support binaries, {branch} server branch (simulated)\n"
            "Provides the simulated nvidia-smi.",
            depends=(_exact(libcompute, version), HWSIM_DEP),
            tools=(("/usr/bin/nvidia-smi", "nvidia_smi"),),
            homepage=homepage,
            **exclusive("nvidia-utils"),
        ),
        Package(
            name=compute_utils,
            version=version,
            section="non-free/utils",
            description=f"NVIDIA compute utilities (nvidia-persistenced), {branch} server branch"
            " (simulated)",
            depends=(_exact(libcompute, version), HWSIM_DEP, "adduser"),
            files=(
                _sim_daemon("nvidia-persistenced"),
                (
                    "/lib/systemd/system/nvidia-persistenced.service",
                    _unit(
                        "NVIDIA Persistence Daemon (kiln lab simulated)",
                        "/usr/bin/nvidia-persistenced --user nvidia-persistenced "
                        "--no-persistence-mode --verbose",
                    ),
                    0o644,
                ),
            ),
            homepage=homepage,
            **exclusive("nvidia-compute-utils"),
        ),
        Package(
            name=fabricmanager,
            version=version,
            section="non-free/utils",
            description=f"Fabric Manager for NVSwitch based systems, {branch} branch (simulated)",
            # Fabric manager refuses to run against any other driver version; the package
            # relation says so up front, as the real one does.
            depends=(_exact(driver, version), HWSIM_DEP),
            files=(
                _sim_daemon("nv-fabricmanager"),
                (
                    "/usr/share/nvidia/nvswitch/fabricmanager.cfg",
                    "# simulated fabric manager configuration\nFABRIC_MODE=0\n"
                    "LOG_LEVEL=4\nLOG_FILE_NAME=/var/log/fabricmanager.log\n",
                    0o644,
                ),
                (
                    "/lib/systemd/system/nvidia-fabricmanager.service",
                    _unit(
                        "NVIDIA fabric manager service (kiln lab simulated)",
                        "/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg",
                    ),
                    0o644,
                ),
            ),
            homepage=homepage,
            **exclusive("nvidia-fabricmanager"),
        ),
    ]


# CUDA: toolkit minor series and their releases.
CUDA_RELEASES: dict[str, tuple[str, ...]] = {
    "12.4": ("12.4.0", "12.4.1"),
    "12.8": ("12.8.0", "12.8.1"),
}


def _cuda(series: str, upstream: str) -> list[Package]:
    dashed = series.replace(".", "-")
    version_json = (
        '{\n   "cuda" : {\n      "name" : "CUDA SDK",\n'
        f'      "version" : "{upstream}"\n   }}\n}}\n'
    )
    return [
        Package(
            name=f"cuda-toolkit-{dashed}",
            version=f"{upstream}-1kilnlab1",
            section="devel",
            description=f"CUDA Toolkit {series} meta-package (simulated)",
            files=((f"/usr/local/cuda-{series}/version.json", version_json, 0o644),),
            homepage="https://developer.nvidia.com/cuda-toolkit",
        )
    ]


# NCCL releases per CUDA series (NVIDIA builds each NCCL release against each CUDA series).
NCCL_RELEASES: dict[str, tuple[str, ...]] = {
    "12.4": ("2.21.5", "2.23.4"),
    "12.8": ("2.25.1", "2.26.5"),
}
NCCL_TESTS_RELEASES: tuple[str, ...] = ("2.13.11", "2.14.1")


def nccl_version(upstream: str, cuda: str) -> str:
    return f"{upstream}-1+cuda{cuda}kilnlab1"


def _nccl(cuda: str, upstream: str) -> list[Package]:
    version = nccl_version(upstream, cuda)
    return [
        Package(
            name="libnccl2",
            version=version,
            section="libs",
            description=f"NVIDIA Collective Communication Library (NCCL) runtime, CUDA {cuda}"
            " (simulated)",
            files=(
                ("/usr/share/doc/libnccl2/simulated", f"NCCL {upstream}\n", 0o644),
                # What the simulated all_reduce_perf prints as "NCCL version".
                ("/usr/share/kiln-hwsim/nccl-version", f"{upstream}+cuda{cuda}\n", 0o644),
            ),
            homepage="https://developer.nvidia.com/nccl",
        ),
        Package(
            name="libnccl-dev",
            version=version,
            section="libdevel",
            description=f"NVIDIA Collective Communication Library (NCCL) development files, CUDA"
            f" {cuda} (simulated)",
            depends=(_exact("libnccl2", version),),
            files=(
                (
                    "/usr/include/nccl.h",
                    "/* simulated */\n#define NCCL_MAJOR {}\n#define NCCL_MINOR {}\n"
                    "#define NCCL_PATCH {}\n".format(*upstream.split(".")),
                    0o644,
                ),
            ),
            homepage="https://developer.nvidia.com/nccl",
        ),
    ]


def _nccl_tests(cuda: str, upstream: str) -> list[Package]:
    oldest_nccl = NCCL_RELEASES[cuda][0]
    return [
        Package(
            name="nccl-tests",
            version=nccl_version(upstream, cuda),
            section="utils",
            description=f"NCCL performance tests (all_reduce_perf ...), CUDA {cuda} (simulated)",
            # Built against this CUDA series' oldest NCCL (NCCL keeps its ABI within 2.x);
            # launched across nodes by mpirun.
            depends=(
                f"libnccl2 (>= {nccl_version(oldest_nccl, cuda)})",
                "openmpi-bin",
                HWSIM_DEP,
            ),
            tools=(("/usr/bin/all_reduce_perf", "all_reduce_perf"),),
            homepage="https://github.com/NVIDIA/nccl-tests",
        )
    ]


# DCGM 4 for CUDA 12: two minor series, two releases each.
DCGM_RELEASES: dict[str, tuple[str, ...]] = {
    "4.1": ("4.1.0", "4.1.1"),
    "4.2": ("4.2.0", "4.2.3"),
}


def _dcgm(upstream: str) -> list[Package]:
    version = f"1:{upstream}-1kilnlab1"
    return [
        Package(
            name="datacenter-gpu-manager-4-core",
            version=version,
            section="utils",
            description="NVIDIA Data Center GPU Manager core (dcgmi, nv-hostengine) (simulated)",
            depends=(HWSIM_DEP,),
            conflicts=("datacenter-gpu-manager",),
            tools=(("/usr/bin/dcgmi", "dcgmi"),),
            files=(
                _sim_daemon("nv-hostengine"),
                (
                    "/lib/systemd/system/nvidia-dcgm.service",
                    _unit(
                        "NVIDIA DCGM service (kiln lab simulated)",
                        "/usr/bin/nv-hostengine -n --service-account nvidia-dcgm",
                    ),
                    0o644,
                ),
            ),
            homepage="https://developer.nvidia.com/dcgm",
        ),
        Package(
            name="datacenter-gpu-manager-4-cuda12",
            version=version,
            section="utils",
            description="NVIDIA Data Center GPU Manager, CUDA 12 components (simulated)",
            depends=(_exact("datacenter-gpu-manager-4-core", version),),
            homepage="https://developer.nvidia.com/dcgm",
        ),
    ]


CONTAINER_TOOLKIT_RELEASES: dict[str, tuple[str, ...]] = {
    "1.16": ("1.16.1", "1.16.2"),
    "1.17": ("1.17.4", "1.17.8"),
}


def _container_toolkit(upstream: str) -> list[Package]:
    version = f"{upstream}-1kilnlab1"
    homepage = "https://github.com/NVIDIA/nvidia-container-toolkit"
    return [
        Package(
            name="libnvidia-container1",
            version=version,
            section="libs",
            description="NVIDIA container runtime library (simulated)",
            homepage=homepage,
        ),
        Package(
            name="libnvidia-container-tools",
            version=version,
            section="utils",
            description="NVIDIA container runtime library, command-line tools (simulated)",
            depends=(f"libnvidia-container1 (>= {version})",),
            homepage=homepage,
        ),
        Package(
            name="nvidia-container-toolkit-base",
            version=version,
            section="utils",
            description="NVIDIA Container Toolkit Base (simulated)",
            files=(
                (
                    "/etc/nvidia-container-runtime/config.toml",
                    '#simulated by the kiln lab\n[nvidia-container-runtime]\nmode = "auto"\n',
                    0o644,
                ),
            ),
            homepage=homepage,
        ),
        Package(
            name="nvidia-container-toolkit",
            version=version,
            section="utils",
            description="NVIDIA Container toolkit (simulated)",
            depends=(
                _exact("nvidia-container-toolkit-base", version),
                f"libnvidia-container-tools (>= {version})",
                "libnvidia-container-tools (<< 2.0.0)",
            ),
            homepage=homepage,
        ),
    ]


# DOCA-OFED releases and the Mellanox versions of the packages each one carries.
@dataclass(frozen=True)
class OfedRelease:
    doca: str  # doca-ofed upstream version
    rdma_core: str  # Mellanox rdma-core build (infiniband-diags, ibverbs-utils)
    mft: str
    perftest: str


OFED_RELEASES: dict[str, tuple[OfedRelease, ...]] = {
    "2.8": (
        OfedRelease("2.8.0", "2407mlnx52-1.2407061", "4.29.0-131", "24.07.0-0.44.2407061"),
        OfedRelease("2.8.1", "2407mlnx52-1.2407102", "4.29.1-2", "24.07.0-0.44.2407102"),
    ),
    "2.9": (
        OfedRelease("2.9.0", "2410mlnx54-1.2410068", "4.30.0-139", "24.10.0-0.66.2410068"),
        OfedRelease("2.9.1", "2410mlnx54-1.2410114", "4.30.1-8", "24.10.0-0.66.2410114"),
    ),
}


def _ofed(release: OfedRelease) -> list[Package]:
    def kv(version: str) -> str:
        return f"{version}kilnlab1"

    homepage = "https://developer.nvidia.com/doca"
    return [
        Package(
            name="infiniband-diags",
            version=kv(release.rdma_core),
            section="net",
            description="InfiniBand diagnostic programs (Mellanox build, simulated)",
            depends=(HWSIM_DEP,),
            tools=(("/usr/bin/ibstat", "ibstat"), ("/usr/bin/ibstatus", "ibstatus")),
            homepage=homepage,
        ),
        Package(
            name="ibverbs-utils",
            version=kv(release.rdma_core),
            section="net",
            description="Examples for the libibverbs library (Mellanox build, simulated)",
            depends=(HWSIM_DEP,),
            tools=(("/usr/bin/ibv_devinfo", "ibv_devinfo"),),
            homepage=homepage,
        ),
        Package(
            name="mft",
            version=kv(release.mft),
            section="net",
            description="NVIDIA firmware tools: mlxconfig, mlxfwmanager, flint, mlxfwreset "
            "(simulated)",
            depends=(HWSIM_DEP,),
            tools=(
                ("/usr/bin/mlxconfig", "mlxconfig"),
                ("/usr/bin/mlxfwmanager", "mlxfwmanager"),
                ("/usr/bin/flint", "flint"),
                ("/usr/bin/mlxfwreset", "mlxfwreset"),
            ),
            homepage=homepage,
        ),
        Package(
            name="perftest",
            version=kv(release.perftest),
            section="net",
            description="InfiniBand performance tests: ib_write_bw ... (Mellanox build, simulated)",
            depends=(HWSIM_DEP,),
            tools=(("/usr/bin/ib_write_bw", "ib_write_bw"),),
            homepage=homepage,
        ),
        Package(
            name="doca-ofed",
            version=f"{release.doca}-1kilnlab1",
            section="net",
            description=f"DOCA-OFED {release.doca} userspace metapackage (simulated)",
            # Exact versions: a DOCA release is a tested set, mixing its parts is unsupported.
            depends=(
                _exact("infiniband-diags", kv(release.rdma_core)),
                _exact("ibverbs-utils", kv(release.rdma_core)),
                _exact("mft", kv(release.mft)),
                _exact("perftest", kv(release.perftest)),
            ),
            homepage=homepage,
        ),
    ]


# Lab kernels: name carries the ABI (as Debian's do), version the upstream release.
KERNEL_RELEASES: tuple[tuple[str, str], ...] = (
    ("6.1.0-27", "6.1.115-1kilnlab1"),
    ("6.1.0-28", "6.1.119-1kilnlab1"),
)
KERNEL_FLAVOUR = "kilnlab"


def _kernel(abi: str, version: str) -> list[Package]:
    release = f"{abi}-{KERNEL_FLAVOUR}"
    note = "simulated: lab nodes run the host's kernel; the lab reads this to name it\n"
    return [
        Package(
            name=f"linux-image-{release}",
            version=version,
            section="kernel",
            description=f"Linux {version.split('-')[0]} for the kiln lab (simulated image)",
            depends=(_exact(f"linux-modules-{release}", version),),
            files=(
                (f"/boot/vmlinuz-{release}", note, 0o644),
                (f"/boot/config-{release}", f"# {note}CONFIG_LOCALVERSION=\"\"\n", 0o644),
            ),
        ),
        Package(
            name=f"linux-modules-{release}",
            version=version,
            section="kernel",
            description=f"Linux {version.split('-')[0]} modules for the kiln lab (simulated)",
            files=((f"/lib/modules/{release}/modules.order", "", 0o644),),
        ),
        Package(
            name=f"linux-headers-{release}",
            version=version,
            section="kernel",
            description=f"Linux {version.split('-')[0]} headers for the kiln lab (simulated)",
            files=(
                (
                    f"/usr/src/linux-headers-{release}/include/config/kernel.release",
                    f"{release}\n",
                    0o644,
                ),
            ),
        ),
    ]


def vendor_packages() -> list[Package]:
    """Every package of the vendor repository, in a stable order."""
    packages = _hwsim_common()
    for branch, releases in DRIVER_RELEASES.items():
        for upstream in releases:
            packages += _driver_branch(branch, upstream)
    for series, releases in CUDA_RELEASES.items():
        for upstream in releases:
            packages += _cuda(series, upstream)
    for cuda, releases in NCCL_RELEASES.items():
        for upstream in releases:
            packages += _nccl(cuda, upstream)
        for upstream in NCCL_TESTS_RELEASES:
            packages += _nccl_tests(cuda, upstream)
    for releases in DCGM_RELEASES.values():
        for upstream in releases:
            packages += _dcgm(upstream)
    for releases in CONTAINER_TOOLKIT_RELEASES.values():
        for upstream in releases:
            packages += _container_toolkit(upstream)
    for releases in OFED_RELEASES.values():
        for release in releases:
            packages += _ofed(release)
    for abi, version in KERNEL_RELEASES:
        packages += _kernel(abi, version)
    return packages


# Firmware images served beside the packages (lab/firmware_blobs.py makes the bytes).
FIRMWARE_VERSIONS: dict[str, tuple[str, ...]] = {
    "bios": ("1.5.0", "1.6.2"),
    "bmc": ("1.06.00", "1.08.00"),
    "connectx7": ("28.39.1002", "28.43.1014"),
}

# Debian packages kiln's roles install on nodes that the lab's base image lacks. Nodes have
# no route out of the lab, so these are mirrored (with their dependency closure) into `os/`.
OS_PACKAGES: tuple[str, ...] = (
    "nginx",  # distribution: the local file mirror
    "openmpi-bin",  # burn-in: mpirun (in the base too; listed so its closure is mirrored)
    "python3-mpi4py",
    "rdma-core",  # fabric: the rdma udev rules and service units
    "docker-registry",  # distribution: registry beside Kraken
    "skopeo",
    "umoci",
    "chrony",
    "gnupg",
    "curl",
    "ca-certificates",
    "jq",
    "pciutils",
    "ipmitool",
)
