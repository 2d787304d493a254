"""The node-side fabric check: every HCA the manifest expects is there and right.

Per HCA: present, port Active and LinkUp, at the manifest's rate, on the manifest's link
layer, on a PCIe link of the manifest's width (x16). A result is OK, CRITICAL (something is
wrong: the evidence says what was read) or UNKNOWN (could not tell: a value not read); any
result that is not OK fails the node, naming the HCA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kiln.core.manifest import HCATopology

Status = Literal["OK", "CRITICAL", "UNKNOWN"]


@dataclass(frozen=True)
class HcaResult:
    device: str
    status: Status
    problems: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.status == "OK":
            return f"{self.device}: OK"
        return f"{self.device}: {self.status}: {'; '.join(self.problems)}"


@dataclass(frozen=True)
class FabricCheck:
    results: tuple[HcaResult, ...]
    problems: tuple[str, ...] = ()  # node-level: HCAs missing

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.status == "OK" for r in self.results)

    def failures(self) -> list[str]:
        return list(self.problems) + [r.describe() for r in self.results if r.status != "OK"]

    def summary(self) -> str:
        return f"{len(self.results)} HCA(s) Active/LinkUp at the manifest's rate and width"


_EVIDENCE = ("node_guid", "port_guid", "firmware", "psid", "state", "physical_state", "rate",
             "link_layer", "pci", "pcie_width", "netdev")


def check_hca(hca: dict[str, Any], expect: HCATopology) -> HcaResult:
    critical, unknown = [], []
    evidence = {key: hca.get(key) for key in _EVIDENCE}
    state, phys = hca.get("state"), hca.get("physical_state")
    if state is None:
        unknown.append("port state not read (ibstat does not list it)")
    elif state != "Active":
        critical.append(f"port state {state}, not Active")
    if phys is None:
        unknown.append("physical state not read")
    elif phys != "LinkUp":
        critical.append(f"physical state {phys}, not LinkUp")
    if expect.link_layer and hca.get("link_layer") not in (None, expect.link_layer):
        critical.append(f"link layer {hca['link_layer']}, not {expect.link_layer}")
    rate = hca.get("rate")
    if expect.port_rate_gbps:
        if rate is None:
            unknown.append("rate not read")
        elif rate != expect.port_rate_gbps:
            critical.append(f"rate {rate:g} Gb/s, not {expect.port_rate_gbps}")
    if expect.ca_type and hca.get("ca_type") not in (None, expect.ca_type):
        critical.append(f"CA type {hca['ca_type']}, not {expect.ca_type}")
    if expect.pcie is not None:
        width = hca.get("pcie_width")
        if width is None:
            unknown.append(f"PCIe link width not read (/sys/class/infiniband/{hca['device']}"
                           "/device/current_link_width)")
        elif width != expect.pcie.width:
            critical.append(f"PCIe x{width}, not x{expect.pcie.width}"
                            + (f" ({hca['pci']})" if hca.get("pci") else ""))
    status: Status = "CRITICAL" if critical else "UNKNOWN" if unknown else "OK"
    return HcaResult(hca["device"], status, tuple(critical + unknown), evidence)


def check_fabric(hcas: list[dict[str, Any]], expect: HCATopology) -> FabricCheck:
    """Check every HCA the node reports against the manifest's `topology.hca`."""
    wanted = [hca for hca in hcas if not expect.ca_type
              or hca.get("ca_type") in (None, expect.ca_type)]
    # Cards of the same type on another link layer (storage NICs) are not rails, unless
    # the rails are short: then a rail left in the wrong mode shows as CRITICAL.
    same_layer = [hca for hca in wanted if hca.get("link_layer") in (None, expect.link_layer)]
    if len(same_layer) >= expect.count:
        wanted = same_layer
    problems = []
    if len(wanted) < expect.count:
        seen = ", ".join(hca["device"] for hca in wanted) or "none"
        problems.append(f"{len(wanted)} of {expect.count} {expect.ca_type or 'HCA'}s "
                        f"({expect.link_layer}) present: {seen}")
    return FabricCheck(tuple(check_hca(hca, expect) for hca in wanted), tuple(problems))
