"""nvidia-smi parsers against real captured output (tests/fixtures/nvidia-smi)."""

import json
from pathlib import Path

import pytest

from kiln.core.parsing import ParseError
from kiln.roles.nvidia.parsers import parse_nvidia_smi_csv, parse_nvidia_smi_q, parse_nvlink

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "nvidia-smi"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture(scope="module")
def h100() -> dict:
    return parse_nvidia_smi_q(read("q.h100x8.535.161.08.txt"))


def test_h100_top_level(h100):
    assert h100["driver_version"] == "535.161.08"
    assert h100["cuda_version"] == "12.2"
    assert h100["attached_gpus"] == 8
    assert len(h100["gpus"]) == 8
    json.dumps(h100)  # plain data, serialisable as kiln parse prints it


def test_h100_identity_and_firmware(h100):
    gpu = h100["gpus"][0]
    assert gpu["pci_bus_id"] == "00000000:19:00.0"
    assert gpu["product_name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["serial"] == "1650124031592"
    assert gpu["uuid"] == "GPU-ee7954ec-da95-fd7a-ddfd-c6b32cc2f8aa"
    assert gpu["vbios_version"] == "96.00.74.00.0D"
    assert gpu["inforom"] == {"image": "G520.0200.00.05", "oem": "2.1", "ecc": "7.16",
                              "power": None}
    assert gpu["gsp_firmware_version"] == "535.161.08"
    assert {g["vbios_version"] for g in h100["gpus"]} == {"96.00.74.00.0D"}
    assert h100["gpus"][1]["pci_bus_id"] == "00000000:3B:00.0"
    assert len({g["uuid"] for g in h100["gpus"]}) == 8


def test_h100_health_fields(h100):
    gpu = h100["gpus"][0]
    assert gpu["ecc"]["mode_current"] == "Enabled"
    assert gpu["ecc"]["volatile"]["dram_uncorrectable"] == 0
    assert gpu["ecc"]["volatile"]["sram_uncorrectable_sec_ded"] == 0
    assert gpu["ecc"]["aggregate"]["sram_threshold_exceeded"] is False
    assert gpu["ecc"]["volatile_uncorrectable"] == 0
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False,
                                    "failure": False}
    assert gpu["retired_pages"]["single_bit_ecc"] is None  # N/A on HBM3 parts
    assert gpu["pcie"]["gen_current"] == 5 and gpu["pcie"]["width_current"] == 16
    assert gpu["pcie"]["gen_max"] == 5 and gpu["pcie"]["width_max"] == 16
    assert gpu["pcie"]["replays"] == 67
    assert gpu["clocks"]["sm"] == 86 and gpu["max_clocks"]["sm"] == 1980
    assert gpu["clocks_event_reasons"]["hw_power_brake_slowdown"] is True
    assert gpu["active_clocks_event_reasons"] == ["hw_power_brake_slowdown", "hw_slowdown"]
    assert gpu["temperature"]["gpu_current_temp"] == 29
    assert gpu["temperature"]["gpu_target_temperature"] is None
    assert gpu["power"]["limit_w"] == 700.0
    assert gpu["memory"]["total_mib"] == 81559
    assert gpu["fabric"] == {"state": "Completed", "status": "Success"}
    assert gpu["processes"] == []


def test_a10_pending_row_remap_and_older_temperature_names():
    result = parse_nvidia_smi_q(read("q.a10x1.535.129.03.txt"))
    gpu = result["gpus"][0]
    assert result["attached_gpus"] == 1
    assert gpu["remapped_rows"]["uncorrectable"] == 4
    assert gpu["remapped_rows"]["pending"] is True
    assert gpu["pcie"]["gen_host_max"] is None  # "N/A"
    assert gpu["temperature"]["gpu_shutdown_temp"] == 101
    assert gpu["active_clocks_event_reasons"] == ["idle"]


