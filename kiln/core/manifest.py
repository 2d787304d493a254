"""The golden manifest: everything kiln pins and checks for one hardware SKU.

One YAML file per SKU under firmware/, named `<sku>.yaml`. It is the desired state: the OS
image MAAS deploys, the exact version of every pinned package, the firmware of every
component with how to recognise it and how to update it, the settings that matter, the
topology a healthy node shows, and the thresholds burn-in holds it to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kiln.core.errors import ValidationFailed, pydantic_problems
from kiln.core.models import Strict
from kiln.core.yamlfile import read_yaml_mapping

# Package keys every GPU SKU must pin; fabric manager only where NVSwitches are.
GPU_STACK_PACKAGES = (
    "nvidia-driver",
    "nvidia-persistenced",
    "dcgm",
    "cuda-toolkit",
    "libnccl2",
    "libnccl-dev",
    "nccl-tests",
    "nvidia-container-toolkit",
    "ofed",
)
NVSWITCH_PACKAGES = ("nvidia-fabricmanager",)

# Debian version strings: [epoch:]upstream[-revision]; an exact pin has no wildcard.
_DEB_VERSION = re.compile(r"^(\d+:)?[0-9][A-Za-z0-9.+~-]*$")
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")



class KernelPin(Strict):
    """The kernel kiln installs and holds: linux-{image,headers,modules}-<abi>-<flavour>."""

    abi: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+-\d+$")]
    flavour: str = "generic"
    version: str

    @field_validator("version")
    @classmethod
    def _exact(cls, value: str) -> str:
        return exact_deb_version(value)

    @property
    def packages(self) -> dict[str, str]:
        suffix = f"{self.abi}-{self.flavour}"
        return {
            f"linux-image-{suffix}": self.version,
            f"linux-headers-{suffix}": self.version,
            f"linux-modules-{suffix}": self.version,
        }


class OSImage(Strict):
    """What MAAS deploys: its osystem/distro_series/hwe_kernel, and the kernel kiln holds."""

    osystem: str
    distro_series: str
    hwe_kernel: str
    kernel: KernelPin


class PackagePin(Strict):
    """One apt package at one exact version, held so nothing else moves it."""

    name: str
    version: str
    hold: bool = True

    @field_validator("name")
    @classmethod
    def _debian_name(cls, value: str) -> str:
        if not _DEB_NAME.match(value):
            raise ValueError(f"{value!r} is not a Debian package name")
        return value

    @field_validator("version")
    @classmethod
    def _exact(cls, value: str) -> str:
        return exact_deb_version(value)


class RedfishMatch(Strict):
    """A FirmwareInventory member is this component when its Id or Name matches."""

    id_pattern: str | None = None
    name_pattern: str | None = None

    @model_validator(mode="after")
    def _one_pattern(self) -> RedfishMatch:
        if self.id_pattern is None and self.name_pattern is None:
            raise ValueError("give id_pattern, name_pattern or both")
        for pattern in (self.id_pattern, self.name_pattern):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return self


class Recognition(Strict):
    """How to find the component on a node: at least one source."""

    redfish: RedfishMatch | None = None
    psid: str | None = None  # ConnectX: the PSID mlxfwmanager/flint print
    nvidia_smi_field: str | None = None  # e.g. "VBIOS Version" in nvidia-smi -q

    @model_validator(mode="after")
    def _some_source(self) -> Recognition:
        if self.redfish is None and self.psid is None and self.nvidia_smi_field is None:
            raise ValueError("give at least one of redfish, psid, nvidia_smi_field")
        return self


class Blob(Strict):
    """The update image on the mirror's firmware/ tree; checked before anything is flashed."""

    file: str
    sha256: str
    size: Annotated[int, Field(gt=0)]

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or value in ("", ".", ".."):
            raise ValueError("a file name under the mirror's firmware/ directory, no path")
        return value


class FirmwareComponent(Strict):
    version: str
    match: Recognition
    update: Literal["redfish", "mlxfwmanager", "none"]
    # What makes a flashed image run: BIOS needs a system reset, a BMC restarts itself,
    # a ConnectX needs a system reset (or mlxfwreset) before `mlxfwmanager` shows it running.
    activation: Literal["system-reset", "bmc-reset", "none"] = "system-reset"
    # Without a blob kiln still reports drift, but refuses to flash: it never guesses an image.
    blob: Blob | None = None

    @model_validator(mode="after")
    def _updatable(self) -> FirmwareComponent:
        if self.update == "mlxfwmanager" and self.match.psid is None:
            raise ValueError("update: mlxfwmanager needs match.psid to pick the image per HCA")
        if self.update == "redfish" and self.match.redfish is None:
            raise ValueError("update: redfish needs match.redfish to find the component")
        return self


