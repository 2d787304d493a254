"""Simulated `dcgmi diag -r 1|2|3|4 [-j]` (NVIDIA DCGM 4).

What DCGM 4.2.3's dcgmi prints (read in NVIDIA/DCGM at tag v4.2.3: dcgmi/Diag.cpp,
nvvs/include/NvvsJsonStrings.h, dcgmlib/dcgm_errors.h and dcgm_errors.c, the plugins'
sources; NVIDIA's own JSON schema, testing/python3/dcgm_diag_schema.json, is a fixture in
tests/fixtures/dcgmi that the lab's tests check this output against):
- the tests: "software" (Deployment) at every level; from -r 2 "memory" (Hardware) and
  "pcie" (Integration); from -r 3 "diagnostic" and "nvbandwidth" (Hardware),
  "memory_bandwidth", "targeted_stress", "targeted_power" (Stress); -r 4 adds "memtest" and
  "pulse_test" (Hardware). The lab's nodes have no EUD package, so no "eud" test, as on a
  node without it. DCGM runs software, then Hardware, Integration, Stress;
- `-j`: {"DCGM Diagnostic": {"test_categories": [{"category", "tests": [{"name",
  "results": [{"entity_group": "GPU", "entity_group_id": 1, "entity_id", "status",
  "info": [...], "warnings": [{"error_category", "error_id", "error_severity",
  "warning"}]}], "test_summary": {"status", …}}]}]}, "entity_groups": [{"entities":
  [{"device_id", "entity_id", "serial_num"}], "entity_group", "entity_group_id"}],
  "metadata": {"Driver Version Detected", "version"}}, written by jsoncpp's
  toStyledString (tab indents, `"name" : value`, members sorted, what DCGM 3's -j used too,
  checked against DCGM 3 captures). A result DCGM rates a warning prints "Fail" too; the
  severity says how bad it is. A test DCGM skipped has no results, only its summary;
- the table: one row per test with its overall result ("Warn" only here), a "GPUn: Pass"
  row per GPU, each warning under "Warning: GPUn" cut into 45-character chunks mid-word;
  GPU Device IDs joined with ", "; the categories in DCGM's fixed order Deployment,
  Hardware, Integration, Stress;
- failures carry DCGM's error id, category and severity for that kind of failure
  (dcgm_errors.c) and messages in DCGM's formats (the _MSG and _NEXT texts of
  dcgm_errors.h; the software test puts its subtest's name in front, "Page Retirement/Row
  Remap: ..."). A row-remap failure or pending remap stops DCGM after the software test
  (main_should_stop): every later test is "Skip";
- exit status: 0; 226 (DCGM_ST_NVVS_ERROR, -30) when a test reported an error; 205
  (DCGM_ST_NVVS_ISOLATE_ERROR, -51) when one was rated ISOLATE; 235
  (DCGM_ST_CONNECTION_NOT_VALID, -21) when nv-hostengine cannot be reached.
The info strings follow the 4.2.3 plugins' formats; their values are the lab's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from ..view import View, driver_problem, load_view, run_tool

DCGM_VERSION = "4.2.3"
WIDTH_NAME, WIDTH_RESULT = 27, 48
CHUNK = 45  # dcgmi's DATA_INFO_TAG_LEN: a warning is cut into pieces this long

# (category, test, lowest run level that runs it) in the order DCGM runs them
TESTS = [
    ("Deployment", "software", 1),
    ("Hardware", "memory", 2),
    ("Hardware", "diagnostic", 3),
    ("Hardware", "nvbandwidth", 3),
    ("Hardware", "memtest", 4),
    ("Hardware", "pulse_test", 4),
    ("Integration", "pcie", 2),
    ("Stress", "memory_bandwidth", 3),
    ("Stress", "targeted_stress", 3),
    ("Stress", "targeted_power", 3),
]
TABLE_ORDER = ["Deployment", "Hardware", "Integration", "Stress"]
LEVELS = {"1": 1, "2": 2, "3": 3, "4": 4, "short": 1, "medium": 2, "long": 3, "xlong": 4}

# DCGM's error ids, and their severity and category (dcgm_errors.c), for what the lab's
# faults make DCGM report: (error id, severity, category). Severities: 2 ISOLATE, 4 TRIAGE,
# 5 CONFIG, 6 RESET; categories: 1 PERF_THRESHOLD, 10 HARDWARE_MEMORY, 13 HARDWARE_PCIE,
# 16 INTERNAL_OTHER.
ERRORS = {
    "INTERNAL": (44, 4, 16),
    "PCIE_GENERATION": (45, 4, 13),
    "PCIE_WIDTH": (46, 5, 13),
    "STRESS_LEVEL": (50, 4, 1),
    "FAULTY_MEMORY": (52, 2, 10),
    "CUDA_DBE": (57, 2, 10),
    "MEMORY_MISMATCH": (58, 2, 10),
    "ROW_REMAP_FAILURE": (80, 2, 10),
    "UNCORRECTABLE_ROW_REMAP": (84, 6, 10),
    "PENDING_ROW_REMAP": (85, 6, 10),
}
ISOLATE = 2
# the _NEXT texts of dcgm_errors.h the messages below end with
SYSTEM_TRIAGE = ("Check DCGM and system logs for errors. Reset GPU. Restart DCGM. Rerun "
                 "diagnostics.")
FIELD_DIAG = "Run a field diagnostic on the GPU."
CONFIG_NEXT = ("Check DCGM and system configuration. This error may be eliminated with an "
               "updated configuration.")
# the H100 80GB HBM3 entry of DCGM's diag-skus.yaml: pcie min_pci_generation / min_pci_width
MIN_PCI_GEN, MIN_PCI_WIDTH = 3, 16


@dataclass(frozen=True)
class Finding:
    test: str
    gpu: int
    error: str  # a key of ERRORS
    message: str

    def warning(self) -> dict[str, Any]:
        error_id, severity, category = ERRORS[self.error]
        return {"error_category": category, "error_id": error_id, "error_severity": severity,
                "warning": self.message}


def plan(level: int) -> list[tuple[str, str]]:
    """(category, test) that `dcgmi diag -r level` runs, in DCGM's order."""
    return [(category, test) for category, test, lowest in TESTS if level >= lowest]


