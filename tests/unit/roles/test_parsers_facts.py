"""The pyinfra facts hand pyinfra's list of output lines to the parsers, and turn a
ParseError into pyinfra's FactProcessError (so the host fails with the parser's message)."""

from pathlib import Path

import pytest
from pyinfra.api.exceptions import FactProcessError

from kiln.roles.burnin.facts import NcclTestsLog
from kiln.roles.firmware.facts import MlxConfigQuery, MlxFwManagerQuery
from kiln.roles.health.facts import DcgmiDiag, KernelLog
from kiln.roles.infiniband.facts import IbStat, InfinibandSysfs
from kiln.roles.nvidia.facts import NvidiaSmiCsv, NvidiaSmiQuery, NvlinkStatus

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def lines(relative: str) -> list[str]:
    # What pyinfra passes to process(): stdout split into lines, newline removed.
    return (FIXTURES / relative).read_text().splitlines()


def test_facts_parse_fixture_lines():
    assert len(NvidiaSmiQuery().process(lines("nvidia-smi/q.h100x8.535.161.08.txt"))["gpus"]) == 8
    assert len(NvlinkStatus().process(lines("nvidia-smi/nvlink-status.a100.txt"))) == 8
    assert IbStat().process(lines("ibstat/ibstat.a100.all-active.txt"))[0]["name"] == "mlx5_0"
    assert NcclTestsLog().process(
        lines("nccl-tests/all_reduce_perf.a100x8.superbench.txt"))["avg_busbw"] == 68.4048
    assert MlxFwManagerQuery().process(
        lines("mlxfwmanager/query.h100x8.update-required.txt"))[0]["psid"] == "MT_0000000838"
    assert MlxConfigQuery().process(
        lines("mlxconfig/q.cx7.ib.txt"))["config"]["LINK_TYPE_P1"]["value"] == "IB"
    assert DcgmiDiag().process(lines("dcgmi/diag-r3-j.h100x8.gpu3-fail.json"))["overall"] == "Fail"
    assert len(KernelLog().process(lines("dmesg/dmesg-with-xid-119.log"))["xids"]) == 5
    assert NvidiaSmiCsv().process(["index, memory.total [MiB]", "0, 81559"]) == [
        {"index": 0, "memory.total": 81559}]


def test_fact_commands():
    assert NvidiaSmiCsv().command(["index", "memory.total"]) == (
        "nvidia-smi --query-gpu=index,memory.total --format=csv,nounits")
    assert DcgmiDiag().command(3) == "dcgmi diag -r 3 -j || true"
    with pytest.raises(ValueError, match="1-4"):
        DcgmiDiag().command(7)
    assert MlxConfigQuery().command("/dev/mst/mt4129_pciconf0") == (
        "mlxconfig -d /dev/mst/mt4129_pciconf0 -e q")
    assert "/sys/class/infiniband/*/ports/*/rate" in InfinibandSysfs().command()


def test_parse_error_becomes_fact_process_error():
    with pytest.raises(FactProcessError, match="line 1"):
        IbStat().process(["not ibstat"])