class Settings(Strict):
    # mlxconfig parameter -> value, as `mlxconfig set` takes it (IB, 1, True …)
    mlxconfig: dict[str, str | int | bool] = {}
    # Redfish Bios attribute -> value; names are vendor-specific
    bios: dict[str, str | int | bool] = {}


class PCIeLink(Strict):
    gen: Annotated[int, Field(ge=1, le=6)]
    width: Literal[1, 2, 4, 8, 16]


class GPUTopology(Strict):
    count: Annotated[int, Field(ge=0)]
    model: str = ""
    memory_mib: Annotated[int, Field(ge=0)] = 0
    nvlinks_per_gpu: Annotated[int, Field(ge=0)] = 0
    nvswitch_count: Annotated[int, Field(ge=0)] = 0
    pcie: PCIeLink | None = None


class HCATopology(Strict):
    count: Annotated[int, Field(ge=0)]
    ca_type: str = ""  # as ibstat prints it, e.g. MT4129 for ConnectX-7
    link_layer: Literal["InfiniBand", "Ethernet"] = "InfiniBand"
    port_rate_gbps: Annotated[int, Field(ge=0)] = 0
    pcie: PCIeLink | None = None


class Topology(Strict):
    gpu: GPUTopology
    hca: HCATopology


class AllReduceFloor(Strict):
    """all_reduce_perf bus bandwidth floor at one message size (bytes)."""

    size_bytes: Annotated[int, Field(gt=0)]
    min_busbw_gbps: Annotated[float, Field(gt=0)]  # GB/s, as nccl-tests prints busbw


class OutlierRule(Strict):
    """Fleet-relative: flag a node whose result is this many scaled MADs below the median."""

    method: Literal["median-mad"] = "median-mad"
    max_deviations: Annotated[float, Field(gt=0)] = 3.5
    min_fleet_size: Annotated[int, Field(ge=3)] = 5


class NvlinkLimits(Strict):
    """NVLink error counters (`nvidia-smi nvlink -e`, per link, since the driver loaded) a
    healthy link stays within. CRC errors are retried by the link layer; replays and
    recoveries are what a failing link or connector shows first."""

    max_crc_errors: Annotated[int, Field(ge=0)] = 100
    max_replay_errors: Annotated[int, Field(ge=0)] = 100
    max_recovery_errors: Annotated[int, Field(ge=0)] = 0


class GPUHealth(Strict):
    """What a healthy GPU of this SKU reads (`nvidia-smi -q`)."""

    max_uncorrectable_ecc_volatile: Annotated[int, Field(ge=0)] = 0
    max_uncorrectable_ecc_aggregate: Annotated[int, Field(ge=0)] = 0
    # Correctable errors are fixed in flight, but a storm of them makes a straggler: the
    # GPU spends cycles correcting. Volatile: since the driver loaded.
    max_correctable_ecc_volatile: Annotated[int, Field(ge=0)] = 10000
    max_remapped_rows_uncorrectable: Annotated[int, Field(ge=0)] = 0
    allow_remap_pending: bool = False
    allow_remap_failure: bool = False
    max_retired_pages: Annotated[int, Field(ge=0)] = 0
    max_temperature_c: Annotated[int, Field(gt=0)] = 85
    max_memory_temperature_c: Annotated[int, Field(gt=0)] = 95
    persistence_mode: bool = True
    # InfoROM image version as `nvidia-smi -q` prints it ("G520.0200.00.05"); empty: any.
    inforom_image: str = ""
    nvlink: NvlinkLimits = NvlinkLimits()
    # Clocks event reasons (nvidia-smi -q, snake_case) that make a GPU CRITICAL while
    # active, and those that are only reported (WARN). Idle, application clocks and sync
    # boost are normal and listed in neither.
    critical_clock_events: list[str] = ["hw_slowdown", "hw_thermal_slowdown",
                                        "hw_power_brake_slowdown"]
    warn_clock_events: list[str] = ["sw_thermal_slowdown"]