def styled_json(value: Any) -> str:
    """`value` as jsoncpp writes it with a tab indent (StyledStreamWriter("\\t"); DCGM 4's
    toStyledString writes the same): what `dcgmi -j` prints."""
    out: list[str] = []
    state = {"indent": "", "indented": True}

    def with_indent(text: str) -> None:
        if not state["indented"]:
            out.append("\n" + state["indent"])
        out.append(text)
        state["indented"] = False

    def scalar(item: Any) -> str:
        if isinstance(item, (dict, list)):
            return "{}" if isinstance(item, dict) else "[]"
        return json.dumps(item, ensure_ascii=False)

    def multiline(items: list[Any]) -> bool:
        if len(items) * 3 >= 74 or any(isinstance(c, (dict, list)) and c for c in items):
            return True
        return 4 + (len(items) - 1) * 2 + sum(len(scalar(c)) for c in items) >= 74

    def write(item: Any) -> None:
        if isinstance(item, dict) and item:
            with_indent("{")
            state["indent"] += "\t"
            names = sorted(item)
            for n, name in enumerate(names):
                with_indent(json.dumps(name, ensure_ascii=False))
                out.append(" : ")
                write(item[name])
                if n + 1 < len(names):
                    out.append(",")
            state["indent"] = state["indent"][:-1]
            with_indent("}")
        elif isinstance(item, list) and item and multiline(item):
            with_indent("[")
            state["indent"] += "\t"
            for n, child in enumerate(item):
                if not state["indented"]:
                    out.append("\n" + state["indent"])
                state["indented"] = True
                write(child)
                state["indented"] = False
                if n + 1 < len(item):
                    out.append(",")
            state["indent"] = state["indent"][:-1]
            with_indent("]")
        elif isinstance(item, list) and item:
            out.append("[ " + ", ".join(scalar(c) for c in item) + " ]")
        else:
            out.append(scalar(item))

    write(value)
    return "".join(out) + "\n"


