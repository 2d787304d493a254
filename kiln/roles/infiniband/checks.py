"""The node-side fabric check: every HCA the manifest expects is there and right.

Per HCA: present, port Active and LinkUp, at the manifest's rate, on the manifest's link
layer, on a PCIe link of the manifest's width (x16). Each HCA gets a typed result
(kiln.core.checks): OK, CRITICAL (something is wrong: the evidence says what was read, the
remediation what a technician does) or UNKNOWN (could not tell: a value not read); the
node as a whole gets one more (every expected HCA present). Any result that does not pass
fails the node, naming the HCA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.core.checks import Action, CheckResult, Combined, Remediation, Status, Subject
from kiln.core.manifest import HCATopology

CHECK_NAME = "infiniband-hca"

_EVIDENCE = ("node_guid", "port_guid", "firmware", "psid", "state", "physical_state", "rate",
             "link_layer", "pci", "pcie_width", "pcie_speed", "netdev")


@dataclass(frozen=True)
class FabricCheck:
    """Every rail's result and the node's own (are they all there), combined."""

    node: str
    results: tuple[CheckResult, ...]  # one per HCA
    presence: CheckResult  # the node: every HCA the manifest expects is there

    @property
    def combined(self) -> Combined:
        return Combined((self.presence, *self.results))

    @property
    def ok(self) -> bool:
        return self.combined.status == Status.OK

    def failures(self) -> list[str]:
        return self.combined.report()

    def summary(self) -> str:
        return (f"node {self.node}: {len(self.results)} HCA(s) Active/LinkUp at the "
                "manifest's rate and width")


def _subject(node: str, hca: dict[str, Any]) -> Subject:
    ids = tuple((label, str(hca[key])) for label, key in (("port GUID", "port_guid"),
                                                        ("PCI", "pci")) if hca.get(key))
    return Subject(node, "HCA", hca["device"], ids)


def check_hca(hca: dict[str, Any], expect: HCATopology, node: str = "this host") -> CheckResult:
    device = hca["device"]
    cable = Remediation(Action.CHECK_CABLE, f"reseat the cable of HCA {device} at both ends "
                        "(the switch port UFM names), then the transceiver; replace the cable "
                        "if it stays down or slow")
    critical: list[tuple[str, Remediation]] = []
    unknown = []
    evidence = {key: hca.get(key) for key in _EVIDENCE}
    state, phys = hca.get("state"), hca.get("physical_state")
    if state is None:
        unknown.append("port state not read (ibstat does not list it)")
    elif state != "Active":
        critical.append((f"port state {state}, not Active", cable))
    if phys is None:
        unknown.append("physical state not read")
    elif phys != "LinkUp":
        critical.append((f"physical state {phys}, not LinkUp", cable))
    if expect.link_layer and hca.get("link_layer") not in (None, expect.link_layer):
        critical.append((f"link layer {hca['link_layer']}, not {expect.link_layer}",
                         Remediation(Action.RECONFIGURE, f"HCA {device}: set its port to "
                                     f"{expect.link_layer} (mlxconfig LINK_TYPE_P1, the "
                                     "manifest's settings), reset it, run the stage again")))
    rate = hca.get("rate")
    if expect.port_rate_gbps:
        if rate is None:
            unknown.append("rate not read")
        elif rate != expect.port_rate_gbps:
            critical.append((f"rate {rate:g} Gb/s, not {expect.port_rate_gbps}", cable))
    if expect.ca_type and hca.get("ca_type") not in (None, expect.ca_type):
        critical.append((f"CA type {hca['ca_type']}, not {expect.ca_type}",
                         Remediation(Action.RMA, f"HCA {device} is not the SKU's card: "
                                     f"replace it with a {expect.ca_type}")))
    if expect.pcie is not None:
        width = hca.get("pcie_width")
        if width is None:
            unknown.append(f"PCIe link width not read (/sys/class/infiniband/{device}"
                           "/device/current_link_width)")
        elif width != expect.pcie.width:
            where = f" ({hca['pci']})" if hca.get("pci") else ""
            critical.append((f"PCIe x{width}, not x{expect.pcie.width}{where}",
                             Remediation(Action.RESEAT, f"reseat HCA {device}{where} in its "
                                         "slot (and its riser); RMA the card if it stays at "
                                         f"x{width}")))
        gen = pcie_gen(hca.get("pcie_speed"))
        if hca.get("pcie_speed") and gen is not None and gen != expect.pcie.gen:
            where = f" ({hca['pci']})" if hca.get("pci") else ""
            critical.append((f"PCIe Gen{gen} ({hca['pcie_speed']}), not Gen{expect.pcie.gen}"
                             f"{where}", Remediation(Action.RESEAT, f"reseat HCA {device}"
                                                     f"{where} and its riser; check the "
                                                     "slot's BIOS link speed setting; RMA "
                                                     "the card if it stays slow")))
    subject = _subject(node, hca)
    if critical:
        return CheckResult(CHECK_NAME, subject, Status.CRITICAL,
                           tuple(text for text, _ in critical) + tuple(unknown), evidence,
                           critical[0][1])
    if unknown:
        return CheckResult(CHECK_NAME, subject, Status.UNKNOWN, tuple(unknown), evidence,
                           Remediation(Action.RETRY, f"make ibstat and /sys/class/infiniband "
                                       f"readable for {device} (OFED installed, driver "
                                       "loaded), run the stage again"))
    return CheckResult(CHECK_NAME, subject, Status.OK, (), evidence)


# PCIe transfer rate per lane -> generation, as sysfs current_link_speed prints it
# ("32.0 GT/s PCIe").
_GEN_BY_RATE = {"2.5": 1, "5.0": 2, "8.0": 3, "16.0": 4, "32.0": 5, "64.0": 6}


def pcie_gen(speed: str | None) -> int | None:
    """"32.0 GT/s PCIe" -> 5; None when not read or not a rate sysfs prints."""
    if not speed:
        return None
    return _GEN_BY_RATE.get(speed.split()[0])


def rails(hcas: list[dict[str, Any]], expect: HCATopology) -> list[dict[str, Any]]:
    """The HCAs that are the node's rails: of the manifest's CA type and, unless the rails
    are short then, of its link layer."""
    wanted = [hca for hca in hcas if not expect.ca_type
              or hca.get("ca_type") in (None, expect.ca_type)]
    # Cards of the same type on another link layer (storage NICs) are not rails, unless
    # the rails are short: then a rail left in the wrong mode shows as CRITICAL.
    same_layer = [hca for hca in wanted if hca.get("link_layer") in (None, expect.link_layer)]
    return same_layer if len(same_layer) >= expect.count else wanted


def check_fabric(hcas: list[dict[str, Any]], expect: HCATopology,
                 node: str = "this host") -> FabricCheck:
    """Check every HCA the node reports against the manifest's `topology.hca`."""
    wanted = rails(hcas, expect)
    seen = ", ".join(hca["device"] for hca in wanted) or "none"
    evidence = {"expected": expect.count, "present": [hca["device"] for hca in wanted]}
    if len(wanted) < expect.count:
        presence = CheckResult(
            CHECK_NAME, Subject(node), Status.CRITICAL,
            (f"{len(wanted)} of {expect.count} {expect.ca_type or 'HCA'}s "
             f"({expect.link_layer}) present: {seen}",), evidence,
            Remediation(Action.RESEAT, "reseat the missing HCA(s) (lspci does not list them "
                        "or the driver did not bind); RMA a card that stays missing"))
    else:
        presence = CheckResult(CHECK_NAME, Subject(node), Status.OK, (), evidence)
    return FabricCheck(node, tuple(check_hca(hca, expect, node) for hca in wanted), presence)
