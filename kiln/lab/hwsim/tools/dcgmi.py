"""Simulated `dcgmi diag -r 1|2|3 [-j]` (NVIDIA DCGM).

The table and the JSON follow DCGM 3.x's, checked against real captures
(tests/fixtures/dcgmi/*.dcgm3*, tests/unit/lab/test_hwsim_real_captures.py):
- the table: Metadata and Deployment rows, then from level 2 on the Integration, Hardware and
  Stress headers, each printed even when the level runs none of its tests (a real -r 2 prints
  an empty Stress section); Hardware holds GPU Memory, and at level 3 Diagnostic and the EUD
  Test, Stress the Targeted Stress/Power and Memory Bandwidth tests;
- the JSON as jsoncpp's StyledStreamWriter writes it (dcgmi streams a Json::Value): tab
  indents, `"name" : value`, an object or array that is a member's value opens on the next
  line, members in sorted order, short arrays of scalars on one line. Deployment results
  carry only a status when they pass; plugin results carry gpu_ids, status ("Pass", "Fail",
  "Skip") and an info string with the real tool's wording and units. The top-level
  "version", "Driver Version Detected" and "GPU Device IDs" are DCGM's own keys; the public
  captures lack them (trimmed, their source notes suspect) and kiln's parser reads them.
The failure messages paraphrase DCGM's. Exit status is non-zero when a test fails.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ..view import View, driver_problem, load_view, run_tool

DCGM_VERSION = "4.2.3"
WIDTH_NAME, WIDTH_RESULT = 27, 48

DEPLOYMENT = ["Denylist", "NVML Library", "CUDA Main Library", "Permissions and OS Blocks",
              "Persistence Mode", "Environment Variables", "Page Retirement/Row Remap",
              "Graphics Processes", "Inforom"]
# the per-GPU plugin tests: (category, test, lowest run level that runs it), in print order
PLUGINS = [
    ("Integration", "PCIe", 2),
    ("Hardware", "GPU Memory", 2),
    ("Hardware", "Diagnostic", 3),
    ("Hardware", "EUD Test", 3),  # not installed on the lab's nodes: "Skip", as on many sites
    ("Stress", "Targeted Stress", 3),
    ("Stress", "Targeted Power", 3),
    ("Stress", "Memory Bandwidth", 3),
]
PLUGIN_CATEGORIES = ["Integration", "Hardware", "Stress"]


def _plugins(level: int) -> list[tuple[str, list[str]]]:
    """(category, tests it runs) in print order for a run level; from level 2 on every
    category is there, with no tests when the level runs none of them."""
    if level < 2:
        return []
    return [(category, [test for cat, test, lowest in PLUGINS
                        if cat == category and level >= lowest])
            for category in PLUGIN_CATEGORIES]


def _info(view: View, test: str, gpu: dict[str, Any]) -> str | None:
    """The info string DCGM 3.x puts in a passing plugin result (its wording and units)."""
    i = gpu["index"]
    if test == "PCIe":
        share = gpu["pcie"]["width_current"] / gpu["pcie"]["width_max"]
        d2h, h2d, bidir = 55.21 * share, 55.07 * share, 101.36 * share
        return (f"GPU {i} GPU {i} GPU to Host bandwidth:\t\t{d2h:.2f} GB/s, "
                f"GPU {i} GPU {i} Host to GPU bandwidth:\t\t{h2d:.2f} GB/s, "
                f"GPU {i} GPU {i} bidirectional bandwidth:\t{bidir:.2f} GB/s, "
                f"GPU {i} GPU {i} GPU to Host latency:\t\t1.843 us, "
                f"GPU {i} GPU {i} Host to GPU latency:\t\t1.912 us, "
                f"GPU {i} GPU {i} bidirectional latency:\t\t3.604 us")
    free = (gpu["memory"]["total_mib"] - gpu["memory"]["reserved_mib"]) * 2**20
    if test == "GPU Memory":
        return f"GPU {i} Allocated {int(free * 0.973)} bytes (97.3%)"
    if test == "Diagnostic":
        return (f"GPU {i} Allocated space for 2254 output matricies from {free} bytes "
                f"available., GPU {i} Running with precisions: FP64 1, FP32 1, FP16 1, "
                f"GPU {i} GPU {i} calculated at approximately 51873.20 gigaflops during this "
                "test")
    if test == "Targeted Stress":
        return f"GPU {i} GPU {i} relative stress level\t14206"
    if test == "Targeted Power":
        return f"GPU {i} GPU {i} power average:\t{gpu['power']['limit_w'] * 0.99:.0f} W"
    return None  # Memory Bandwidth and the EUD Test print no info


def styled_json(value: Any) -> str:
    """`value` as jsoncpp's StyledStreamWriter("\\t") writes it: what `dcgmi -j` prints."""
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