def _software(view: View) -> tuple[list[Finding], bool]:
    """The software test's findings, and whether DCGM stops after it: a row-remap failure or
    pending remap sets main_should_stop (nvvs/src/Software.cpp)."""
    found, stop = [], False
    prefix = "Page Retirement/Row Remap: "
    for gpu in view.gpus:
        i, rows = gpu["index"], gpu["remapped_rows"]
        if rows["failure"]:
            found.append(Finding("software", i, "ROW_REMAP_FAILURE", prefix + (
                f"GPU {i} had uncorrectable memory errors and row remapping failed. "
                + FIELD_DIAG)))
            stop = True
        elif rows["pending"]:
            if rows["uncorrectable"]:
                # DCGM's format names a count it is not given; the lab prints the count
                found.append(Finding("software", i, "UNCORRECTABLE_ROW_REMAP", prefix + (
                    f"GPU {i} had uncorrectable memory errors and {rows['uncorrectable']} rows "
                    "were remapped")))
            else:
                found.append(Finding("software", i, "PENDING_ROW_REMAP", prefix + (
                    f"GPU {i} had memory errors and row remappings are pending "
                    + SYSTEM_TRIAGE)))
            stop = True
    return found, stop


def findings(view: View, level: int) -> tuple[list[Finding], set[str]]:
    """Every failure the run reports, and the tests it skipped (DCGM stopped before them)."""
    found, stop = _software(view)
    skipped = {test for _, test in plan(level) if test != "software"} if stop else set()
    wrong = set(view.profile["sim"]["wrong_results"])
    for gpu in view.gpus:
        i = gpu["index"]
        dbe = (gpu["ecc"]["volatile"]["dram_uncorrectable"]
               + gpu["ecc"]["volatile"]["sram_uncorrectable_secded"])
        if level >= 2 and dbe:
            found.append(Finding("memory", i, "CUDA_DBE", (
                f"CUDA APIs have indicated that a double-bit ECC error has occured on GPU {i}. "
                + FIELD_DIAG)))
        elif level >= 2 and i in wrong:
            found.append(Finding("memory", i, "MEMORY_MISMATCH", (
                f"A memory mismatch was detected on GPU {i}, but no error was reported by CUDA "
                "or NVML. " + FIELD_DIAG)))
        if level >= 3 and i in wrong:
            found.append(Finding("diagnostic", i, "FAULTY_MEMORY",
                                 f"Found 12 faulty memory elements on GPU {i} " + FIELD_DIAG))
        pcie = gpu["pcie"]
        if level >= 2 and pcie["gen_current"] < MIN_PCI_GEN:
            found.append(Finding("pcie", i, "PCIE_GENERATION", (
                f"GPU {i} is running at PCI link generation {pcie['gen_current']}, which is "
                f"below the minimum allowed link generation of {MIN_PCI_GEN} (parameter "
                "'min_pci_generation') " + CONFIG_NEXT)))
        if level >= 2 and pcie["width_current"] < MIN_PCI_WIDTH:
            found.append(Finding("pcie", i, "PCIE_WIDTH", (
                f"GPU {i} is running at PCI link width {pcie['width_current']}X, which is below "
                f"the minimum allowed link generation of {MIN_PCI_WIDTH} (parameter "
                "'min_pci_width') " + CONFIG_NEXT)))
    if level >= 2 and view.gpus and view.flaky_fails(f"dcgmi-r{level}"):
        first = view.gpus[0]["index"]
        if level >= 3:
            found.append(Finding("targeted_stress", first, "STRESS_LEVEL", (
                "Max stress level of 21382.6 did not reach desired stress level of 29250.0 "
                f"for GPU {first} " + SYSTEM_TRIAGE)))
        else:
            # what a run that lost a worker looks like: an error about no one GPU
            found.append(Finding("pcie", -1, "INTERNAL", (
                "There was an internal error during the test: 'A child process (1893) exited "
                "with non-zero status 1' " + SYSTEM_TRIAGE)))
    found = [f for f in found if f.test not in skipped]
    return found, skipped