def test_rtx4090_processes_and_na_ecc():
    result = parse_nvidia_smi_q(read("q.rtx4090x8.535.154.05.txt"))
    gpu = result["gpus"][0]
    assert gpu["serial"] is None
    assert gpu["ecc"]["volatile"]["dram_uncorrectable"] is None
    assert gpu["ecc"]["volatile_uncorrectable"] is None
    assert gpu["processes"] == [{"pid": 2010222, "type": "C", "name": "/usr/bin/python",
                                 "used_memory_mib": 6724}]
    assert gpu["pcie"]["gen_current"] == 1


def test_older_throttle_reasons_spelling_reads_the_same():
    text = read("q.h100x8.535.161.08.txt")
    text = text.replace("Clocks Event Reasons", "Clocks Throttle Reasons")
    gpu = parse_nvidia_smi_q(text)["gpus"][0]
    assert gpu["active_clocks_event_reasons"] == ["hw_power_brake_slowdown", "hw_slowdown"]


def test_truncated_output_names_the_attached_gpus_line():
    text = read("q.h100x8.535.161.08.txt")
    cut = text[: text.index("GPU 00000000:3B:00.0")]
    with pytest.raises(ParseError, match=r"line 8: 'Attached GPUs : 8' but 1 GPU blocks"):
        parse_nvidia_smi_q(cut)


def test_garbage_names_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_nvidia_smi_q("hello world\nthis is not nvidia-smi\n")
    with pytest.raises(ParseError, match="line 2: 'stray text'"):
        parse_nvidia_smi_q("Driver Version : 535.161.08\nstray text\n")
    with pytest.raises(ParseError, match="line 1"):
        parse_nvidia_smi_q("")


def test_no_devices():
    assert parse_nvidia_smi_q("No devices were found\n")["gpus"] == []


CSV_FIELDS = ["index", "name", "serial", "memory.total", "temperature.gpu", "pci.bus_id",
              "ecc.errors.uncorrected.volatile.total"]


def _csv_from_fixture(units: bool, header: bool) -> str:
    """The CSV nvidia-smi prints for CSV_FIELDS on the captured H100 node."""
    gpus = parse_nvidia_smi_q(read("q.h100x8.535.161.08.txt"))["gpus"]
    lines = []
    if header:
        lines.append("index, name, serial, memory.total [MiB], temperature.gpu, pci.bus_id, "
                     "ecc.errors.uncorrected.volatile.total")
    for index, gpu in enumerate(gpus):
        memory = f"{gpu['memory']['total_mib']} MiB" if units else str(gpu["memory"]["total_mib"])
        lines.append(f"{index}, {gpu['product_name']}, {gpu['serial']}, {memory}, "
                     f"{gpu['temperature']['gpu_current_temp']}, {gpu['pci_bus_id']}, [N/A]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("units", [True, False])
def test_csv_with_header(units):
    rows = parse_nvidia_smi_csv(_csv_from_fixture(units=units, header=True))
    assert len(rows) == 8
    assert rows[0] == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "serial": "1650124031592",
                       "memory.total": 81559, "temperature.gpu": 29,
                       "pci.bus_id": "00000000:19:00.0",
                       "ecc.errors.uncorrected.volatile.total": None}


@pytest.mark.parametrize("units", [True, False])
def test_csv_noheader_with_fields(units):
    rows = parse_nvidia_smi_csv(_csv_from_fixture(units=units, header=False), fields=CSV_FIELDS)
    assert [r["index"] for r in rows] == list(range(8))
    assert rows[7]["memory.total"] == 81559
    assert isinstance(rows[0]["serial"], str)


def test_csv_errors_name_the_line():
    with pytest.raises(ParseError, match="line 1: expected a header"):
        parse_nvidia_smi_csv("0, NVIDIA H100 80GB HBM3, 81559 MiB\n")
    with pytest.raises(ParseError, match="line 3: 2 values for 3 fields"):
        parse_nvidia_smi_csv("index, name, memory.total [MiB]\n0, H100, 81559 MiB\n1, H100\n")