def _failures(view: View, level: int) -> dict[str, dict[int, str]]:
    """test name -> {gpu index: warning} for every failing (test, GPU)."""
    fails: dict[str, dict[int, str]] = {}
    for gpu in view.gpus:
        i = gpu["index"]
        rows = gpu["remapped_rows"]
        if rows["pending"]:
            fails.setdefault("Page Retirement/Row Remap", {})[i] = (
                f"GPU {i} had uncorrectable memory errors and row remapping is pending. "
                "Run a GPU reset to remap the rows.")
        if rows["failure"]:
            fails.setdefault("Page Retirement/Row Remap", {})[i] = (
                f"GPU {i} had a row remapping failure. Drain the GPU and reset it or reboot "
                "the node.")
        dbe = gpu["ecc"]["volatile"]["dram_uncorrectable"] + \
            gpu["ecc"]["volatile"]["sram_uncorrectable_secded"]
        if level >= 2 and dbe:
            fails.setdefault("GPU Memory", {})[i] = (
                f"A double-bit ECC error (DBE) was detected on GPU {i}: {dbe} volatile "
                "uncorrectable errors. Drain the GPU and reset it or reboot the node.")
        if level >= 2 and i in view.profile["sim"]["wrong_results"]:
            fails.setdefault("GPU Memory", {})[i] = (
                f"Memory miscompare on GPU {i}: the values written did not read back. "
                "Run a field diagnostic on the GPU.")
            if level >= 3:
                fails.setdefault("Targeted Stress", {})[i] = (
                    f"GPU {i} Detected 12 mismatches between computed results. Check DCGM "
                    "and system logs for errors. Reset GPU. Rerun diagnostics.")
        pcie = gpu["pcie"]
        if level >= 2 and pcie["width_current"] < pcie["width_max"]:
            fails.setdefault("PCIe", {})[i] = (
                f"GPU {i}'s PCIe link width is x{pcie['width_current']}, expected "
                f"x{pcie['width_max']}: host to device bandwidth is below the minimum.")
    if level >= 2 and view.gpus and view.flaky_fails(f"dcgmi-r{level}"):
        test = "Targeted Stress" if level >= 3 else "GPU Memory"
        fails.setdefault(test, {})[0] = (
            "Error in test: GPU 0 fell off the expected performance envelope during the test "
            "(intermittent failure; rerun to confirm).")
    return fails


def _row(name: str, result: str) -> str:
    return f"| {name:<{WIDTH_NAME - 1}}| {result:<{WIDTH_RESULT - 2}} |"


def _split(text: str) -> list[str]:
    """dcgmi wraps a warning at the column's width, mid-word."""
    width = WIDTH_RESULT - 2
    return [text[i : i + width] for i in range(0, len(text), width)]