def _info(view: View, test: str, gpu: dict[str, Any]) -> list[str]:
    """What a passing GPU's result says, in the 4.2.3 plugins' wording and units."""
    i = gpu["index"]
    free = (gpu["memory"]["total_mib"] - gpu["memory"]["reserved_mib"]) * 2**20
    if test == "pcie":
        share = gpu["pcie"]["width_current"] / gpu["pcie"]["width_max"]
        return [f"GPU to Host bandwidth:\t\t{55.21 * share:.2f} GB/s",
                f"Host to GPU bandwidth:\t\t{55.07 * share:.2f} GB/s",
                f"bidirectional bandwidth:\t{101.36 * share:.2f} GB/s",
                "GPU to Host latency:\t\t1.843 us", "Host to GPU latency:\t\t1.912 us",
                "bidirectional latency:\t\t3.604 us"]
    if test == "memory":
        return [f"Allocated {int(free * 0.973)} bytes (97.3%)"]
    if test == "diagnostic":
        return [f"Allocated space for 2254 output matricies from {free} bytes available.",
                "Running with precisions: FP64 1, FP32 1, FP16 1",
                f"GPU {i} calculated at approximately 51873.20 gigaflops during this test"]
    if test == "targeted_stress":
        return [f"GPU {i} relative stress level\t14206"]
    if test == "targeted_power":
        limit = gpu["power"]["limit_w"]
        return [f"GPU {i} max power: {limit * 1.002:.1f} W average power usage: "
                f"{limit * 0.99:.1f} W"]
    return []  # software, nvbandwidth, memory_bandwidth, memtest, pulse_test


def _test_status(test: str, found: list[Finding], skipped: set[str]) -> str:
    if test in skipped:
        return "Skip"
    return "Fail" if any(f.test == test for f in found) else "Pass"


def as_json(view: View, level: int, found: list[Finding], skipped: set[str]) -> str:
    categories: dict[str, dict[str, Any]] = {}  # in the order DCGM first runs one of theirs
    for category, test in plan(level):
        entry = categories.setdefault(category, {"category": category, "tests": []})
        summary: dict[str, Any] = {"status": _test_status(test, found, skipped)}
        record: dict[str, Any] = {"name": test}
        if test not in skipped:
            results = []
            for gpu in view.gpus:
                i = gpu["index"]
                mine = [f for f in found if f.test == test and f.gpu == i]
                result: dict[str, Any] = {"entity_group": "GPU", "entity_group_id": 1,
                                          "entity_id": i, "status": "Fail" if mine else "Pass"}
                if mine:
                    result["warnings"] = [f.warning() for f in mine]
                else:
                    info = _info(view, test, gpu)
                    if info:
                        result["info"] = info
                results.append(result)
            record["results"] = results
            general = [f for f in found if f.test == test and f.gpu < 0]
            if general:
                summary["warnings"] = [f.warning() for f in general]
            if any(f.test == test and f.error == "CUDA_DBE" for f in found):
                summary["info"] = ["A DBE occurred, CUDA error containment reported issue."]
        record["test_summary"] = summary
        entry["tests"].append(record)
    doc = {
        "DCGM Diagnostic": {"test_categories": list(categories.values())},
        "entity_groups": [{
            "entities": [{"device_id": _device_id(g), "entity_id": g["index"],
                          "serial_num": g["serial"]} for g in view.gpus],
            "entity_group": "GPU", "entity_group_id": 1,
        }],
        "metadata": {"Driver Version Detected": view.loaded_driver or "",
                     "version": DCGM_VERSION},
    }
    return styled_json(doc)


