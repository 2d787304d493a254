"""Shared by the fabric-stage tests: HcaReport text built from real captures or from the lab's
simulated tools, and a stand-in host that answers facts for an operation's body."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pyinfra.context import ctx_host, ctx_state

from kiln.roles.infiniband.facts import HcaReport, MlxFwResetQuery

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def ip_json(links: dict[str, tuple[bool, list[str]]]) -> str:
    """`ip -j addr show` as iproute2 prints it, for {ifname: (up, ["a/p"])}."""
    out = [{"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
            "operstate": "UNKNOWN", "link_type": "loopback",
            "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8,
                           "scope": "host", "label": "lo"}]}]
    for i, (name, (up, addresses)) in enumerate(links.items(), start=2):
        out.append({
            "ifindex": i, "ifname": name, "mtu": 2044, "link_type": "infiniband",
            "flags": ["BROADCAST", "MULTICAST", *(["UP", "LOWER_UP"] if up else [])],
            "operstate": "UP" if up else "DOWN",
            "addr_info": [{"family": "inet", "local": a.split("/")[0],
                           "prefixlen": int(a.split("/")[1]), "scope": "global",
                           "label": name} for a in addresses]})
    return json.dumps(out)


def report_text(ibstat: str, sysfs: dict[str, dict[str, Any]], ip: str,
                mlxconfig: dict[str, str] | None, modules: tuple[str, ...] = (),
                os_id: str = "debian") -> str:
    """What the HcaReport command prints, section by section."""
    parts = ["### kiln ibstat", ibstat.rstrip("\n")]
    for name, attrs in sysfs.items():
        parts.append(f"### kiln sysfs {name}")
        for key, value in attrs.items():
            values = value if isinstance(value, list) else [value]
            parts += [f"{key}:{v}" for v in values]
    parts += ["### kiln ip", ip]
    if mlxconfig is None:
        parts.append("### kiln mlxconfig missing")
    else:
        for name, text in mlxconfig.items():
            parts += [f"### kiln mlxconfig {name}", text.rstrip("\n")]
    parts += ["### kiln modules", *modules, "### kiln os", os_id]
    return "\n".join(parts) + "\n"


class SimNode:
    """A lab node's simulated hardware in a tmp dir; `run` runs one simulated tool."""

    def __init__(self, tmp: Path, monkeypatch, faults: list[dict] | None = None,
                 name: str = "gpu-001"):
        from kiln.lab.hwsim.lab_hooks import on_node_boot, prepare_node_hardware

        self.lab, self.rootfs = tmp / "lab", tmp / "rootfs"
        faults_file = None
        if faults is not None:
            faults_file = tmp / "faults.json"
            faults_file.write_text(json.dumps({"faults": [{"node": name, **f} for f in faults]}))
        prepare_node_hardware(self.lab, name, 1, "gpu", faults_file)
        self.hw = self.lab / "hw" / name
        driver = self.rootfs / "usr/share/kiln-hwsim/driver-version"
        driver.parent.mkdir(parents=True)
        driver.write_text("570.148.08\n")
        on_node_boot(self.lab, name, self.rootfs)
        monkeypatch.setenv("KILN_HW_DIR", str(self.hw))
        monkeypatch.setenv("KILN_HW_FLASH_DIR", str(self.hw / "flash"))
        monkeypatch.setenv("KILN_HWSIM_DRIVER_VERSION_FILE", str(driver))

    def run(self, tool: str, *argv: str) -> tuple[int, str]:
        module = importlib.import_module(f"kiln.lab.hwsim.tools.{tool}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = module.main(list(argv))
        return rc, out.getvalue()

    def boot(self) -> None:
        from kiln.lab.hwsim.lab_hooks import on_node_boot

        on_node_boot(self.lab, "gpu-001", self.rootfs)

    def profile(self) -> dict[str, Any]:
        return json.loads((self.hw / "profile.json").read_text())

    def report(self, addresses: dict[str, list[str]] | None = None,
               modules: tuple[str, ...] = ()) -> str:
        """HcaReport's text on this node: ibstat and mlxconfig from the simulator; sysfs
        as the real kernel shows these cards (the lab has no /sys/class/infiniband)."""
        _, ibstat = self.run("ibstat")
        sysfs, mlx, links = {}, {}, {}
        for hca in self.profile()["hcas"]:
            netdev = f"ibp{int(hca['pci_bdf'][5:7], 16)}s0"
            sysfs[hca["name"]] = {"pci": hca["pci_bdf"], "board_id": hca["psid"],
                                  "current_link_width": str(hca["pcie"]["width_current"]),
                                  "current_link_speed": "32.0 GT/s PCIe", "netdev": netdev}
            mlx[hca["name"]] = self.run("mlxconfig", "-d", hca["name"], "-e", "q")[1]
            links[netdev] = (True, (addresses or {}).get(netdev, []))
        return report_text(ibstat, sysfs, ip_json(links), mlx, modules)


class FakeHost:
    """Enough of a pyinfra host for an operation body: host data, facts, noop and logs."""

    def __init__(self, data: dict[str, Any], report: dict[str, Any],
                 mlxfwreset: dict[str, bool] | None = None,
                 files: dict[str, Any] | None = None):
        self.data = data
        self.name = data.get("kiln_node", "gpu-001")
        self.report, self.mlxfwreset = report, mlxfwreset or {}
        self.files = files or {}
        self.noops: list[str] = []
        self.logged: list[str] = []
        self.connector = SimpleNamespace(client=object())
        self.print_prefix = f"[{self.name}] "
        self.groups: list[Any] = []
        self.current_op_global_arguments: dict[str, Any] = {}

    def get_fact(self, fact: Any, *args: Any, **kwargs: Any) -> Any:
        if fact is HcaReport:
            return self.report
        if fact is MlxFwResetQuery:
            return {"levels": {}, "supported": self.mlxfwreset.get(kwargs["device"], False)}
        name = getattr(fact, "__name__", "")
        if name in ("File", "Sha1File", "Sha256File", "Md5File"):
            return self.files.get((name, kwargs.get("path")))
        return None

    def get_temp_filename(self, *args: Any, **kwargs: Any) -> str:
        return "/tmp/pyinfra-test"

    def noop(self, text: str) -> None:
        self.noops.append(text)

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_styled(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.logged.append(message)


def execute(command: Any, fake: FakeHost) -> Any:
    """Run a yielded FunctionCommand as pyinfra would, against `fake`."""
    return command.function(None, fake, *command.args, **command.kwargs)


def run_operation(operation: Any, fake: FakeHost, **kwargs: Any) -> list[Any]:
    """The commands `operation`'s body yields for `fake` (a preview: not executing)."""
    from pyinfra.api import Config

    state = SimpleNamespace(is_executing=False, config=Config(), deploy_name=None)
    with ctx_state.use(state), ctx_host.use(fake):
        return list(operation._inner(**kwargs))


def text_of(command: Any) -> str:
    return command if isinstance(command, str) else str(getattr(command, "bits", command))