def test_nvlink_status_a100():
    gpus = parse_nvlink(read("nvlink-status.a100.txt"))
    assert len(gpus) == 8
    assert gpus[0]["uuid"] == "GPU-5269b708-678a-b1a8-60f0-c90406537486"
    assert gpus[0]["name"] == "NVIDIA A100-SXM4-80GB"
    assert len(gpus[0]["links"]) == 12
    assert all(link["active"] and link["speed_gb_s"] == 25.0 for g in gpus for link in g["links"])


def test_nvlink_inactive_link_and_h100_speed():
    text = read("nvlink-status.a100.txt").replace("Link 3: 25 GB/s", "Link 3: <inactive>", 1)
    text = text.replace("Link 0: 25 GB/s", "Link 0: 26.562 GB/s", 1)
    links = parse_nvlink(text)[0]["links"]
    assert links[3] == {"link": 3, "active": False, "speed_gb_s": None, "errors": {}}
    assert links[0]["speed_gb_s"] == 26.562


def test_nvlink_error_counters():
    text = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-ee7954ec-da95-fd7a-ddfd-c6b32cc2f8aa)\n"
        "\t Link 0: Replay Errors: 0\n"
        "\t Link 0: Recovery Errors: 2\n"
        "\t Link 0: CRC Errors: 17\n"
        "\t Link 1: Replay Errors: 0\n"
    )
    links = parse_nvlink(text)[0]["links"]
    assert links[0]["errors"] == {"replay_errors": 0, "recovery_errors": 2, "crc_errors": 17}
    assert links[0]["active"] is None
    assert len(links) == 2


def test_nvlink_garbage_names_the_line():
    with pytest.raises(ParseError, match="line 1"):
        parse_nvlink("Link 0: 25 GB/s\n")
    with pytest.raises(ParseError, match="line 2"):
        parse_nvlink("GPU 0: X (UUID: GPU-1)\n  Lnk 0: 25 GB/s\n")


def test_q_display_page_retirement_only():
    """`nvidia-smi -q -d PAGE_RETIREMENT` (8 GPUs, PCI domains 1..8): only that section."""
    result = parse_nvidia_smi_q(read("q-d-page-retirement.x8.535.86.10.txt"))
    assert (result["driver_version"], result["attached_gpus"]) == ("535.86.10", 8)
    assert [g["pci_bus_id"] for g in result["gpus"]] == [f"0000000{i}:00:00.0" for i in range(1, 9)]
    assert all(g["retired_pages"] == {"single_bit_ecc": 0, "double_bit_ecc": 0, "pending": False}
               for g in result["gpus"])
    assert result["gpus"][0]["uuid"] is None  # not asked for, not invented


def test_q_x_xml_is_named_not_garbage():
    with pytest.raises(ParseError, match="line 1: this is `nvidia-smi -q -x` XML"):
        parse_nvidia_smi_q(read("q-x.a100-sxm4-80gb.535.54.03.xml"))


def test_csv_h100_query_gpu_real_capture():
    rows = parse_nvidia_smi_csv(read("query-gpu.h100x8.535.161.07.csv"))
    assert len(rows) == 8 and [r["index"] for r in rows] == list(range(8))
    first = rows[0]
    assert first["name"] == "NVIDIA H100 80GB HBM3" and first["memory.total"] == 81559
    assert first["power.draw.average"] == 70.89 and first["pcie.link.width.current"] == 16
    assert all(r["ecc.errors.uncorrected.volatile.total"] == 0 for r in rows)


def test_nvlink_status_one_gpu_tab_indented():
    [gpu] = parse_nvlink(read("nvlink-status.a100.gpu7.txt"))
    assert gpu["index"] == 7 and gpu["uuid"] == "GPU-c7e253b0-c227-6f10-e860-7482c85e7ce8"
    assert [link["speed_gb_s"] for link in gpu["links"]] == [25.0] * 12