def table(view: View, level: int, fails: dict[str, dict[int, str]]) -> str:
    edge = "+" + "-" * WIDTH_NAME + "+" + "-" * WIDTH_RESULT + "+"
    out = ["Successfully ran diagnostic for group.", edge,
           _row("Diagnostic", "Result"),
           "+" + "=" * WIDTH_NAME + "+" + "=" * WIDTH_RESULT + "+"]

    def section(title: str) -> None:
        head = f"-----  {title}  "
        out.append("|" + head.ljust(WIDTH_NAME, "-") + "+" + "-" * WIDTH_RESULT + "|")

    def warnings(test: str) -> None:
        for _gpu, text in sorted(fails.get(test, {}).items()):
            for n, chunk in enumerate(_split(text)):
                out.append(_row("Warning" if n == 0 else "", chunk))

    section("Metadata")
    out.append(_row("DCGM Version", DCGM_VERSION))
    out.append(_row("Driver Version Detected", view.loaded_driver or ""))
    out.append(_row("GPU Device IDs Detected",
                    ",".join(g["device_id"][2:6].lower() for g in view.gpus)))
    section("Deployment")
    for test in DEPLOYMENT:
        out.append(_row(test, "Fail" if test in fails else "Pass"))
        warnings(test)
    for category, tests in _plugins(level):
        out.append("+" + f"-----  {category}  ".ljust(WIDTH_NAME, "-") + "+"
                   + "-" * WIDTH_RESULT + "+")
        for test in tests:
            if test == "EUD Test":
                out.append(_row(test, "Skip - All"))
                continue
            bad = sorted(fails.get(test, {}))
            if not bad:
                out.append(_row(test, "Pass - All"))
                continue
            good = [g["index"] for g in view.gpus if g["index"] not in bad]
            if good:
                out.append(_row(test, "Pass - GPUs: " + ", ".join(str(i) for i in good)))
            out.append(_row("" if good else test,
                            "Fail - GPU: " + ", ".join(str(i) for i in bad)))
            warnings(test)
    out.append(edge)
    return "\n".join(out) + "\n"


def as_json(view: View, level: int, fails: dict[str, dict[int, str]]) -> str:
    categories: list[dict[str, Any]] = [{"category": "Deployment", "tests": []}]
    for test in DEPLOYMENT:
        result: dict[str, Any] = {"status": "Pass"}
        if test in fails:
            # the lab names the failing GPUs, so a deployment failure points at one
            result = {"gpu_ids": ",".join(str(i) for i in sorted(fails[test])),
                      "status": "Fail", "warnings": [
                          {"error_category": 7, "error_id": 83, "error_severity": 2,
                           "warning": w} for _, w in sorted(fails[test].items())]}
        categories[0]["tests"].append({"name": test, "results": [result]})
    for category, tests in _plugins(level):
        entries = []
        for test in tests:
            results = []
            for gpu in view.gpus:
                i = gpu["index"]
                if test == "EUD Test":
                    results.append({"gpu_ids": str(i), "status": "Skip"})
                elif i in fails.get(test, {}):
                    results.append({"gpu_ids": str(i), "status": "Fail", "warnings": [
                        {"error_category": 7, "error_id": 28, "error_severity": 2,
                         "warning": fails[test][i]}]})
                else:
                    passed: dict[str, Any] = {"gpu_ids": str(i), "status": "Pass"}
                    info = _info(view, test, gpu)
                    if info is not None:
                        passed["info"] = info
                    results.append(passed)
            entries.append({"name": test, "results": results})
        if entries:
            categories.append({"category": category, "tests": entries})
    doc = {"DCGM GPU Diagnostic": {
        "Driver Version Detected": view.loaded_driver or "",
        "GPU Device IDs": [g["device_id"][2:6].lower() for g in view.gpus],
        "test_categories": categories,
        "version": DCGM_VERSION,
    }}
    return styled_json(doc)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "diag":
        sys.stdout.write("Usage: dcgmi diag -r <1|2|3> [-j] (only diag is simulated)\n")
        return 1
    level = None
    for n, arg in enumerate(argv):
        if arg in ("-r", "--run") and n + 1 < len(argv):
            level = argv[n + 1]
        elif arg.startswith("--run="):
            level = arg.split("=", 1)[1]
    names = {"short": "1", "medium": "2", "long": "3"}
    level = names.get(level or "", level)
    if level not in ("1", "2", "3"):
        sys.stdout.write(f"Error: invalid run level '{level}'. Use 1, 2 or 3.\n")
        return 1
    view = load_view()
    if driver_problem(view) is not None:
        sys.stdout.write("Error: unable to establish a connection to the specified host: "
                         "localhost\nError: Unable to connect to host engine. Host engine "
                         "connection invalid/disconnected.\n")
        return 1
    fails = _failures(view, int(level))
    json_out = "-j" in argv or "--json" in argv
    sys.stdout.write(as_json(view, int(level), fails) if json_out
                     else table(view, int(level), fails))
    return 1 if fails else 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv)