class HostHealth(Strict):
    """The host around the GPUs: what the SKU's bill of materials says. A field left out is
    not checked (and the check says so)."""

    cpu_model: str | None = None  # a substring of /proc/cpuinfo's "model name"
    cpu_sockets: Annotated[int, Field(ge=1)] | None = None
    cpu_threads: Annotated[int, Field(ge=1)] | None = None
    memory_gib: Annotated[float, Field(gt=0)] | None = None
    # DIMMs lost at boot shrink MemTotal by a DIMM's size; the kernel's own reservations
    # shrink it a little on every node: the tolerance tells the two apart.
    memory_tolerance_pct: Annotated[float, Field(ge=0, le=50)] = 3.0
    nvme_count: Annotated[int, Field(ge=0)] | None = None
    # mount point -> free space it must keep (GiB)
    min_free_gib: dict[str, Annotated[float, Field(ge=0)]] = {"/": 10.0}
    swap: Literal["off", "any"] = "off"
    time_sync: bool = True
    # A runtime that must start a container seeing every GPU ("docker"), or none.
    container_runtime: Literal["docker", "none"] = "none"
    container_image: str = ""

    @model_validator(mode="after")
    def _image_for_runtime(self) -> HostHealth:
        if self.container_runtime != "none" and not self.container_image:
            raise ValueError("container_runtime needs container_image (an image with "
                             "nvidia-smi, from the cluster's registry)")
        return self


class Timeouts(Strict):
    """Seconds each part of the health read may take before it is UNKNOWN."""

    read_s: Annotated[int, Field(ge=1)] = 60
    dcgm_s: Annotated[int, Field(ge=1)] = 300
    container_s: Annotated[int, Field(ge=1)] = 120


class Health(Strict):
    """Single-node health thresholds (kiln.roles.health)."""

    dcgmi_diag_level: Literal[1, 2, 3, 4] = 1
    timeouts: Timeouts = Timeouts()
    gpu: GPUHealth = GPUHealth()
    host: HostHealth = HostHealth()


class BurninTimeouts(Strict):
    """Every burn-in run's deadline (seconds): at it the whole job is killed and the run is
    a TIMEOUT. dcgmi diag -r 3 takes about 30 minutes on 8 H100s, -r 4 hours."""

    dcgm_s: Annotated[int, Field(ge=1)] = 3600
    nccl_s: Annotated[int, Field(ge=1)] = 900
    ib_write_bw_s: Annotated[int, Field(ge=1)] = 120


class Burnin(Strict):
    dcgmi_diag_level: Literal[1, 2, 3, 4] = 3
    timeouts: BurninTimeouts = BurninTimeouts()
    # ib_write_bw from GPU memory (--use_cuda, the GPU nearest each HCA) where the SKU has
    # GPUDirect RDMA (nvidia-peermem): the path NCCL uses.
    gpudirect: bool = True
    ib_write_bw_size_bytes: Annotated[int, Field(gt=0)] = 8388608
    ib_write_bw_seconds: Annotated[int, Field(ge=1)] = 5
    single_node_all_reduce: AllReduceFloor
    two_node_all_reduce: AllReduceFloor
    ib_write_bw_min_gbps: Annotated[float, Field(gt=0)]  # per HCA, Gb/s as ib_write_bw prints
    outliers: OutlierRule = OutlierRule()


class Manifest(Strict):
    sku: str
    description: str = ""
    os: OSImage
    packages: dict[str, PackagePin]
    firmware: dict[str, FirmwareComponent]
    settings: Settings = Settings()
    topology: Topology
    burnin: Burnin
    health: Health = Health()
    max_parallel_firmware: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _gpu_stack_pinned(self) -> Manifest:
        required: tuple[str, ...] = ()
        if self.topology.gpu.count > 0:
            required += GPU_STACK_PACKAGES
        if self.topology.gpu.nvswitch_count > 0:
            required += NVSWITCH_PACKAGES
        missing = [key for key in required if key not in self.packages]
        if missing:
            raise ValueError(
                "a SKU with GPUs pins the whole stack; missing packages: " + ", ".join(missing)
            )
        return self

    def pinned_packages(self) -> dict[str, str]:
        """apt package name -> exact version for everything this SKU pins, kernel included."""
        pins = dict(self.os.kernel.packages)
        pins.update({pin.name: pin.version for pin in self.packages.values()})
        return pins


def exact_deb_version(value: str) -> str:
    if not _DEB_VERSION.match(value):
        raise ValueError(f"{value!r} is not an exact Debian version (no wildcards or ranges)")
    return value


def load_manifest(path: Path | str) -> Manifest:
    """Read and validate one manifest; every problem is reported as `file: field.path: msg`."""
    path = Path(path)
    document = read_yaml_mapping(path)
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as exc:
        raise ValidationFailed(pydantic_problems(str(path), exc)) from None
    if manifest.sku != path.stem:
        raise ValidationFailed(
            [f"{path}: sku: {manifest.sku!r} does not match the file name ({path.stem!r})"]
        )
    return manifest


def manifest_path(firmware_dir: Path, sku: str) -> Path:
    return firmware_dir / f"{sku}.yaml"


def known_skus(firmware_dir: Path) -> list[str]:
    return sorted(path.stem for path in firmware_dir.glob("*.yaml"))