def _device_id(gpu: dict[str, Any]) -> str:
    return gpu["device_id"][2:6].lower()  # "0x233010DE" -> "2330"


def _row(name: str, result: str) -> str:
    return f"| {name:<{WIDTH_NAME - 1}}| {result:<{WIDTH_RESULT - 2}} |"


def _chunks(text: str) -> list[str]:
    """dcgmi cuts a message into pieces of 45 characters, mid-word and keeping spaces."""
    return [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]


def table(view: View, level: int, found: list[Finding], skipped: set[str]) -> str:
    edge = "+" + "-" * WIDTH_NAME + "+" + "-" * WIDTH_RESULT + "+"
    out = ["Successfully ran diagnostic for group.", edge,
           _row("Diagnostic", "Result"),
           "+" + "=" * WIDTH_NAME + "+" + "=" * WIDTH_RESULT + "+"]

    def section(title: str, first: bool) -> None:
        head = f"-----  {title}  ".ljust(WIDTH_NAME, "-")
        corner = "|" if first else "+"
        out.append(corner + head + "+" + "-" * WIDTH_RESULT + corner)

    def warning(label: str, message: str) -> None:
        for n, chunk in enumerate(_chunks(message)):
            out.append(_row(label if n == 0 else "", chunk))

    section("Metadata", True)
    out.append(_row("DCGM Version", DCGM_VERSION))
    out.append(_row("Driver Version Detected", view.loaded_driver or ""))
    out.append(_row("GPU Device IDs Detected", ", ".join(_device_id(g) for g in view.gpus)))
    tests = plan(level)
    for category in TABLE_ORDER:
        mine = [test for cat, test in tests if cat == category]
        if not mine:
            continue
        section(category, category == "Deployment")
        for test in mine:
            out.append(_row(test, _test_status(test, found, skipped)))
            if test in skipped:
                continue
            for f in found:
                if f.test == test and f.gpu < 0:
                    warning("Warning", f.message)
            for gpu in view.gpus:
                i = gpu["index"]
                bad = [f for f in found if f.test == test and f.gpu == i]
                out.append(_row("", f"GPU{i}: {'Fail' if bad else 'Pass'}"))
                for f in bad:
                    warning(f"Warning: GPU{i}", f.message)
    out.append(edge)
    return "\n".join(out) + "\n"


def exit_status(found: list[Finding]) -> int:
    """dcgmi's exit status: its dcgmReturn_t as a byte."""
    if any(ERRORS[f.error][1] == ISOLATE for f in found):
        return 256 - 51  # DCGM_ST_NVVS_ISOLATE_ERROR
    return 256 - 30 if found else 0  # DCGM_ST_NVVS_ERROR


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "diag":
        sys.stdout.write("Usage: dcgmi diag -r <1|2|3|4> [-j] (only diag is simulated)\n")
        return 1
    raw = None
    for n, arg in enumerate(argv):
        if arg in ("-r", "--run") and n + 1 < len(argv):
            raw = argv[n + 1]
        elif arg.startswith("--run="):
            raw = arg.split("=", 1)[1]
    level = LEVELS.get(raw or "")
    if level is None:
        sys.stdout.write(f"Error: invalid run level '{raw}'. Use 1, 2, 3 or 4.\n")
        return 1
    view = load_view()
    if driver_problem(view) is not None:
        sys.stdout.write("Error: unable to establish a connection to the specified host: "
                         "localhost\nError: Unable to connect to host engine. Host engine "
                         "connection invalid/disconnected.\n")
        return 256 - 21  # DCGM_ST_CONNECTION_NOT_VALID
    found, skipped = findings(view, level)
    json_out = "-j" in argv or "--json" in argv
    sys.stdout.write(as_json(view, level, found, skipped) if json_out
                     else table(view, level, found, skipped))
    return exit_status(found)


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)
